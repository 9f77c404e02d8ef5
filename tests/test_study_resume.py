"""Interrupted and distributed studies give the tables of an uninterrupted serial run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ENGINES = {
    "radiomics": {
        "engine": "radiomics",
        "settings": {"roi_size": 4, "n_estimators": 40, "augment_copies": 2},
        "cross_validate": True,
        "folds": 3,
    },
    "baseline": {
        "engine": "linear_baseline",
        "cross_validate": True,
        "folds": 3,
        "predict_on": ["B"],
    },
}


def _study(tmp_path: Path, phantom_dir: Path, name: str, executor: dict) -> Path:
    study = {
        "name": name,
        "manifest": str(phantom_dir / "manifest.yaml"),
        "truth": str(phantom_dir / "truth" / "truth_predictions.csv"),
        "out": str(tmp_path / name),
        "executor": executor,
        "engines": ENGINES,
        "comparison": {
            "pairs": ["reference:radiomics@A", "reference:baseline@A", "baseline:radiomics@A"]
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    return path


def _run(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "liverfat.cli", "run", str(path), *extra],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
        check=False,
    )


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    return {
        name: pd.read_csv(folder / "tables" / f"{name}.csv")
        for name in ("comparison", "values", "coverage")
    }


def _finished_files(folder: Path) -> list[Path]:
    """Finished per-subject files (atomic_path's hidden temporaries are work in progress)."""
    return [p for p in folder.rglob("*.csv") if not p.name.startswith(".")]


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory, phantom_dir) -> Path:
    tmp = tmp_path_factory.mktemp("serial")
    result = _run(_study(tmp, phantom_dir, "serial", {"kind": "serial"}))
    assert result.returncode == 0, result.stderr[-2000:]
    return tmp / "serial"


@pytest.mark.slow
def test_killed_run_resumes_to_identical_tables(tmp_path, phantom_dir, serial_run) -> None:
    path = _study(tmp_path, phantom_dir, "killed", {"kind": "serial"})
    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "liverfat.cli", "run", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    cache = out / "engines" / "radiomics"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if len(_finished_files(cache)) >= 3:  # some subjects' features are done
            break
        time.sleep(0.05)
    assert process.poll() is None, "the study finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "tables" / "comparison.csv").exists()
    finished = {p: p.stat().st_mtime_ns for p in _finished_files(cache)}
    assert finished
    result = _run(path)
    assert result.returncode == 0, result.stderr[-2000:]
    for p, stamp in finished.items():  # finished subjects are not redone
        assert p.stat().st_mtime_ns == stamp, p
    for name, table in _tables(out).items():
        pd.testing.assert_frame_equal(table, _tables(serial_run)[name], obj=name)


@pytest.mark.slow
def test_dask_scheduler_gives_identical_tables(tmp_path, phantom_dir, serial_run) -> None:
    from distributed import LocalCluster

    path = _study(tmp_path, phantom_dir, "dask", {"kind": "serial"})
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        result = _run(path, "--scheduler", cluster.scheduler_address)
        ran_on_cluster = cluster.scheduler.transition_counter > 0
    assert result.returncode == 0, result.stderr[-2000:]
    assert ran_on_cluster  # the study's jobs went through this scheduler
    for name, table in _tables(tmp_path / "dask").items():
        pd.testing.assert_frame_equal(table, _tables(serial_run)[name], obj=name)


def test_a_stage_whose_every_row_failed_is_computed_again(tmp_path):
    from liverfat.data.predictions import PredictionsTable, failed_row, prediction_row
    from liverfat.study import run_stage

    calls = []

    def compute(rows):
        def run():
            calls.append(1)
            return PredictionsTable.from_rows(rows)

        return run

    lost = [failed_row("s1", "m", "t", "subject s1: worker process crashed (native code)")]
    for _ in range(2):  # not marked finished: the second run computes it again
        run_stage(tmp_path, "stage", "key", compute(lost), lambda _m: None)
    assert len(calls) == 2 and not (tmp_path / "predictions" / "stage.done.json").exists()
    mixed = [*lost, prediction_row("s2", "m", "t", 1.5)]
    for _ in range(2):  # one usable row: finished, reused
        table = run_stage(tmp_path, "stage", "key", compute(mixed), lambda _m: None)
    assert len(calls) == 3 and table.frame["value"].iloc[1] == 1.5
