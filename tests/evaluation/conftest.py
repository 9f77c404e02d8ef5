"""Synthetic predictions tables and a manifest for the comparison, report and CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from liverfat.data.predictions import PredictionsTable, failed_row, prediction_row

TARGET = "liver_pdff_pct"
N = 120


@pytest.fixture(scope="session")
def synthetic() -> dict:
    """Reference, network and atlas values (PDFF %) for N subjects, plus covariates."""
    rng = np.random.default_rng(42)
    ids = [f"sub{i:03d}" for i in range(N)]
    reference = np.clip(rng.lognormal(1.3, 0.8, N), 0.4, 40.0)
    network = reference + rng.normal(0.0, 1.0, N)
    atlas = 0.9 * reference + rng.normal(0.4, 1.6, N)
    covariates = pd.DataFrame(
        {
            "age": rng.integers(40, 76, N).astype(float),
            "sex": rng.choice(["F", "M"], N),
            "bmi": np.round(rng.normal(27, 4, N), 1),
        },
        index=pd.Index(ids, name="subject_id"),
    )
    return {
        "ids": ids,
        "reference": reference,
        "network": network,
        "atlas": atlas,
        "covariates": covariates,
        "split": np.where(np.arange(N) < 80, "A", "C"),
    }


def table(method: str, ids, values, *, failed=(), flagged=()) -> PredictionsTable:
    rows = []
    for sid, value in zip(ids, values, strict=True):
        if sid in failed:
            rows.append(failed_row(sid, method, TARGET, "registration diverged"))
        elif sid in flagged:
            rows.append(
                prediction_row(sid, method, TARGET, value, status="flagged", message="motion")
            )
        else:
            rows.append(prediction_row(sid, method, TARGET, value))
    return PredictionsTable.from_rows(rows, {"method": method})


@pytest.fixture(scope="session")
def tables(synthetic) -> list[PredictionsTable]:
    s = synthetic
    return [
        table("reference", s["ids"], s["reference"]),
        table("network", s["ids"], s["network"], failed={"sub005"}, flagged={"sub007"}),
        table("atlas", s["ids"][:-3], s["atlas"][:-3]),  # three subjects never written
    ]


@pytest.fixture(scope="session")
def files(synthetic, tables, tmp_path_factory) -> dict[str, Path]:
    """The tables as CSVs and a manifest (card + subject table) holding the reference."""
    root = tmp_path_factory.mktemp("compare_inputs")
    paths = {t.methods[0]: t.write(root / f"{t.methods[0]}.csv") for t in tables}
    s = synthetic
    subjects = pd.DataFrame(
        {
            "subject_id": s["ids"],
            "image": [f"img/{i}.nii.gz" for i in s["ids"]],
            TARGET: np.round(s["reference"], 6),
            "age": s["covariates"]["age"].to_numpy(),
            "sex": s["covariates"]["sex"].to_numpy(),
            "bmi": s["covariates"]["bmi"].to_numpy(),
            "split": s["split"],
        }
    )
    subjects.to_csv(root / "subjects.csv", index=False)
    card = {
        "name": "synthetic",
        "subjects": "subjects.csv",
        "targets": {TARGET: {"meaning": "liver PDFF", "unit": "%"}},
        "splits": {"A": {"meaning": "first 80"}, "C": {"meaning": "last 40"}},
    }
    (root / "manifest.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    paths["manifest"] = root / "manifest.yaml"
    return paths
