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


def _visits(n: int = 30, repeated: int = 12) -> tuple[list[str], dict[str, str]]:
    """``n`` participants ``p00``...; the first ``repeated`` also have a repeat scan ``_v3``."""
    ids = [f"p{i:02d}" for i in range(n)] + [f"p{i:02d}_v3" for i in range(repeated)]
    return ids, {sid: sid.removesuffix("_v3") for sid in ids}


def test_grouped_folds_never_split_a_participant():
    ids, groups = _visits()
    labels = {sid: int(sid[1:3]) % 3 == 0 for sid in ids}
    for strata in (None, labels):
        parts = subject_folds(ids, 5, seed=2, strata=strata, groups=groups)
        assert sorted(sum(parts, [])) == sorted(ids)
        fold_of = {sid: i for i, part in enumerate(parts) for sid in part}
        for sid in ids:  # each participant's visits share one fold
            assert fold_of[sid] == fold_of[groups[sid]], sid
        assert parts == subject_folds(list(reversed(ids)), 5, seed=2, strata=strata, groups=groups)
    # Whole participants are what is split: 30 of them in 5 folds of 6.
    assert sorted(len({groups[s] for s in part}) for part in parts) == [6] * 5
    # Without a participant holding two scans, grouping changes nothing.
    singles = [f"p{i:02d}" for i in range(30)]
    assert subject_folds(singles, 5, 2, strata=labels, groups=groups) == subject_folds(
        singles, 5, 2, strata=labels
    )
    with pytest.raises(LiverfatError, match="between 2 and 3 \\(participants\\)"):
        subject_folds(["a", "a_v3", "b", "c"], 4, 0, groups={"a_v3": "a"})


def test_a_given_partition_splitting_a_participant_is_refused():
    ids, groups = _visits(6, 2)
    good = subject_folds(ids, 3, seed=0, groups=groups)
    assert resolve_folds(good, ids, 0, groups=groups) == good
    assert resolve_folds(3, ids, 0, groups=groups) == good
    with pytest.raises(LiverfatError, match="participant p00 across test folds 1 and 2"):
        resolve_folds([["p00", "p01"], ["p00_v3"]], ids, 0, groups=groups)


def test_held_out_part_takes_whole_participants():
    ids, groups = _visits(40, 15)
    held = held_out_subjects(ids, 0.25, seed=3, groups=groups)
    participants = {groups[s] for s in held}
    assert len(participants) == 10  # a quarter of the 40 participants
    assert set(held) == {s for s in ids if groups[s] in participants}


def test_grading_split_keeps_a_participant_on_one_side():
    import pandas as pd

    from liverfat.grading import grading_split

    ids, groups = _visits(40, 20)
    grades = pd.Series([int(s[1:3]) % 2 for s in ids], index=ids)
    split = grading_split(grades, test_fraction=0.3, folds=3, seed=1, groups=groups)
    test_participants = {groups[s] for s in split.test}
    assert not test_participants & {groups[s] for s in split.train}
    assert sorted(split.train + split.test) == sorted(ids)
    fold_of = {sid: i for i, part in enumerate(split.folds) for sid in part}
    assert all(fold_of[s] == fold_of[groups[s]] for s in split.train)
