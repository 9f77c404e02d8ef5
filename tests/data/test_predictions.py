"""The predictions table format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from liverfat.data.predictions import (
    COLUMNS,
    PredictionsError,
    PredictionsTable,
    failed_row,
    prediction_row,
    run_info,
)


def _table() -> PredictionsTable:
    rows = [
        prediction_row("S1", "net", "liver_pdff_pct", 3.25, std=0.5, lower=2.27, upper=4.23),
        prediction_row("S2", "net", "liver_pdff_pct", 12.0),
        prediction_row("S3", "net", "liver_pdff_pct", 1.0, status="flagged", message="tiny mask"),
        failed_row("S4", "net", "liver_pdff_pct", "subject S4: water: file not found\n(detail)"),
    ]
    return PredictionsTable.from_rows(rows, run_info("net", configuration={"lr": 1e-4}, seed=3))


def test_round_trip_with_sidecar(tmp_path: Path) -> None:
    table = _table()
    path = table.write(tmp_path / "net.csv")
    assert (tmp_path / "net.run.json").is_file()
    back = PredictionsTable.read(path)
    pd.testing.assert_frame_equal(back.frame, table.frame)
    assert back.run["seed"] == 3 and back.run["configuration"] == {"lr": 1e-4}
    assert "numpy" in back.run["versions"]
    assert list(pd.read_csv(path).columns) == COLUMNS
    assert back.frame.loc[3, "message"] == "subject S4: water: file not found (detail)"


def test_values_skip_failed_and_flagged() -> None:
    table = _table()
    assert table.values("net", "liver_pdff_pct").to_dict() == {"S1": 3.25, "S2": 12.0}
    assert set(table.values("net", "liver_pdff_pct", usable_only=False).index) == {"S1", "S2", "S3"}
    assert len(table.failures()) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "done"}, "unknown status"),
        ({"value": np.nan}, "without a finite value"),
        ({"lower": 5.0, "upper": 1.0}, "lower > upper"),
        ({"std": -1.0}, "negative std"),
        ({"subject_id": "S2"}, "duplicate rows"),
        ({"status": "flagged", "message": ""}, "must say why"),
    ],
)
def test_invalid_tables_rejected(change: dict, message: str) -> None:
    frame = _table().frame.copy()
    for key, value in change.items():
        frame.loc[0, key] = value
    with pytest.raises(PredictionsError, match=message):
        PredictionsTable(frame)


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(PredictionsError, match="missing.csv: predictions table not found"):
        PredictionsTable.read(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("subject_id,value\nS1,2\n", encoding="utf-8")
    with pytest.raises(PredictionsError, match="bad.csv: missing columns method, target"):
        PredictionsTable.read(bad)


def test_concat_and_deterministic_sidecar(tmp_path: Path) -> None:
    both = PredictionsTable.concat(
        [
            _table(),
            PredictionsTable.from_rows([prediction_row("S1", "atlas", "liver_pdff_pct", 3.0)]),
        ]
    )
    assert both.methods == ["atlas", "net"] and len(both.frame) == 5
    info = run_info("truth", seed=1, timestamp=False)
    assert "created" not in info and json.dumps(info) == json.dumps(
        run_info("truth", seed=1, timestamp=False)
    )
