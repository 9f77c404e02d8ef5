"""Subject-level cross-validation folds: the one splitter every engine and study uses.

A partition is a list of test folds, each a sorted list of subject ids; every image of a subject
lands in one fold. Subjects that are in no test fold (for example those without a reference) are
in the training part of every fold. A study draws one partition and hands it to every engine, so
out-of-fold predictions of different methods are paired by fold. A study's learning curve
holds out one part (:func:`held_out_subjects`) and draws nested training subsets from the rest
(:func:`subsample_orders`).

Scans of one participant (repeat visits, a manifest's ``participant_id`` column, see
:meth:`liverfat.data.manifest.Manifest.participants`) never straddle a training/test boundary:
given ``groups`` (subject id -> participant id), :func:`subject_folds` and
:func:`held_out_subjects` split whole participants, and :func:`resolve_folds` refuses a given
partition that puts one participant's scans in two test folds. Without a participant holding two
of the subjects, the result is exactly the ungrouped one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from liverfat.errors import LiverfatError

#: What an engine's ``cross_validate(folds=...)`` accepts: a number of folds or a partition.
Folds = int | Sequence[Sequence[str]]


#: Subject id -> participant id: the scans that must stay together (see the module docstring).
Groups = Mapping[str, str]


def participant_members(
    subject_ids: Sequence[str], groups: Groups | None
) -> dict[str, list[str]] | None:
    """Participant -> its sorted subject ids among ``subject_ids``, or None when no participant
    holds two of them (then grouping changes nothing). A subject missing from ``groups`` is its
    own participant."""
    if groups is None:
        return None
    members: dict[str, list[str]] = {}
    for sid in sorted({str(s) for s in subject_ids}):
        members.setdefault(str(groups.get(sid, sid)), []).append(sid)
    return members if any(len(m) > 1 for m in members.values()) else None


def _unit_strata(
    members: dict[str, list[str]], strata: Mapping[str, object] | None
) -> dict[str, object] | None:
    """A participant's stratum: that of its first subject (sorted ids: its first visit)."""
    return None if strata is None else {u: strata[m[0]] for u, m in members.items()}


def _expand(parts: list[list[str]], members: dict[str, list[str]]) -> list[list[str]]:
    return [sorted(s for unit in part for s in members[unit]) for part in parts]


def subject_folds(
    subject_ids: Sequence[str],
    folds: int,
    seed: int,
    *,
    strata: Mapping[str, object] | None = None,
    groups: Groups | None = None,
) -> list[list[str]]:
    """Split subjects into ``folds`` shuffled, near-equal, disjoint test sets (seeded).

    With ``strata`` (a label per subject, e.g. its steatosis grade) the folds are stratified
    (scikit-learn's ``StratifiedKFold`` over the sorted ids) when every label has at least
    ``folds`` subjects; otherwise, and without strata, a seeded permutation is cut into
    ``folds`` near-equal parts. With ``groups`` (subject -> participant) whole participants are
    split the same way (each stratified on its first visit's label), so a participant's visits
    share one fold.
    """
    members = participant_members(subject_ids, groups)
    if members is not None:
        if folds < 2 or folds > len(members):
            raise LiverfatError(
                f"folds must be between 2 and {len(members)} (participants), got {folds}"
            )
        units = subject_folds(list(members), folds, seed, strata=_unit_strata(members, strata))
        return _expand(units, members)
    ids = sorted({str(s) for s in subject_ids})
    if folds < 2 or folds > len(ids):
        raise LiverfatError(f"folds must be between 2 and {len(ids)} (subjects), got {folds}")
    if strata is not None:
        labels = np.asarray([str(strata[s]) for s in ids])
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() >= folds:
            from sklearn.model_selection import StratifiedKFold

            splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
            parts = [test for _, test in splitter.split(np.zeros(len(ids)), labels)]
            return [sorted(ids[i] for i in part) for part in parts]
    order = np.random.default_rng(seed).permutation(len(ids))
    return [sorted(ids[i] for i in part) for part in np.array_split(order, folds)]


