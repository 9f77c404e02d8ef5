"""The trivial-information baseline: ordinary least squares on age, sex, height and weight.

Every target gets it through the same engine interface as the network (the engine contract of
docs/design.md, "Engines"), so a method must beat what the covariates alone predict. Intervals
are the normal-theory 95 % prediction intervals
``value +- t(0.975, n - p) * s * sqrt(1 + x0' (X'X)^-1 x0)``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from liverfat.data.atomic import write_json_atomic
from liverfat.data.folds import Folds, resolve_folds, training_ids
from liverfat.data.manifest import BASELINE_COVARIATES, Manifest
from liverfat.data.predictions import PredictionsTable, failed_row, prediction_row, run_info
from liverfat.engine import Engine
from liverfat.errors import LiverfatError


class LinearBaseline(Engine):
    """Linear regression of each target on covariates (default age, sex, height, weight).

    Parameters
    ----------
    targets:
        Manifest target names; one independent model each.
    covariates:
        Manifest covariate columns used as predictors.
    """

    method = "linear_baseline"

    def __init__(
        self,
        *,
        targets: Sequence[str] = ("liver_pdff_pct",),
        covariates: Sequence[str] = BASELINE_COVARIATES,
    ) -> None:
        self.targets = targets
        self.covariates = covariates
        self._validate()

    def _validate(self) -> None:
        targets, covariates = self.targets, self.covariates
        if isinstance(targets, str) or not list(targets):
            raise LiverfatError("targets must be a non-empty list of target names")
        if isinstance(covariates, str) or not list(covariates):
            raise LiverfatError("covariates must be a non-empty list of column names")

    def _design(self, manifest: Manifest) -> pd.DataFrame:
        missing = [c for c in self.covariates if c not in manifest.subjects.columns]
        if missing:
            raise LiverfatError(f"{manifest.path}: no covariate column(s) {', '.join(missing)}")
        table = manifest.subjects.set_index("subject_id")[list(self.covariates)]
        return table.apply(pd.to_numeric, errors="coerce").astype(float)

    def fit(self, manifest: Manifest) -> LinearBaseline:
        """Least squares per target on subjects with the target and every covariate."""
        design = self._design(manifest)
        self.coefficients_, self.residual_sd_, self.xtx_inverse_, self.n_train_ = {}, {}, {}, {}
        for target in self.targets:
            y = manifest.target(target)
            usable = y.notna() & design.notna().all(axis=1)
            x = np.column_stack([np.ones(int(usable.sum())), design[usable].to_numpy()])
            if x.shape[0] <= x.shape[1]:
                raise LiverfatError(
                    f"{target}: {x.shape[0]} subjects with the target and all covariates; "
                    f"the baseline needs more than {x.shape[1]}"
                )
            beta, *_ = np.linalg.lstsq(x, y[usable].to_numpy(), rcond=None)
            residual = y[usable].to_numpy() - x @ beta
            dof = x.shape[0] - x.shape[1]
            self.coefficients_[target] = beta.tolist()
            self.residual_sd_[target] = float(np.sqrt(residual @ residual / dof))
            self.xtx_inverse_[target] = np.linalg.pinv(x.T @ x).tolist()
            self.n_train_[target] = int(x.shape[0])
        return self

    def predict(self, manifest: Manifest) -> PredictionsTable:
        """Values with 95 % prediction intervals; subjects lacking a covariate get failed rows."""
        if not hasattr(self, "coefficients_"):
            raise LiverfatError("the linear baseline is not fitted: call fit() or load() first")
        start = time.perf_counter()
        design = self._design(manifest)
        rows = []
        for sid, x_row in design.iterrows():
            lacking = [c for c in self.covariates if not np.isfinite(x_row[c])]
            for target in self.targets:
                if lacking:
                    message = f"subject {sid}: no value for covariate(s) {', '.join(lacking)}"
                    rows.append(failed_row(sid, self.method, target, message))
                    continue
                rows.append(self._row(sid, target, x_row.to_numpy()))
        info = run_info(
            self.method,
            configuration=self.params_json(),
            timings_s={"predict": time.perf_counter() - start},
        )
        return PredictionsTable.from_rows(rows, info)

    def _row(self, sid: str, target: str, covariates: np.ndarray) -> dict:
        x0 = np.concatenate([[1.0], covariates])
        value = float(x0 @ np.array(self.coefficients_[target]))
        leverage = float(x0 @ np.array(self.xtx_inverse_[target]) @ x0)
        sd = self.residual_sd_[target] * np.sqrt(1 + leverage)
        t = stats.t.ppf(0.975, self.n_train_[target] - len(x0))
        return prediction_row(
            sid, self.method, target, value, std=sd, lower=value - t * sd, upper=value + t * sd
        )

    def cross_validate(
        self, manifest: Manifest, *, folds: Folds = 10, seed: int = 0
    ) -> PredictionsTable:
        """Out-of-fold predictions for every subject with a reference (subject-level folds:
        a number, or a study's partition, see :func:`liverfat.data.folds.resolve_folds`)."""
        references = {t: manifest.target(t) for t in self.targets}
        ids = [s for s in manifest.subject_ids if any(pd.notna(r[s]) for r in references.values())]
        parts = resolve_folds(folds, ids, seed, groups=manifest.participants())
        frames = []
        for test_ids in parts:
            train = manifest.select(subject_ids=training_ids(manifest.subject_ids, test_ids))
            fold = self.clone().fit(train)
            frame = fold.predict(manifest.select(subject_ids=test_ids)).frame
            has_ref = [
                pd.notna(references[t].get(s))
                for s, t in zip(frame.subject_id, frame.target, strict=True)
            ]
            frames.append(frame[has_ref])
        info = run_info(self.method, configuration=self.params_json(), folds=parts, fold_seed=seed)
        return PredictionsTable(pd.concat(frames, ignore_index=True), info)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``baseline.json`` (covariates, coefficients, residual SD)."""
        if not hasattr(self, "coefficients_"):
            raise LiverfatError("the linear baseline is not fitted")
        fitted = {
            "coefficients": self.coefficients_,
            "residual_sd": self.residual_sd_,
            "xtx_inverse": self.xtx_inverse_,
            "n_train": self.n_train_,
        }
        write_json_atomic(
            Path(directory) / "baseline.json", {"params": self.params_json(), "fitted": fitted}
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LinearBaseline:
        path = Path(directory) / "baseline.json"
        if not path.is_file():
            raise LiverfatError(f"{directory}: no baseline.json (not a saved linear baseline)")
        meta = json.loads(path.read_text(encoding="utf-8"))
        model = cls(**meta["params"])
        fitted = meta["fitted"]
        model.coefficients_ = fitted["coefficients"]
        model.residual_sd_ = fitted["residual_sd"]
        model.xtx_inverse_ = fitted["xtx_inverse"]
        model.n_train_ = fitted["n_train"]
        return model
