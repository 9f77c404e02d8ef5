"""Cross-dataset adaptation: train on dataset 1, test on dataset 2 after moving N of its scans
into training (the Uppsala thesis' Table 2: one scan from a new scanner lifted Dice from 0.49 to
0.96).

The scans moved are drawn once, in a seeded order, so N = 1 is part of N = 3 and so on; every N is
tested on the same subjects (those of dataset 2 never moved at the largest N), so the rows differ
only in what was trained on. Both datasets feed the network the same channel names: a column of
one can be read under another name (``channel_map``, e.g. the phantom's ``water`` as ``image``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from liverfat.data.folds import subsample_orders
from liverfat.data.manifest import Manifest
from liverfat.errors import LiverfatError
from liverfat.evaluation.segmentation import metrics_table
from liverfat.segmentation.engine import SegmentationEngine
from liverfat.segmentation.subjects import with_mask

#: Scans of dataset 2 moved into training, as in the thesis' table.
DEFAULT_MOVED = (0, 1, 3, 5)


def rename_columns(manifest: Manifest, channel_map: Mapping[str, str]) -> Manifest:
    """``manifest`` with image column ``old`` also readable as ``new`` for each ``old: new``."""
    table = manifest.subjects.copy()
    for old, new in channel_map.items():
        if old not in table:
            raise LiverfatError(f"{manifest.path}: no column {old!r} to read as {new!r}")
        table[new] = table[old]
    return Manifest(
        card=dict(manifest.card), subjects=table, path=manifest.path, root=manifest.root
    )


def _combined(source: Manifest, target: Manifest, moved: Sequence[str]) -> Manifest:
    """One manifest of the source subjects and the moved target subjects (absolute paths)."""
    columns = ["subject_id", "liver_mask", *source.image_columns]
    rows = []
    for manifest, ids in ((source, source.subject_ids), (target, moved)):
        for sid in ids:
            row = {"subject_id": sid}
            for column in columns[1:]:
                path = manifest.image_path(sid, column) if column in manifest.subjects else None
                row[column] = str(path) if path is not None else ""
            rows.append(row)
    table = pd.DataFrame(rows, columns=list(dict.fromkeys(columns)))
    # binary masks and label maps whose liver is 1 (CHAOS) both read right with label 1
    card = {**source.card, "liver_label": 1}
    return Manifest(card=card, subjects=table, path=source.path, root=source.root)


def adaptation_table(
    engine: SegmentationEngine,
    source: Manifest,
    target: Manifest,
    *,
    moved: Sequence[int] = DEFAULT_MOVED,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Dice and volume error on dataset 2 against N scans of it moved into training.

    Returns the summary (a row per N: subjects tested, median and mean Dice, mean HD95 and ASSD
    (mm), mean relative volume difference (%), the subjects moved) and the per-subject metrics
    of every N.
    """
    for manifest in (source, target):
        if manifest.card.get("liver_label") not in (None, 1):
            raise LiverfatError(f"{manifest.path}: adaptation reads masks with liver = 1 only")
    candidates = with_mask(target)
    largest = max(moved)
    if largest >= len(candidates):
        raise LiverfatError(
            f"{target.path}: {len(candidates)} subjects with a mask; moving {largest} leaves none"
        )
    order = subsample_orders(candidates, 1, seed)[0]
    tested = target.select(subject_ids=order[largest:])
    summary, details = [], []
    for n in sorted(moved):
        chosen = order[:n]
        fitted = engine.clone().fit(_combined(source, target, chosen))
        records = metrics_table(fitted.predict(tested).run["segmentation"])
        records.insert(0, "moved", n)
        details.append(records)
        summary.append(
            {
                "moved": n,
                "n_tested": len(records),
                "dice_median": float(records["dice"].median()),
                "dice_mean": float(records["dice"].mean()),
                "hd95_mm_mean": float(np.nanmean(records["hd95_mm"])),
                "assd_mm_mean": float(np.nanmean(records["assd_mm"])),
                "ravd_pct_mean": float(np.nanmean(records["ravd_pct"])),
                "moved_subjects": " ".join(chosen),
            }
        )
    return pd.DataFrame(summary), pd.concat(details, ignore_index=True)
