"""The inputs of every comparison: predictions tables as values side by side, and what is missing.

A reference or "truth" is just another predictions table (:func:`reference_table` makes one from
a manifest's target column); :func:`value_table` puts every method's usable values of one target
side by side, :func:`coverage` and :func:`failures` say what each method did not deliver, and
:func:`parse_pair` / :func:`default_pairs` name the pairs ``a:b`` a comparison looks at (``a``
is the truth, ``b`` is compared against it). Nothing here knows which engine wrote a table.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from liverfat.data.manifest import Manifest, is_manifest_path
from liverfat.data.predictions import PredictionsTable, prediction_row
from liverfat.evaluation.agreement import AgreementError

#: Name of the subset holding every subject, used when no subsets are given.
ALL = "all"
#: Method name of a reference made from a manifest's target column.
REFERENCE = "reference"


class ComparisonError(AgreementError):
    """A comparison that cannot be made (unknown method, target or subset; nothing to compare)."""


def as_table(tables: PredictionsTable | Sequence[PredictionsTable]) -> PredictionsTable:
    """One predictions table from one or several (a method may appear in only one of them)."""
    if isinstance(tables, PredictionsTable):
        return tables
    return PredictionsTable.concat(list(tables))


def reference_table(
    source: Manifest | PredictionsTable | str | os.PathLike[str],
    target: str,
    *,
    name: str | None = None,
) -> PredictionsTable:
    """The reference of a comparison as a predictions table holding one method.

    Parameters
    ----------
    source:
        A manifest, whose ``target`` column becomes method ``name`` (default
        :data:`REFERENCE`); a predictions table, of which method ``name`` is kept (default: its
        only method); or the path of either (a dataset card or its folder; a predictions CSV).
    target:
        The target (e.g. ``liver_pdff_pct``); values keep its unit.
    name:
        The reference's method name (see ``source``).

    Raises
    ------
    ComparisonError
        No subject of the manifest has a value of ``target``; the table holds several methods
        and ``name`` is not given, or holds no method ``name``.
    """
    if isinstance(source, str | os.PathLike):
        path = source
        source = Manifest.load(path) if is_manifest_path(path) else PredictionsTable.read(path)
    else:
        path = getattr(source, "path", "the reference table")
    if isinstance(source, Manifest):
        name = name or REFERENCE
        values = source.target(target).dropna()
        rows = [prediction_row(sid, name, target, float(v)) for sid, v in values.items()]
        if not rows:
            raise ComparisonError(f"{source.path}: no subject has a value for target {target}")
        return PredictionsTable.from_rows(rows, {"method": name, "source": str(source.path)})
    if name is None:
        if len(source.methods) != 1:
            raise ComparisonError(
                f"{path} holds methods {', '.join(source.methods)}; name the reference"
            )
        name = source.methods[0]
    if name not in source.methods:
        raise ComparisonError(f"{path}: no method {name!r}")
    return PredictionsTable(source.frame[source.frame["method"] == name])


def value_table(
    tables: PredictionsTable | Sequence[PredictionsTable],
    target: str,
    *,
    include_flagged: bool = False,
) -> pd.DataFrame:
    """Values of every method for ``target`` side by side: index subject_id, one column per method.

    Failed rows, and flagged rows unless ``include_flagged``, are NaN, like subjects a method
    never wrote. Values keep the target's unit (PDFF in %).
    """
    table = as_table(tables)
    frame = table.frame
    if target not in set(frame["target"]):
        raise ComparisonError(
            f"no predictions for target {target!r} (have {', '.join(table.targets) or 'none'})"
        )
    keep = ("ok", "flagged") if include_flagged else ("ok",)
    rows = frame[frame["target"] == target]
    methods = sorted(rows["method"].unique())
    usable = rows[rows["status"].isin(keep)]
    wide = usable.pivot(index="subject_id", columns="method", values="value")
    subjects = pd.Index(sorted(rows["subject_id"].unique()), name="subject_id")
    wide = wide.reindex(index=subjects, columns=methods).astype(float)
    wide.columns.name = None
    return wide


def coverage(
    tables: PredictionsTable | Sequence[PredictionsTable],
    target: str,
    *,
    subjects: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Rows per method by status, and subjects each method wrote nothing for.

    Parameters
    ----------
    subjects:
        The cohort (default: every subject any method wrote a row for).

    Returns
    -------
    pandas.DataFrame
        Indexed by method: ``n_subjects``, ``n_ok``, ``n_flagged``, ``n_failed``, ``n_missing``.
    """
    frame = as_table(tables).frame
    frame = frame[frame["target"] == target]
    cohort = pd.Index(sorted(set(frame["subject_id"]) if subjects is None else set(subjects)))
    rows = []
    for method in sorted(frame["method"].unique()):
        sel = frame[(frame["method"] == method) & frame["subject_id"].isin(cohort)]
        counts = sel["status"].value_counts()
        rows.append(
            {
                "method": method,
                "n_subjects": len(cohort),
                "n_ok": int(counts.get("ok", 0)),
                "n_flagged": int(counts.get("flagged", 0)),
                "n_failed": int(counts.get("failed", 0)),
                "n_missing": int(len(cohort) - sel["subject_id"].nunique()),
            }
        )
    columns = ["method", "n_subjects", "n_ok", "n_flagged", "n_failed", "n_missing"]
    return pd.DataFrame(rows, columns=columns).set_index("method")