def resolve_folds(
    folds: Folds,
    subject_ids: Sequence[str],
    seed: int,
    *,
    strata: Mapping[str, object] | None = None,
    groups: Groups | None = None,
) -> list[list[str]]:
    """The test folds an engine uses for ``subject_ids`` (the subjects it can score).

    ``folds`` is a number (a partition of ``subject_ids`` is drawn with :func:`subject_folds`,
    grouped by participant with ``groups``) or a given partition (a study's), which is checked
    to be disjoint, to keep each participant of ``groups`` in one fold, and is restricted to
    ``subject_ids``; folds left empty by the restriction are dropped.
    """
    if isinstance(folds, (int, np.integer)):
        return subject_folds(subject_ids, int(folds), seed, strata=strata, groups=groups)
    _check_participants(folds, groups)
    eligible = {str(s) for s in subject_ids}
    seen: set[str] = set()
    out = []
    for part in folds:
        part = {str(s) for s in part}
        if part & seen:
            raise LiverfatError(
                f"folds overlap: {', '.join(sorted(part & seen)[:3])} in more than one fold"
            )
        seen |= part
        kept = sorted(part & eligible)
        if kept:
            out.append(kept)
    if not out:
        raise LiverfatError("none of the given folds holds a subject this engine can score")
    return out


def _check_participants(folds: Sequence[Sequence[str]], groups: Groups | None) -> None:
    """A given partition must not put one participant's scans in two test folds."""
    if groups is None:
        return
    fold_of: dict[str, int] = {}
    for number, part in enumerate(folds):
        for sid in part:
            participant = str(groups.get(str(sid), sid))
            if fold_of.setdefault(participant, number) != number:
                raise LiverfatError(
                    f"folds split participant {participant} across test folds "
                    f"{fold_of[participant] + 1} and {number + 1}; its visits must share one"
                )


def training_ids(subject_ids: Sequence[str], test_ids: Sequence[str]) -> list[str]:
    """The subjects of ``subject_ids`` outside one test fold, in their given order."""
    test = {str(s) for s in test_ids}
    return [str(s) for s in subject_ids if str(s) not in test]


def held_out_subjects(
    subject_ids: Sequence[str],
    fraction: float,
    seed: int,
    *,
    strata: Mapping[str, object] | None = None,
    groups: Groups | None = None,
) -> list[str]:
    """A seeded held-out part of ``subject_ids``: ``round(fraction * n)`` of them, sorted.

    With ``strata`` (a label per subject) the part is stratified (scikit-learn's
    ``StratifiedShuffleSplit`` over the sorted ids) when every label has at least two subjects
    and both parts can hold one of each; otherwise a seeded permutation's first ones are taken.
    With ``groups`` (subject -> participant), ``n`` counts participants and whole participants
    are held out, so no participant has a visit on each side.
    """
    members = participant_members(subject_ids, groups)
    if members is not None:
        units = held_out_subjects(
            list(members), fraction, seed, strata=_unit_strata(members, strata)
        )
        return _expand([units], members)[0]
    ids = sorted({str(s) for s in subject_ids})
    if not 0.0 < fraction < 1.0:
        raise LiverfatError(f"the held-out fraction must be between 0 and 1, got {fraction}")
    n_test = int(round(fraction * len(ids)))
    if n_test < 1 or n_test > len(ids) - 1:
        raise LiverfatError(
            f"a held-out fraction of {fraction:g} of {len(ids)} subjects leaves "
            f"{n_test} held out and {len(ids) - n_test} to train on; both need at least one"
        )
    if strata is not None:
        labels = np.asarray([str(strata[s]) for s in ids])
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() >= 2 and min(n_test, len(ids) - n_test) >= counts.size:
            from sklearn.model_selection import StratifiedShuffleSplit

            splitter = StratifiedShuffleSplit(1, test_size=n_test, random_state=seed)
            _, test = next(splitter.split(np.zeros(len(ids)), labels))
            return sorted(ids[i] for i in test)
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[i] for i in order[:n_test])


def subsample_orders(subject_ids: Sequence[str], repeats: int, seed: int) -> list[list[str]]:
    """One seeded order of ``subject_ids`` per repeat (repeat ``r`` drawn from ``[seed, r]``).

    A learning curve's training subset of size N in repeat ``r`` is that order's first N, so
    within a repeat the subsets are nested: each holds every smaller one.
    """
    ids = sorted({str(s) for s in subject_ids})
    return [
        [ids[i] for i in np.random.default_rng([seed, r]).permutation(len(ids))]
        for r in range(repeats)
    ]
