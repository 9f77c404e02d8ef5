"""A study's repeatability stage on a phantom cohort with repeat scans (linear baselines)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from liverfat.cli import main
from liverfat.data.manifest import Manifest
from liverfat.data.phantom import PhantomConfig, generate_cohort
from liverfat.data.predictions import PredictionsTable
from liverfat.errors import LiverfatError
from liverfat.study import Study, run_study

TARGET = "liver_pdff_pct"


@pytest.fixture(scope="module")
def repeat_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 quarter-scale participants, half of them scanned twice (seed 3). Read-only."""
    out = tmp_path_factory.mktemp("repeat_phantom") / "cohort"
    config = PhantomConfig(repeat_fraction=0.5, fraction_a=0.75)
    generate_cohort(16, out, seed=3, config=config, executor="serial", progress=False)
    return out


def _write_study(tmp_path: Path, cohort: Path, **changes) -> Path:
    study = {
        "name": "repeats",
        "manifest": str(cohort / "manifest.yaml"),
        "truth": str(cohort / "truth" / "truth_predictions.csv"),
        "target": TARGET,
        "out": str(tmp_path / "out"),
        "engines": {
            "bmi_only": {
                "engine": "linear_baseline",
                "settings": {"covariates": ["bmi"]},
                "cross_validate": True,
                "folds": 3,
                "predict_on": ["B"],
            },
        },
        "repeatability": {"visits": [2, 3]},
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    return path


def _wsd(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.sqrt(np.mean((second - first) ** 2) / 2))


def test_repeatability_table_figure_section_and_honest_folds(
    tmp_path: Path, repeat_cohort: Path
) -> None:
    report = run_study(Study.load(_write_study(tmp_path, repeat_cohort)), log=lambda m: None)
    out = tmp_path / "out"
    manifest = Manifest.load(repeat_cohort)
    participants = manifest.participants()
    # The study's folds keep every participant's two visits in one fold.
    partition = json.loads((out / "folds.json").read_text(encoding="utf-8"))["3"]
    fold_of = {sid: i for i, part in enumerate(partition) for sid in part}
    assert any(sid.endswith("_v3") for sid in fold_of)
    for sid, fold in fold_of.items():
        assert fold_of.get(participants[sid], fold) == fold, sid
    table = pd.read_csv(out / "tables" / "repeatability.csv").set_index("method")
    assert table.index.tolist() == ["bmi_only", "reference", "truth"]
    assert (table["icc_form"].dropna() == "ICC(2,1)").all()
    # Recomputed here from the stored tables: pairs of each participant's visits 2 and 3.
    subjects = manifest.subjects.set_index("subject_id")
    repeats = [s for s in subjects.index if s.endswith("_v3")]
    reference = manifest.target(TARGET)
    with_reference = [s for s in repeats if np.isfinite(reference[s])]
    first = reference[[s.removesuffix("_v3") for s in with_reference]].to_numpy()
    second = reference[with_reference].to_numpy()
    assert table.loc["reference", "n_pairs"] == len(with_reference) >= 3
    assert table.loc["reference", "wsd"] == pytest.approx(_wsd(first, second))
    assert table.loc["reference", "rc"] == pytest.approx(1.96 * np.sqrt(2) * _wsd(first, second))
    assert table.loc["reference", "bias"] == pytest.approx(np.mean(second - first))
    # The truth has no change between visits; a covariate-only model sees the same covariates
    # at both visits and, with grouped folds, the same fitted model: both are exactly repeatable.
    assert table.loc["truth", "n_pairs"] == len(repeats)
    assert table.loc["truth", "wsd"] == 0 and table.loc["bmi_only", "wsd"] == pytest.approx(0)
    values = PredictionsTable.read(out / "predictions" / "bmi_only.csv").values("bmi_only", TARGET)
    assert table.loc["bmi_only", "n_pairs"] == sum(
        np.isfinite(values.get(s, np.nan)) for s in repeats
    )
    pairs = pd.read_csv(out / "tables" / "repeatability_pairs.csv")
    assert set(pairs["method"]) == {"bmi_only", "reference", "truth"}
    assert (out / "figures" / "repeatability.png").stat().st_size > 5_000
    html = report.read_text(encoding="utf-8")
    assert "Repeatability" in html and "ICC(2,1)" in html and "2.77" in html
    # A rerun recomputes the stage from the stored predictions: the same table.
    run_study(Study.load(_write_study(tmp_path, repeat_cohort)), log=lambda m: None)
    again = pd.read_csv(out / "tables" / "repeatability.csv").set_index("method")
    pd.testing.assert_frame_equal(table, again)


@pytest.mark.parametrize(
    "option, message",
    [
        ({"visits": [2]}, "study key repeatability.visits"),
        ({"visits": [2, 2]}, "study key repeatability.visits: the two visits must differ"),
        ({"colour": "red"}, "study key repeatability.colour"),
        ({"visits": ["2", "x"]}, "study key repeatability.visits.0"),
    ],
)
def test_bad_repeatability_options_are_one_line(
    tmp_path: Path, repeat_cohort: Path, option, message, capsys
) -> None:
    path = _write_study(tmp_path, repeat_cohort, repeatability=option)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_manifest_without_visits_is_refused_before_any_engine(
    tmp_path: Path, small_phantom_dir: Path
) -> None:
    path = _write_study(tmp_path, small_phantom_dir)
    with pytest.raises(LiverfatError, match="repeatability needs the manifest's participant_id"):
        run_study(Study.load(path), log=lambda m: None)
    assert not (tmp_path / "out" / "predictions").exists()
