"""The steatosis-grading protocol, one for every grader: boosted trees on radiomics features,
networks on the ROI patches, any plug-in.

A *grader* is any object with ``fit(manifest)`` and ``predict_scores(manifest) -> (scores,
failures)``, where ``scores`` is indexed by subject id with columns ``p_grade0 ..`` (the mean over
the subject's ROIs of the grade probabilities) and ``failures`` maps a subject id to one line
(:class:`liverfat.radiomics.engine.RadiomicsEngine` and
:class:`liverfat.deep.patch_grader.PatchGrader` are graders). This module never knows which
engine a grader is; :mod:`liverfat.graders` builds them by name.

The protocol (:func:`run_grading`), the same for every model:

1. grades of the reference fat fraction by one scheme (:mod:`liverfat.evaluation.grader`);
2. a seeded train/test split at subject level, stratified on grade (scikit-learn's
   ``train_test_split``: the split ``liverfat radiomics cv`` has always used);
3. subject-level folds of the training part, stratified on grade
   (:func:`liverfat.data.folds.subject_folds`), shared by every model;
4. per model: fitted on the training part and scored on it (``train``, the published
   training-set figure) and on the test part (``test``); and fitted on each fold's training
   subjects and scored on the fold (``train_cv``, out-of-fold on the training part). Whatever a
   model augments or calibrates, it does so inside the subjects it is fitted on;
5. AUC with a seeded bootstrap interval and accuracy with Wilson's, per model and set
   (:func:`~liverfat.evaluation.grader.grade_probability_metrics`); DeLong's paired test on the
   test set of the best baseline model (highest ``train_cv`` AUC: chosen without the test set)
   against every other model; Spearman of grade with the covariates, overall and by sex.

Each model's scores are cached per set in the work folder, keyed by the model's parameters and
the subjects, so an interrupted run resumes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from liverfat.data.atomic import atomic_path, write_json_atomic, write_text_atomic
from liverfat.data.fingerprint import fingerprint, subject_files
from liverfat.data.folds import participant_members, subject_folds, training_ids
from liverfat.data.manifest import REPORTED_COVARIATES, Manifest
from liverfat.errors import LiverfatError
from liverfat.evaluation.covariates import covariate_correlations
from liverfat.evaluation.grader import (
    GradingScheme,
    delong_test,
    grade_probability_metrics,
)
from liverfat.evaluation.layouts import grading_layout, to_latex, to_markdown

#: The sets every model is scored on (see the module docstring).
SETS = ("train", "train_cv", "test")


class Grader(Protocol):
    def fit(self, manifest: Manifest) -> Any: ...

    def predict_scores(self, manifest: Manifest) -> tuple[pd.DataFrame, dict[str, str]]: ...


GraderFactory = Callable[[], Grader]


# The split -----------------------------------------------------------------------------------
def train_test_subjects(
    reference: pd.Series, grades: np.ndarray, test_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """A seeded split of subject ids, stratified on grade where every grade has 2+ subjects."""
    from sklearn.model_selection import train_test_split

    ids = np.asarray(reference.index, dtype=str)
    counts = np.bincount(grades)
    stratify = grades if counts[counts > 0].min() >= 2 else None
    train, test = train_test_split(
        ids, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    return sorted(train.tolist()), sorted(test.tolist())


@dataclass(frozen=True)
class GradingSplit:
    """Training and test subjects, and the test folds that partition the training part."""

    train: list[str]
    test: list[str]
    folds: list[list[str]]


def grading_split(
    grades: pd.Series,
    *,
    test_fraction: float,
    folds: int,
    seed: int,
    groups: Mapping[str, str] | None = None,
) -> GradingSplit:
    """The protocol's split of the subjects of ``grades`` (integer grade by subject id); with
    ``groups`` (subject -> participant) a participant's visits fall on one side and in one fold
    (each participant split on its first visit's grade)."""
    members = participant_members(list(grades.index), groups)
    if members is None:
        train, test = train_test_subjects(grades, grades.to_numpy(int), test_fraction, seed)
    else:
        units = pd.Series([grades[m[0]] for m in members.values()], index=list(members))
        parts = train_test_subjects(units, units.to_numpy(int), test_fraction, seed)
        train, test = (sorted(s for u in part for s in members[u]) for part in parts)
    strata = grades.loc[train].to_dict()
    parts = subject_folds(train, folds, seed, strata=strata, groups=groups) if folds else []
    return GradingSplit(train, test, [sorted(p) for p in parts])


# Scores of one model -------------------------------------------------------------------------
def _params(grader: Grader) -> Any:
    params = getattr(grader, "params_json", None)
    return params() if callable(params) else repr(grader)


def _cached_scores(
    factory: GraderFactory,
    manifest: Manifest,
    fit_ids: list[str],
    score_ids: Mapping[str, list[str]],
    cache: Path | None,
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Scores of each named subject list of ``score_ids`` by one grader fitted on ``fit_ids``
    (from the cache when there), and the failed subjects."""
    grader = factory()
    key = fingerprint(
        {
            "params": _params(grader),
            "fit": fit_ids,
            "score": dict(score_ids),
            "files": [
                subject_files(manifest, s)
                for s in sorted({*fit_ids, *(s for ids in score_ids.values() for s in ids)})
            ],
        }
    )
    path = cache / f"{key}.csv" if cache is not None else None
    if path is not None and path.is_file():
        table = pd.read_csv(path, dtype={"subject_id": str, "set": str, "failure": str})
    else:
        grader.fit(manifest.select(subject_ids=fit_ids))
        frames = []
        for name, ids in score_ids.items():
            scores, failures = grader.predict_scores(manifest.select(subject_ids=ids))
            scores = scores[[c for c in scores.columns if c.startswith("p_grade")]]
            lost = pd.DataFrame({"failure": failures}, index=list(failures), dtype=object)
            frames.append(
                pd.concat([scores.assign(failure=np.nan), lost])
                .rename_axis("subject_id")
                .reset_index()
                .assign(set=name)
            )
        table = pd.concat(frames, ignore_index=True)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                table.to_csv(tmp, index=False, float_format="%.8g")
    failed = table[table["failure"].notna()]
    ok = table[table["failure"].isna()]
    scores = {
        name: ok[ok["set"] == name]
        .drop(columns=["failure", "set"])
        .set_index("subject_id")
        .dropna(axis=1, how="all")
        for name in score_ids
    }
    return scores, dict(zip(failed["subject_id"], failed["failure"], strict=True))


def model_scores(
    factory: GraderFactory,
    manifest: Manifest,
    split: GradingSplit,
    cache: Path | None = None,
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Per set of :data:`SETS`, the grade probabilities of one model; and its failed subjects.

    One fit on the training part scores ``train`` and ``test``; one fit per fold scores it.
    """
    sets = {"train": split.train, "test": split.test}
    scores, failures = _cached_scores(factory, manifest, split.train, sets, cache)
    folds = []
    for number, test_ids in enumerate(split.folds):
        fold_ids = {f"fold{number}": test_ids}
        fold, lost = _cached_scores(
            factory, manifest, training_ids(split.train, test_ids), fold_ids, cache
        )
        folds.append(fold[f"fold{number}"])
        failures.update(lost)
    if folds:
        scores["train_cv"] = pd.concat(folds)
    return {name: scores[name] for name in SETS if name in scores}, failures


# Tables --------------------------------------------------------------------------------------
def probabilities(scores: pd.DataFrame, n_grades: int) -> np.ndarray:
    """The (subjects, n_grades) probability matrix of a scores frame (absent grades: 0)."""
    columns = [f"p_grade{k}" for k in range(n_grades)]
    return scores.reindex(columns=columns).fillna(0.0).to_numpy(float)


def metrics_table(
    scores: Mapping[str, Mapping[str, pd.DataFrame]],
    grades: pd.Series,
    n_grades: int,
    *,
    n_boot: int,
    seed: int,
) -> pd.DataFrame:
    """One row per model and set: ``n``, AUC and accuracy with their 95% intervals."""
    rows = []
    for model, by_set in scores.items():
        for name in SETS:
            if name not in by_set:
                continue
            frame = by_set[name]
            metrics = grade_probability_metrics(
                grades.loc[frame.index].to_numpy(int),
                probabilities(frame, n_grades),
                n_boot=n_boot,
                seed=seed,
            )
            rows.append({"model": model, "set": name, **metrics})
    return pd.DataFrame(rows)


def higher_grade_outcome(grades: np.ndarray) -> int:
    """The grade ``g`` of the dichotomy DeLong's test compares on: ``grade >= g`` against the
    lowest grade present (with a binary scheme, the positive grade; on a mild/moderate cohort,
    moderate against mild; on a cohort with S0, any steatosis against none)."""
    present = np.unique(grades)
    if present.size < 2:
        raise LiverfatError("DeLong's test needs two grades among the test subjects")
    return int(present[1])


def delong_table(
    scores: Mapping[str, Mapping[str, pd.DataFrame]],
    metrics: pd.DataFrame,
    grades: pd.Series,
    n_grades: int,
    baseline_models: Sequence[str],
) -> pd.DataFrame:
    """DeLong's paired test on the test set: the best of ``baseline_models`` by ``train_cv`` AUC
    (by training AUC without folds; ties broken by accuracy) against every other model, on the
    subjects both scored.

    The score of a subject is its probability of a grade at or above :func:`higher_grade_outcome`.
    """
    baselines = [m for m in baseline_models if m in scores]
    others = [m for m in scores if m not in baselines]
    if not baselines or not others:
        return pd.DataFrame()
    chosen_on = "train_cv" if (metrics["set"] == "train_cv").any() else "train"
    ranked = metrics[(metrics["set"] == chosen_on) & metrics["model"].isin(baselines)]
    ranked = ranked.sort_values(["auc", "accuracy"], ascending=False, kind="stable")
    best = str(ranked["model"].iloc[0])  # ties on both: the first in the table's order
    rows = []
    for other in others:
        a, b = scores[best]["test"], scores[other]["test"]
        common = a.index.intersection(b.index)
        g = grades.loc[common].to_numpy(int)
        row = {"model_a": best, "model_b": other, "chosen_on": chosen_on}
        try:
            cut = higher_grade_outcome(g)
            score_a = probabilities(a.loc[common], n_grades)[:, cut:].sum(axis=1)
            score_b = probabilities(b.loc[common], n_grades)[:, cut:].sum(axis=1)
            rows.append(row | {"grade_at_least": cut} | delong_test(g >= cut, score_a, score_b))
        except LiverfatError as exc:  # too few subjects both models scored: say so, go on
            rows.append(row | {"n_positive": 0, "n_negative": 0, "p": np.nan, "note": str(exc)})
    return pd.DataFrame(rows)


def covariate_spearman(
    grades: pd.Series,
    covariates: pd.DataFrame,
    columns: Sequence[str] = REPORTED_COVARIATES,
) -> pd.DataFrame:
    """Spearman rho (and p) of grade with each covariate, over all subjects and by sex.

    The published layout of :func:`liverfat.evaluation.covariates.covariate_correlations`: columns
    ``group`` (``all``, ``female``, ``male``), ``covariate``, ``n``, ``rho``, ``p``. Sex is coded
    0 female, 1 male; within a sex group the sex column itself is skipped; a group or covariate
    without data gives a row with n = 0 and NaN.
    """
    present = [c for c in columns if c in covariates.columns]
    if not present:
        return pd.DataFrame(columns=["group", "covariate", "n", "rho", "p"])
    values = pd.DataFrame({"grade": np.asarray(grades, float)}, index=grades.index.astype(str))
    frames = [covariate_correlations(values, covariates[present]).assign(group="all")]
    groups = [("all", c) for c in present]
    if "sex" in present:
        by_sex = covariate_correlations(values, covariates[present], by="sex")
        code = pd.to_numeric(by_sex["stratum"].str.removeprefix("sex="), errors="coerce")
        for number, group in ((0, "female"), (1, "male")):
            frames.append(by_sex[code == number].assign(group=group))
            groups += [(group, c) for c in present if c != "sex"]
    table = pd.concat(frames).set_index(["group", "covariate"])
    table = table.reindex(pd.MultiIndex.from_tuples(groups, names=["group", "covariate"]))
    table["n"] = table["n"].fillna(0).astype(int)
    return table[["n", "rho", "p"]].astype({"rho": float, "p": float}).reset_index()


# The run -------------------------------------------------------------------------------------
@dataclass
class GradingResult:
    """The tables of one grading run (see :func:`run_grading`)."""

    scheme: GradingScheme
    split: GradingSplit
    metrics: pd.DataFrame
    delong: pd.DataFrame
    spearman: pd.DataFrame
    scores: pd.DataFrame  # long: model, set, subject_id, grade, p_grade0 ..
    failures: dict[str, dict[str, str]]  # model -> subject -> message
    seconds: dict[str, float] = field(default_factory=dict)  # per model, and "total"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        """The published layout (:func:`liverfat.evaluation.layouts.grading_layout`)."""
        return grading_layout(self.metrics)

    def write(self, folder: str | os.PathLike[str]) -> list[Path]:
        """``grading_metrics.csv``, ``grading_table.csv/.md/.tex``, ``delong.csv``,
        ``spearman.csv``, ``subject_scores.csv``, ``failures.csv`` and ``grading.json`` (split,
        folds, scheme, settings, seconds)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        layout = self.table
        tables = {
            "grading_metrics.csv": self.metrics,
            "grading_table.csv": layout,
            "delong.csv": self.delong,
            "spearman.csv": self.spearman,
            "subject_scores.csv": self.scores,
            "failures.csv": pd.DataFrame(
                [(m, s, text) for m, lost in self.failures.items() for s, text in lost.items()],
                columns=["model", "subject_id", "message"],
            ),
        }
        paths = []
        for name, frame in tables.items():
            with atomic_path(out / name) as tmp:
                frame.to_csv(tmp, index=False, float_format="%.4f")
            paths.append(out / name)
        caption = f"Steatosis grading ({self.scheme.name}: {self.scheme.meaning})"
        write_text_atomic(out / "grading_table.md", to_markdown(layout))
        write_text_atomic(out / "grading_table.tex", to_latex(layout, caption=caption))
        info = {
            "scheme": {"name": self.scheme.name, "cuts_pct": list(self.scheme.cuts_pct)},
            "train": self.split.train,
            "test": self.split.test,
            "folds": self.split.folds,
            "settings": self.settings,
            "seconds": self.seconds,
        }
        write_json_atomic(out / "grading.json", info)
        return [*paths, out / "grading_table.md", out / "grading_table.tex", out / "grading.json"]


def _long_scores(
    scores: Mapping[str, Mapping[str, pd.DataFrame]], grades: pd.Series
) -> pd.DataFrame:
    frames = [
        frame.assign(model=model, set=name, grade=grades.loc[frame.index].to_numpy(int))
        .rename_axis("subject_id")
        .reset_index()
        for model, by_set in scores.items()
        for name, frame in by_set.items()
    ]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    first = ["model", "set", "subject_id", "grade"]
    return table[first + [c for c in table.columns if c not in first]]


def run_grading(
    manifest: Manifest,
    graders: Mapping[str, GraderFactory],
    *,
    target: str,
    scheme: GradingScheme,
    test_fraction: float = 0.3,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    baseline_models: Sequence[str] = (),
    work_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> GradingResult:
    """Every grader of ``graders`` (name -> factory of an unfitted grader) through the protocol
    of the module docstring, on one split; ``folds`` = 0 skips the ``train_cv`` set.

    Subjects with a reference ``target`` take part (10 at least). ``work_dir`` caches each
    model's scores (``work_dir/scores/<model>/``) so a rerun resumes; ``log`` gets one line per
    model as it finishes.
    """
    start = time.perf_counter()
    reference = manifest.target(target).dropna()
    if len(reference) < 10:
        raise LiverfatError(f"grading needs 10+ subjects with {target}, got {len(reference)}")
    grades = pd.Series(scheme.grade(reference.to_numpy()), index=reference.index.astype(str))
    split = grading_split(
        grades,
        test_fraction=test_fraction,
        folds=folds,
        seed=seed,
        groups=manifest.participants(),
    )
    scores, failures, seconds = {}, {}, {}
    for name, factory in graders.items():
        began = time.perf_counter()
        cache = Path(work_dir, "scores", name) if work_dir is not None else None
        scores[name], failures[name] = model_scores(factory, manifest, split, cache)
        seconds[name] = round(time.perf_counter() - began, 1)
        if log is not None:
            log(f"[grade] {name}: {seconds[name]:.0f} s, {len(failures[name])} failed subject(s)")
    metrics = metrics_table(scores, grades, scheme.n_grades, n_boot=n_boot, seed=seed)
    delong = delong_table(scores, metrics, grades, scheme.n_grades, baseline_models)
    spearman = covariate_spearman(grades, manifest.subjects.set_index("subject_id"))
    seconds["total"] = round(time.perf_counter() - start, 1)
    settings = {
        "target": target,
        "test_fraction": test_fraction,
        "folds": folds,
        "seed": seed,
        "bootstrap": n_boot,
        "models": list(graders),
        "baseline_models": list(baseline_models),
    }
    return GradingResult(
        scheme,
        split,
        metrics,
        delong,
        spearman,
        _long_scores(scores, grades),
        failures,
        seconds,
        settings,
    )
