"""The published protocol: a stratified, seeded train/test split; per model, AUC and accuracy with
95% CIs on the training and test sets; regression MAE / R^2; Spearman correlation of grade with
covariates, overall and by sex.

The numbers come from :mod:`liverfat.evaluation`: AUC and accuracy with their intervals from
:func:`~liverfat.evaluation.grader.grade_probability_metrics` (binary schemes use the probability
of the higher grade, multi-grade schemes the macro mean of one-vs-rest AUCs over grades present
with both classes; a seeded percentile bootstrap over subjects for the AUC, Wilson for accuracy),
MAE and R^2 from :func:`~liverfat.evaluation.agreement.agreement` (NaN below 3 subjects), Spearman
from :func:`~liverfat.evaluation.covariates.covariate_correlations`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liverfat.data.manifest import REPORTED_COVARIATES, Manifest
from liverfat.data.predictions import PredictionsTable
from liverfat.errors import LiverfatError
from liverfat.evaluation.agreement import agreement
from liverfat.evaluation.covariates import covariate_correlations
from liverfat.evaluation.grader import grade_probability_metrics
from liverfat.radiomics.engine import RadiomicsEngine
from liverfat.radiomics.models import MODELS


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


@dataclass
class ProtocolResult:
    """Tables of one protocol run (see :func:`run_protocol`)."""

    classification: pd.DataFrame
    regression: pd.DataFrame
    spearman: pd.DataFrame
    train_subjects: list[str]
    test_subjects: list[str]


def run_protocol(
    manifest: Manifest,
    *,
    models: Sequence[str] = MODELS,
    test_fraction: float = 0.3,
    seed: int = 0,
    truth: pd.Series | None = None,
    n_boot: int = 1000,
    **engine_settings: Any,
) -> ProtocolResult:
    """Train/test evaluation of every model as grader and as fat-fraction regressor.

    Parameters
    ----------
    manifest:
        Subjects with a reference ``target`` (others are ignored).
    truth:
        Optional true fat fraction (%) by subject id, e.g. the phantom's, for MAE/R^2 vs truth.
    engine_settings:
        Passed to :class:`RadiomicsEngine` (``target``, ``grading``, ROI, augmentation, boosting).
    """
    with _shared_work_dir(engine_settings) as settings:
        return _protocol(manifest, models, test_fraction, seed, truth, n_boot, settings)


@contextmanager
def _shared_work_dir(engine_settings: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The settings with a ``work_dir``: features are shared by the six fits via its cache (a
    temporary folder when none is given)."""
    if engine_settings.get("work_dir"):
        yield engine_settings
        return
    with tempfile.TemporaryDirectory(prefix="liverfat-radiomics-") as cache:
        yield {**engine_settings, "work_dir": cache}


def _protocol(
    manifest: Manifest,
    models: Sequence[str],
    test_fraction: float,
    seed: int,
    truth: pd.Series | None,
    n_boot: int,
    engine_settings: dict[str, Any],
) -> ProtocolResult:
    """:func:`run_protocol` with settings that hold a ``work_dir``."""
    probe = RadiomicsEngine(**engine_settings)
    reference = manifest.target(probe.target).dropna()
    if len(reference) < 10:
        raise LiverfatError(
            f"the protocol needs 10+ subjects with {probe.target}, got {len(reference)}"
        )
    scheme = probe.scheme
    grades = pd.Series(scheme.grade(reference.to_numpy()), index=reference.index)
    train, test = train_test_subjects(reference, grades.to_numpy(), test_fraction, seed)
    parts = {"train": manifest.select(subject_ids=train), "test": manifest.select(subject_ids=test)}
    references = {"reference": reference, "truth": truth}
    class_rows, reg_rows = [], []
    for model in models:
        settings = {**engine_settings, "model": model, "seed": seed}
        grader = RadiomicsEngine(**{**settings, "task": "classification"}).fit(parts["train"])
        regressor = RadiomicsEngine(**{**settings, "task": "regression"}).fit(parts["train"])
        for split, part in parts.items():
            scores, _ = grader.predict_scores(part)
            p = scores[[f"p_grade{k}" for k in range(scheme.n_grades)]].to_numpy()
            g = grades.loc[scores.index].to_numpy()
            metrics = grade_probability_metrics(g, p, n_boot=n_boot, seed=seed)
            class_rows.append({"model": model, "set": split, **metrics})
            scores, _ = regressor.predict_scores(part)
            reg_rows.append({"model": model, "set": split, **_regression(references, scores)})
    spearman = covariate_spearman(grades, manifest.subjects.set_index("subject_id"))
    return ProtocolResult(pd.DataFrame(class_rows), pd.DataFrame(reg_rows), spearman, train, test)


def _regression(references: dict[str, pd.Series | None], scores: pd.DataFrame) -> dict[str, float]:
    """``n_<name>``, ``mae_vs_<name>`` (%) and ``r2_vs_<name>`` of the predicted ``value`` against
    each given reference (:func:`liverfat.evaluation.agreement.agreement`)."""
    row = {}
    for name, ref in references.items():
        if ref is not None:
            m = agreement(ref, scores["value"])
            row.update({f"n_{name}": m["n"], f"mae_vs_{name}": m["mae"], f"r2_vs_{name}": m["r2"]})
    return row


def run_cv_protocol(
    manifest: Manifest,
    folder: str | os.PathLike[str],
    *,
    folds: int = 5,
    models: Sequence[str] = MODELS,
    test_fraction: float = 0.3,
    seed: int = 0,
    truth: pd.Series | None = None,
    n_boot: int = 1000,
    **engine_settings: Any,
) -> tuple[ProtocolResult, PredictionsTable]:
    """``liverfat radiomics cv``: :func:`run_protocol`, then out-of-fold predictions of the engine
    of ``engine_settings``; both written into ``folder``.

    Writes ``classification.csv``, ``regression.csv``, ``split.json`` (the protocol's subjects),
    ``cv_predictions.csv`` (``folds``-fold, seeded by ``seed``) and ``spearman.csv``: the
    protocol's Spearman table of reference grades (``grade_from = reference``) and, for a
    classification engine, the same of its out-of-fold grades (``cv_prediction``). Returns the
    protocol's tables and the out-of-fold predictions.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    result = run_protocol(
        manifest,
        models=models,
        test_fraction=test_fraction,
        seed=seed,
        truth=truth,
        n_boot=n_boot,
        **engine_settings,
    )
    result.classification.to_csv(out / "classification.csv", index=False, float_format="%.4f")
    result.regression.to_csv(out / "regression.csv", index=False, float_format="%.4f")
    engine = RadiomicsEngine(**{**engine_settings, "seed": seed})
    oof = engine.cross_validate(manifest, folds=folds, seed=seed)
    oof.write(out / "cv_predictions.csv")
    spearman = [result.spearman.assign(grade_from="reference")]
    if engine.task == "classification":
        predicted = oof.frame.set_index("subject_id")["value"]
        subjects = manifest.subjects.set_index("subject_id")
        spearman.append(covariate_spearman(predicted, subjects).assign(grade_from="cv_prediction"))
    pd.concat(spearman).to_csv(out / "spearman.csv", index=False, float_format="%.4g")
    pd.Series({"train": result.train_subjects, "test": result.test_subjects}).to_json(
        out / "split.json"
    )
    return result, oof
