"""A study's learning curves: nested subsets, a held-out part no fit sees, tables recomputed
from the stored predictions, the figure, and resuming (fast: linear baselines only)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import r2_score

from liverfat.baseline import LinearBaseline
from liverfat.cli import main
from liverfat.data.manifest import Manifest
from liverfat.data.phantom.cohort import assign_splits
from liverfat.data.phantom.imaging import PhantomConfig
from liverfat.study import Study, StudyError, run_study

TARGET = "liver_pdff_pct"
SIZES = [3, 5, 8]
REPEATS = 3


class SpyBaseline(LinearBaseline):
    """The bmi-only linear baseline, recording the subject ids of every fit in its work_dir."""

    def __init__(self, *, targets=(TARGET,), covariates=("bmi",), work_dir=None) -> None:
        super().__init__(targets=targets, covariates=covariates)
        self.work_dir = work_dir

    def fit(self, manifest: Manifest) -> SpyBaseline:
        folder = Path(self.work_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "fits.jsonl").open("a", encoding="utf-8") as log:
            log.write(json.dumps(manifest.subject_ids) + "\n")
        return super().fit(manifest)


def _write_study(tmp_path: Path, phantom_dir: Path, curve: dict, **changes) -> Path:
    study = {
        "name": "curves",
        "manifest": str(phantom_dir / "manifest.yaml"),
        "truth": str(phantom_dir / "truth" / "truth_predictions.csv"),
        "target": TARGET,
        "out": str(tmp_path / "out"),
        "engines": {
            "spy": {"engine": "tests.test_learning_curve:SpyBaseline", "predict_on": ["B"]},
            "bmi_only": {
                "engine": "linear_baseline",
                "settings": {"covariates": ["bmi"]},
                "cross_validate": True,
                "folds": 3,
            },
        },
        "learning_curve": curve,
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    return path


def _fits(out: Path) -> list[list[str]]:
    lines = (out / "engines" / "spy" / "fits.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _cell_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / "learning_curve" / "predictions").glob("*.csv")}


def test_learning_curve_nested_held_out_recomputed_and_resumed(
    tmp_path: Path, phantom_dir: Path, phantom_manifest: Manifest
) -> None:
    curve = {"sizes": SIZES, "repeats": REPEATS, "held_out_fraction": 0.3}
    run_study(Study.load(_write_study(tmp_path, phantom_dir, curve)), log=lambda m: None)
    out = tmp_path / "out"
    referenced = phantom_manifest.select(split="A").target(TARGET).dropna()
    plan = json.loads((out / "learning_curve" / "subjects.json").read_text(encoding="utf-8"))
    held = plan["held_out"]
    assert len(held) == round(0.3 * len(referenced)) and set(held) < set(referenced.index)
    assert all(sorted(o) == sorted(set(referenced.index) - set(held)) for o in plan["orders"])

    # What the engine was fitted on: all of A for the study's fit stage, then one subset per
    # repeat and size: nested within a repeat, never a held-out subject.
    fits = _fits(out)
    assert set(fits[0]) == set(phantom_manifest.select(split="A").subject_ids)
    curve_fits = fits[1:]
    assert len(curve_fits) == REPEATS * len(SIZES)
    for repeat, order in enumerate(plan["orders"]):
        mine = curve_fits[repeat * len(SIZES) : (repeat + 1) * len(SIZES)]
        assert [set(f) for f in mine] == [set(order[:n]) for n in SIZES]
        assert all(set(a) < set(b) for a, b in zip(mine, mine[1:], strict=False))
    assert not any(set(f) & set(held) for f in curve_fits)
    assert len({tuple(o) for o in plan["orders"]}) == REPEATS  # each repeat draws its own

    # Every cell of the table, recomputed from its stored predictions against the truth.
    cells = pd.read_csv(out / "tables" / "learning_curve.csv")
    assert list(cells.columns) == ["method", "n_train", "repeat", "mae", "r2", "n_held_out"]
    assert len(cells) == 2 * REPEATS * len(SIZES) and set(cells["method"]) == {"spy", "bmi_only"}
    truth = pd.read_csv(phantom_dir / "truth" / "truth_predictions.csv", dtype={"subject_id": str})
    truth = truth[truth["target"] == TARGET].set_index("subject_id")["value"].reindex(held)
    assert not np.allclose(truth, referenced.reindex(held))  # scoring on the truth is visible
    for row in cells.itertuples():
        stem = out / "learning_curve" / "predictions" / f"{row.method}.r{row.repeat}.n{row.n_train}"
        stored = pd.read_csv(f"{stem}.csv", dtype={"subject_id": str})
        assert sorted(stored["subject_id"]) == sorted(held)
        value = stored[stored["status"] == "ok"].set_index("subject_id")["value"].reindex(held)
        assert row.n_held_out == len(held) == value.notna().sum()
        assert row.mae == pytest.approx(np.mean(np.abs(value - truth)))
        assert row.r2 == pytest.approx(r2_score(truth, value))
        recorded = json.loads(Path(f"{stem}.run.json").read_text(encoding="utf-8"))
        assert recorded["learning_curve"]["held_out"] == held
        order = plan["orders"][row.repeat]
        assert recorded["learning_curve"]["train"] == sorted(order[: row.n_train])
    summary = pd.read_csv(out / "tables" / "learning_curve_summary.csv")
    for row in summary.itertuples():
        part = cells[(cells["method"] == row.method) & (cells["n_train"] == row.n_train)]
        assert row.mae_median == pytest.approx(np.median(part["mae"]))
        assert (row.r2_min, row.r2_max) == pytest.approx((part["r2"].min(), part["r2"].max()))
    png = out / "figures" / "learning_curve.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and (out / "figures" / "learning_curve.svg").is_file()
    assert "<h2>Learning curves</h2>" in (out / "report.html").read_text(encoding="utf-8")

    # A rerun fits nothing and rewrites no cell; a new size adds only its own cells.
    before, messages = _cell_files(out), []
    run_study(Study.load(_write_study(tmp_path, phantom_dir, curve)), log=messages.append)
    assert _fits(out) == fits and _cell_files(out) == before
    assert sum(".r" in m and "finished earlier" in m for m in messages) == len(cells)
    pd.testing.assert_frame_equal(pd.read_csv(out / "tables" / "learning_curve.csv"), cells)
    more = {**curve, "sizes": [3, 5, 6, 8]}
    run_study(Study.load(_write_study(tmp_path, phantom_dir, more)), log=lambda m: None)
    added = _fits(out)[len(fits) :]
    assert [set(f) for f in added] == [set(o[:6]) for o in plan["orders"]]
    assert all(_cell_files(out)[p] == stamp for p, stamp in before.items())
    assert len(pd.read_csv(out / "tables" / "learning_curve.csv")) == 2 * REPEATS * 4


@pytest.mark.parametrize(
    ("curve", "message"),
    [
        ([25, 50], "is a mapping"),
        ({"repeats": 3}, "sizes is a non-empty list of positive integers"),
        ({"sizes": []}, "sizes is a non-empty list"),
        ({"sizes": [0, 5]}, "positive integers"),
        ({"sizes": [2.5, 5]}, "positive integers"),
        ({"sizes": [True, 5]}, "positive integers"),
        ({"sizes": [5, 3]}, "increasing and unique"),
        ({"sizes": [3, 3]}, "increasing and unique"),
        ({"sizes": [3], "repeats": 0}, "repeats is an integer >= 1"),
        ({"sizes": [3], "repeats": 1.5}, "repeats is an integer >= 1"),
        ({"sizes": [3], "held_out_fraction": 1.0}, "held_out_fraction is between 0 and 1"),
        ({"sizes": [3], "held_out_fraction": 0}, "held_out_fraction is between 0 and 1"),
        ({"sizes": [3], "seed": -1}, "seed is an integer >= 0"),
        ({"sizes": [3], "engines": ["ghost"]}, "unknown engine 'ghost'"),
        ({"sizes": [3], "engines": []}, "engines is a non-empty list"),
        ({"sizes": [3], "folds": 5}, "unknown key(s) folds"),
    ],
)
def test_bad_learning_curve_options(tmp_path: Path, phantom_dir: Path, curve, message) -> None:
    with pytest.raises(StudyError, match=f"learning_curve.*{re.escape(message)}"):
        Study.load(_write_study(tmp_path, phantom_dir, curve))


def test_learning_curve_defaults(tmp_path: Path, phantom_dir: Path) -> None:
    study = Study.load(_write_study(tmp_path, phantom_dir, {"sizes": [3]}, seed=4))
    spec = study.learning_curve
    assert (spec.repeats, spec.held_out_fraction, spec.seed) == (3, 0.2, 4)
    assert spec.engines == ("spy", "bmi_only")
    assert Study.load(_write_study(tmp_path, phantom_dir, None)).learning_curve is None


def test_sizes_beyond_the_pool_are_refused_before_any_work(
    tmp_path: Path, phantom_dir: Path, phantom_manifest: Manifest, capsys
) -> None:
    n = len(phantom_manifest.select(split="A").target(TARGET).dropna())
    pool = n - round(0.2 * n)
    path = _write_study(tmp_path, phantom_dir, {"sizes": [3, pool + 1]})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"larger than the {pool} training subjects" in err[0], err
    assert not (tmp_path / "out").exists()
    path = _write_study(tmp_path, phantom_dir, {"sizes": [3, pool], "engines": ["bmi_only"]})
    assert Study.load(path).learning_curve.sizes[-1] == pool  # the whole pool is allowed


def test_a_fit_that_fails_names_the_engine_and_size(
    tmp_path: Path, phantom_dir: Path, capsys
) -> None:
    engines = {"baseline": {"engine": "linear_baseline", "predict_on": ["B"]}}
    path = _write_study(tmp_path, phantom_dir, {"sizes": [3, 8]}, engines=engines)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the progress lines: one line saying why
    assert "learning curve of 'baseline' at N = 3 (repeat 0)" in last
    assert "the baseline needs more than 5" in last


def test_the_documented_phantom_study_file_is_valid() -> None:
    path = Path(__file__).resolve().parents[1] / "studies" / "learning_curve_phantom.yaml"
    study = Study.load(path)
    assert study.learning_curve.sizes == (25, 50, 100, 200)
    expected = {"network", "small_cnn", "atlas", "radiomics", "baseline"}
    assert set(study.learning_curve.engines) == expected
    # The documented 450 phantom subjects leave enough to draw the largest size from.
    referenced = assign_splits(450, 0, PhantomConfig()).count("A")
    held = round(study.learning_curve.held_out_fraction * referenced)
    assert referenced - held >= study.learning_curve.sizes[-1]
