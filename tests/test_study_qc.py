"""Scan QC as a study stage (liverfat.study_qc): exclude or mark flagged subjects."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from liverfat.study import Study, run_study
from tests.test_study import _write_study


@pytest.fixture(scope="module")
def swapped_cohort(tmp_path_factory: pytest.TempPathFactory, phantom_dir: Path) -> tuple:
    """The phantom with one training (A) subject's water and fat images exchanged."""
    cohort = tmp_path_factory.mktemp("qc_study") / "cohort"
    shutil.copytree(phantom_dir, cohort)
    table = pd.read_csv(cohort / "subjects.csv", dtype={"subject_id": str}, keep_default_na=False)
    row = table["split"].eq("A").idxmax()
    water, fat = (cohort / table.loc[row, c] for c in ("water", "fat"))
    water.rename(water.with_name("tmp_swap"))
    fat.rename(water)
    water.with_name("tmp_swap").rename(fat)
    return cohort, table.loc[row, "subject_id"]


def _predictions(out: Path) -> dict[str, pd.DataFrame]:
    return {
        name: pd.read_csv(out / "predictions" / f"{name}.csv", dtype={"subject_id": str})
        for name in ("baseline", "bmi_only")
    }


def test_qc_policies_exclude_and_mark(tmp_path: Path, swapped_cohort: tuple) -> None:
    cohort, swapped = swapped_cohort
    # exclude: the swapped subject is in no predictions table and listed in OUT/qc/.
    first = tmp_path / "exclude"
    first.mkdir()
    path = _write_study(first, cohort, qc={"slab_mm": 100, "policy": {"swap": "exclude"}})
    report = run_study(Study.load(path), log=lambda m: None)
    out = first / "out"
    qc = pd.read_csv(out / "qc" / "qc.csv", dtype={"subject_id": str})
    swap = qc[(qc["check"] == "swap")].set_index("subject_id")
    assert swap.loc[swapped, "flag"] == "yes"
    excluded = pd.read_csv(out / "qc" / "excluded.csv", dtype={"subject_id": str})
    assert swapped in set(excluded["subject_id"])
    for name, frame in _predictions(out).items():
        assert swapped not in set(frame["subject_id"]), name
        assert len(frame), name
    html = report.read_text(encoding="utf-8")
    assert "Scan QC" in html and swapped in html
    qc_part = html[html.index("Scan QC</h2>") :]  # the thumbnails, embedded in the section
    qc_part = qc_part.split("<h2>")[0]  # not a later section's figures
    n_flagged = qc.loc[qc["flag"] == "yes", "subject_id"].nunique()
    assert f"flagged subjects ({n_flagged} of {n_flagged})" in qc_part
    assert "data:image/png;base64" in qc_part
    # mark (the default): resuming from the same QC, the subject keeps rows carrying the flag.
    second = tmp_path / "mark"
    second.mkdir()
    shutil.copytree(out / "qc", second / "out" / "qc")
    messages = []
    path = _write_study(second, cohort, qc={"policy": {"void": "exclude"}})
    run_study(Study.load(path), log=messages.append)
    for name, frame in _predictions(second / "out").items():
        rows = frame[frame["subject_id"] == swapped]
        assert len(rows), name
        assert rows["message"].str.contains("qc: swap (", regex=False).all()
        others = frame[~frame["subject_id"].isin(swap.index[swap["flag"] == "yes"])]
        assert not others["message"].fillna("").str.contains("qc: swap").any(), name
    assert any(m.startswith("[qc] ") and "marked" in m for m in messages)
