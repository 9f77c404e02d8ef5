"""Subject-level cross-validation folds (every image of a subject lands in one fold)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from liverfat.errors import LiverfatError


def subject_folds(subject_ids: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """Split subjects into ``folds`` shuffled, near-equal, disjoint test sets (seeded)."""
    ids = sorted(str(s) for s in subject_ids)
    if folds < 2 or folds > len(ids):
        raise LiverfatError(f"folds must be between 2 and {len(ids)} (subjects), got {folds}")
    order = np.random.default_rng(seed).permutation(len(ids))
    return [sorted(ids[i] for i in part) for part in np.array_split(order, folds)]
