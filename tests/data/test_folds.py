"""The one fold splitter: subject-level, seeded, optionally stratified (against scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

from liverfat.data.folds import (
    held_out_subjects,
    resolve_folds,
    subject_folds,
    subsample_orders,
    training_ids,
)
from liverfat.errors import LiverfatError


def test_subject_folds_are_disjoint_cover_and_repeat():
    ids = [f"s{i}" for i in range(23)]
    parts = subject_folds(ids, 5, seed=3)
    assert sorted(sum(parts, [])) == sorted(ids)
    assert {len(p) for p in parts} <= {4, 5}
    assert parts == subject_folds(list(reversed(ids)), 5, seed=3)  # order of the input is moot
    assert parts != subject_folds(ids, 5, seed=4)


def test_stratified_folds_equal_scikit_learn_and_balance_labels():
    ids = [f"s{i:02d}" for i in range(30)]
    labels = {s: int(i % 3 == 0) for i, s in enumerate(ids)}  # 10 positives
    parts = subject_folds(ids, 5, seed=7, strata=labels)
    expected = StratifiedKFold(5, shuffle=True, random_state=7).split(
        np.zeros(30), [labels[s] for s in sorted(ids)]
    )
    assert parts == [sorted(np.array(sorted(ids))[test].tolist()) for _, test in expected]
    assert [sum(labels[s] for s in p) for p in parts] == [2, 2, 2, 2, 2]


def test_stratification_falls_back_when_a_label_is_rare():
    ids = [f"s{i}" for i in range(12)]
    labels = {s: s == "s0" for s in ids}  # one positive cannot be spread over 3 folds
    assert subject_folds(ids, 3, seed=1, strata=labels) == subject_folds(ids, 3, seed=1)


def test_resolve_folds_restricts_a_given_partition():
    partition = [["a", "b", "x"], ["c", "d"], ["y"]]
    assert resolve_folds(partition, ["a", "b", "c", "d"], seed=0) == [["a", "b"], ["c", "d"]]
    with pytest.raises(LiverfatError, match="overlap"):
        resolve_folds([["a", "b"], ["b"]], ["a", "b"], seed=0)
    with pytest.raises(LiverfatError, match="between 2 and"):
        subject_folds(["a", "b"], 3, seed=0)
    assert training_ids(["c", "a", "b"], ["a"]) == ["c", "b"]


def test_held_out_part_is_seeded_sized_and_stratified():
    ids = [f"s{i:02d}" for i in range(40)]
    labels = {s: int(i % 4 == 0) for i, s in enumerate(ids)}  # 10 positives
    held = held_out_subjects(ids, 0.2, seed=5, strata=labels)
    assert len(held) == 8 and held == sorted(held) and set(held) <= set(ids)
    assert sum(labels[s] for s in held) == 2  # a fifth of the positives
    _, test = next(
        StratifiedShuffleSplit(1, test_size=8, random_state=5).split(
            np.zeros(40), [labels[s] for s in ids]
        )
    )
    assert held == sorted(np.array(ids)[test].tolist())
    assert held == held_out_subjects(list(reversed(ids)), 0.2, seed=5, strata=labels)
    assert held != held_out_subjects(ids, 0.2, seed=6, strata=labels)
    # One positive cannot be stratified: a seeded permutation instead.
    rare = {s: s == "s00" for s in ids}
    assert held_out_subjects(ids, 0.2, seed=5, strata=rare) == held_out_subjects(ids, 0.2, seed=5)
    for fraction in (0.0, 1.0, 0.01):
        with pytest.raises(LiverfatError, match="held-out fraction"):
            held_out_subjects(ids, fraction, seed=0)


def test_subsample_orders_are_seeded_permutations_per_repeat():
    ids = [f"s{i}" for i in range(15)]
    orders = subsample_orders(ids, 3, seed=2)
    assert len(orders) == 3 and all(sorted(o) == sorted(ids) for o in orders)
    assert len({tuple(o) for o in orders}) == 3  # each repeat draws its own order
    assert subsample_orders(list(reversed(ids)), 3, seed=2) == orders
    assert subsample_orders(ids, 2, seed=2) == orders[:2]  # more repeats keep the first ones
    assert subsample_orders(ids, 3, seed=3) != orders
