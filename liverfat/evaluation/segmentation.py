"""Overlap and surface-distance metrics of binary masks (e.g. atlas or CNN liver masks).

Masks are numpy arrays of the same shape (any non-zero voxel is foreground). ``spacing`` gives
the voxel size in mm along each array axis, in array order (for an array from SimpleITK's
``GetArrayFromImage`` that is ``image.GetSpacing()[::-1]``). Surfaces are the foreground voxels
with a background neighbour (face connectivity); surface distances are Euclidean distances in mm
between surface voxel centres.

Many subjects: :func:`metrics_table` puts per-subject records (the dict of
:func:`segmentation_metrics` plus ``subject_id``) in one table, worst Dice first, and
:func:`summarise_metrics` gives each metric's median, mean, SD, min and max over the subjects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import ndimage

from liverfat.evaluation.agreement import AgreementError


def _masks(
    reference: ArrayLike, predicted: ArrayLike, spacing: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(reference) != 0
    b = np.asarray(predicted) != 0
    if a.shape != b.shape:
        raise AgreementError(f"mask shapes differ: {a.shape} and {b.shape}")
    sp = np.ones(a.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    if sp.shape != (a.ndim,) or np.any(sp <= 0):
        raise AgreementError(f"spacing must give {a.ndim} positive sizes in mm, got {spacing}")
    return a, b, sp


def dice(reference: ArrayLike, predicted: ArrayLike) -> float:
    """Dice similarity coefficient ``2|A∩B| / (|A| + |B|)`` (1.0 when both masks are empty)."""
    a, b, _ = _masks(reference, predicted, None)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.sum(a & b)) / total


def jaccard(reference: ArrayLike, predicted: ArrayLike) -> float:
    """Jaccard index ``|A∩B| / |A∪B|`` (1.0 when both masks are empty)."""
    a, b, _ = _masks(reference, predicted, None)
    union = int(np.sum(a | b))
    return 1.0 if union == 0 else int(np.sum(a & b)) / union


def surface(mask: ArrayLike) -> np.ndarray:
    """Boolean array of the mask's surface voxels (foreground with a background face neighbour).

    Voxels on the array border count as surface (outside the array is background).
    """
    m = np.asarray(mask) != 0
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    eroded = ndimage.binary_erosion(m, structure=structure, border_value=0)
    return m & ~eroded


def surface_distances(
    reference: ArrayLike, predicted: ArrayLike, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each reference surface voxel to the predicted surface, and back.

    Returns ``(reference_to_predicted, predicted_to_reference)``; both empty when either mask
    is empty.
    """
    a, b, sp = _masks(reference, predicted, spacing)
    sa, sb = surface(a), surface(b)
    if not sa.any() or not sb.any():
        return np.empty(0), np.empty(0)
    to_b = ndimage.distance_transform_edt(~sb, sampling=sp)
    to_a = ndimage.distance_transform_edt(~sa, sampling=sp)
    return to_b[sa], to_a[sb]


def hausdorff_distance(
    reference: ArrayLike,
    predicted: ArrayLike,
    spacing: Sequence[float] | None = None,
    *,
    percentile: float = 100.0,
) -> float:
    """Symmetric Hausdorff distance between mask surfaces, in mm.

    ``percentile`` < 100 gives the robust variant (e.g. 95: HD95, the larger of the two directed
    95th percentiles). NaN when either mask is empty.
    """
    ab, ba = surface_distances(reference, predicted, spacing)
    if ab.size == 0:
        return float("nan")
    return float(max(np.percentile(ab, percentile), np.percentile(ba, percentile)))


def average_surface_distance(
    reference: ArrayLike, predicted: ArrayLike, spacing: Sequence[float] | None = None
) -> float:
    """Average symmetric surface distance (mm): the mean of all distances in both directions."""
    ab, ba = surface_distances(reference, predicted, spacing)
    if ab.size == 0:
        return float("nan")
    return float(np.concatenate([ab, ba]).mean())


