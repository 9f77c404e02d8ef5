"""``liverfat radiomics cv``: the trees through the shared grading protocol
(:mod:`liverfat.grading`: the stratified, seeded train/test split; AUC and accuracy with 95% CIs
on the training and test sets; Spearman of grade with covariates, overall and by sex), plus what
only the trees do here: each model as a fat-fraction regressor on the same split (MAE / R^2
from :func:`~liverfat.evaluation.agreement.agreement`, NaN below 3 subjects) and out-of-fold
predictions of one engine.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from liverfat.data.manifest import Manifest
from liverfat.data.predictions import PredictionsTable
from liverfat.evaluation.agreement import agreement
from liverfat.grading import covariate_spearman, run_grading
from liverfat.radiomics.engine import RadiomicsEngine
from liverfat.radiomics.models import MODELS


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
    graders = {
        model: partial(
            RadiomicsEngine,
            **{**engine_settings, "model": model, "seed": seed, "task": "classification"},
        )
        for model in models
    }
    grading = run_grading(
        manifest,
        graders,
        target=probe.target,
        scheme=probe.scheme,
        test_fraction=test_fraction,
        folds=0,
        seed=seed,
        n_boot=n_boot,
    )
    train, test = grading.split.train, grading.split.test
    parts = {"train": manifest.select(subject_ids=train), "test": manifest.select(subject_ids=test)}
    references = {"reference": manifest.target(probe.target).dropna(), "truth": truth}
    reg_rows = []
    for model in models:
        settings = {**engine_settings, "model": model, "seed": seed, "task": "regression"}
        regressor = RadiomicsEngine(**settings).fit(parts["train"])
        for split, part in parts.items():
            scores, _ = regressor.predict_scores(part)
            reg_rows.append({"model": model, "set": split, **_regression(references, scores)})
    return ProtocolResult(grading.metrics, pd.DataFrame(reg_rows), grading.spearman, train, test)


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