def failures(tables: PredictionsTable | Sequence[PredictionsTable], target: str) -> pd.DataFrame:
    """The rows of ``target`` that are not ``ok`` (flagged or failed), with their messages."""
    frame = as_table(tables).frame
    out = frame[(frame["target"] == target) & (frame["status"] != "ok")]
    return out[["subject_id", "method", "status", "value", "message"]].reset_index(drop=True)


# Pairs and subsets -------------------------------------------------------------------------------
def parse_pair(text: str) -> tuple[str, str]:
    """``"reference:network"`` -> ``("reference", "network")``."""
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ComparisonError(f"a pair is two different method names as A:B, got {text!r}")
    return parts[0], parts[1]


def default_pairs(methods: Sequence[str], reference: str | None) -> list[tuple[str, str]]:
    """``reference`` against every other method, then every pair of the other methods."""
    others = [m for m in methods if m != reference]
    pairs = [(reference, m) for m in others] if reference is not None else []
    return pairs + list(itertools.combinations(others, 2))


def check_pairs(values: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> None:
    """Raise :class:`ComparisonError` unless ``pairs`` is non-empty and names only columns of
    ``values``."""
    if not pairs:
        raise ComparisonError("no pair of methods to compare")
    known = set(values.columns)
    unknown = sorted({m for pair in pairs for m in pair} - known)
    if unknown:
        raise ComparisonError(
            f"unknown method(s) {', '.join(unknown)} (tables have {', '.join(values.columns)})"
        )


def subset_index(
    values: pd.DataFrame, subsets: Mapping[str, Iterable[str]] | None
) -> dict[str, pd.Index]:
    """Subset name -> subject ids as text (default one subset :data:`ALL` of every subject)."""
    if not subsets:
        return {ALL: values.index}
    return {name: pd.Index([str(s) for s in ids]) for name, ids in subsets.items()}


def pair_values(values: pd.DataFrame, a: str, b: str, ids: pd.Index) -> tuple[pd.Series, pd.Series]:
    """The values of methods ``a`` and ``b`` on subjects ``ids`` (NaN where one has none)."""
    sub = values.reindex(ids)
    return sub[a], sub[b]


def compared_with_same(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """``(a, m1, m2)`` for every two methods ``m1``, ``m2`` compared with the same ``a``."""
    out = []
    for a in dict.fromkeys(p[0] for p in pairs):
        compared = [b for x, b in pairs if x == a]
        out += [(a, m1, m2) for m1, m2 in itertools.combinations(compared, 2)]
    return out