def segmentation_metrics(
    reference: ArrayLike, predicted: ArrayLike, spacing: Sequence[float] | None = None
) -> dict[str, Any]:
    """All mask metrics of one subject.

    Parameters
    ----------
    reference, predicted:
        Masks of the same shape.
    spacing:
        Voxel size in mm per array axis (default 1 mm).

    Returns
    -------
    dict
        ``dice`` and ``jaccard`` (dimensionless); ``reference_volume_ml`` and
        ``predicted_volume_ml`` (mL); ``ravd_pct``, the relative absolute volume difference
        ``100 |V_pred - V_ref| / V_ref`` (%); ``assd_mm`` (average symmetric surface distance),
        ``mssd_mm`` (maximum symmetric surface distance, i.e. the Hausdorff distance) and
        ``hd95_mm`` (larger of the two directed 95th percentiles), all in mm; ``note``, why a
        value is NaN (an empty mask) or "".
    """
    a, b, sp = _masks(reference, predicted, spacing)
    voxel_ml = float(np.prod(sp)) / 1000.0
    va = float(a.sum()) * voxel_ml
    vb = float(b.sum()) * voxel_ml
    ab, ba = surface_distances(a, b, sp)
    empty = ab.size == 0
    notes = []
    if not a.any() and not b.any():
        notes.append("both masks empty: Dice 1 by convention, no surface distances")
    elif empty:
        which = "reference" if not a.any() else "predicted"
        notes.append(f"{which} mask empty: no surface distances")
    if va == 0:
        notes.append("empty reference: relative volume difference undefined")
    nan = float("nan")
    return {
        "dice": dice(a, b),
        "jaccard": jaccard(a, b),
        "reference_volume_ml": va,
        "predicted_volume_ml": vb,
        "ravd_pct": 100.0 * abs(vb - va) / va if va > 0 else nan,
        "assd_mm": nan if empty else float(np.concatenate([ab, ba]).mean()),
        "mssd_mm": nan if empty else float(max(ab.max(), ba.max())),
        "hd95_mm": nan if empty else float(max(np.percentile(ab, 95), np.percentile(ba, 95))),
        "note": "; ".join(notes),
    }


# Tables of many subjects ----------------------------------------------------------------------

#: The metric columns of :func:`segmentation_metrics`, in the order tables show them.
METRICS = (
    "dice",
    "jaccard",
    "hd95_mm",
    "assd_mm",
    "mssd_mm",
    "ravd_pct",
    "reference_volume_ml",
    "predicted_volume_ml",
)
#: Columns of :func:`metrics_table`: the subject, the metrics, and the note.
TABLE_COLUMNS = ("subject_id", *METRICS, "note")


def metrics_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-subject mask metrics as one table, worst Dice first.

    Parameters
    ----------
    records:
        One mapping per subject: ``subject_id`` and the keys of :func:`segmentation_metrics`
        (a missing metric or a ``None``, as JSON may hold it, becomes NaN; a missing ``note``
        becomes ``""``).

    Returns
    -------
    pandas.DataFrame
        One row per subject, columns :data:`TABLE_COLUMNS` in that order (then any other keys
        the records carry, in first-seen order): Dice and Jaccard (dimensionless), surface
        distances in mm, RAVD in %, volumes in mL. Sorted by Dice ascending, ties by subject id,
        subjects without a Dice last; the index is ``0 .. n-1``.

    Raises
    ------
    AgreementError
        A record without ``subject_id``, or two records of the same subject.
    """
    rows = [dict(r) for r in records]
    for i, row in enumerate(rows):
        if row.get("subject_id") in (None, ""):
            raise AgreementError(f"segmentation record {i} has no subject_id")
    extra = list(dict.fromkeys(k for row in rows for k in row if k not in TABLE_COLUMNS))
    frame = pd.DataFrame(rows, columns=[*TABLE_COLUMNS, *extra])
    frame["subject_id"] = frame["subject_id"].astype(str)
    duplicated = frame["subject_id"][frame["subject_id"].duplicated()]
    if len(duplicated):
        raise AgreementError(f"two segmentation records of subject {duplicated.iloc[0]}")
    for column in METRICS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["note"] = frame["note"].fillna("").astype(str)
    frame = frame.sort_values(["dice", "subject_id"], na_position="last", kind="mergesort")
    return frame.reset_index(drop=True)


def summarise_metrics(frame: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Median, mean, SD, min and max of each metric over the subjects with a finite value.

    Parameters
    ----------
    frame:
        A :func:`metrics_table` (one row per subject).
    metrics:
        The columns to summarise (default all of :data:`METRICS`), in the order of the rows.

    Returns
    -------
    pandas.DataFrame
        One row per metric: ``metric``, ``n`` (subjects with a finite value: NaN and infinite
        values, e.g. the surface distances of an empty mask, are left out of every statistic),
        ``median``, ``mean``, ``sd`` (sample SD, ``ddof=1``; NaN below two values), ``min``,
        ``max``, in the metric's own unit (dimensionless, mm, % or mL as its name says). A
        metric without a finite value has ``n`` 0 and NaN elsewhere.
    """
    rows = []
    for metric in metrics:
        values = pd.to_numeric(frame[metric], errors="coerce").to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        stats = dict.fromkeys(("median", "mean", "sd", "min", "max"), float("nan"))
        if values.size:
            stats |= {
                "median": float(np.median(values)),
                "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
                "min": float(values.min()),
                "max": float(values.max()),
            }
        rows.append({"metric": metric, "n": int(values.size), **stats})
    return pd.DataFrame(rows, columns=["metric", "n", "median", "mean", "sd", "min", "max"])
