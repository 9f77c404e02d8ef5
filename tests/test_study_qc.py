"""Scan QC as a study stage (liverfat.study_qc): exclude or mark flagged subjects."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from liverfat.data.predictions import PredictionsTable, sidecar_path
from liverfat.study import Study, run_study
from liverfat.study_qc import MARKED_FOLDERS, StudyQc, with_note
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


def _all_tables(out: Path) -> dict[str, pd.DataFrame]:
    """Every predictions table (CSV with a sidecar) the study wrote, by path below ``out``."""
    found = {}
    for folder in MARKED_FOLDERS:
        for csv in sorted((out / folder).rglob("*.csv")):
            if sidecar_path(csv).is_file():
                found[csv.relative_to(out).as_posix()] = PredictionsTable.read(csv).frame
    return found


def test_with_note_is_idempotent() -> None:
    note = "qc: swap (water-fat swap in z 10-20 mm: core-minus-shell fat fraction +30.0 pp)"
    assert with_note(float("nan"), note) == note
    assert with_note("clipped", note) == f"clipped; {note}"
    assert with_note(with_note("clipped", note), note) == f"clipped; {note}"
    two = f"{note}; qc: void (signal void of 40 mL inside the body (1 over the threshold))"
    assert with_note(with_note("x", two), two) == f"x; {two}"
    assert with_note(f"x; {two}", None) == "x"  # a subject no longer flagged loses its notes
    table = PredictionsTable.from_rows(
        [
            {
                "subject_id": s,
                "method": "m",
                "target": "t",
                "value": 1.0,
                "status": "ok",
                "message": m,
            }
            for s, m in (("a", ""), ("b", "kept"))
        ]
    )
    qc = StudyQc(marks={"a": note})
    once = qc.mark(table)
    assert qc.mark(once).frame["message"].tolist() == [note, "kept"]


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
    tables = _all_tables(out)  # predictions/NAME.csv, its stage tables, any engine's own
    assert {"predictions/baseline.cv.csv", "predictions/bmi_only.fit.csv"} <= set(tables)
    for name, frame in tables.items():
        assert swapped not in set(frame["subject_id"]), name
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
    # Every table the study wrote carries the note once: the combined tables, the stage tables
    # (NAME.cv.csv, NAME.fit.csv) and, on a resumed run, an engine's own table under
    # engines/NAME/ (the network's finished folds: here one planted unmarked, with messages of
    # its own).
    out = second / "out"
    note = f"qc: swap ({swap.loc[swapped, 'message']})"
    flagged = set(swap.index[swap["flag"] == "yes"])
    _assert_noted_once(_all_tables(out), swapped, note, flagged)
    fold = out / "engines" / "baseline" / "cv" / "fold00.csv"
    plain = StudyQc().mark(PredictionsTable.read(out / "predictions" / "baseline.cv.csv")).frame
    plain["message"] = [f"fold note {i}" if i % 2 else "" for i in range(len(plain))]
    plain.loc[plain["subject_id"] == swapped, "message"] = "engine note"
    PredictionsTable(plain, {"cv_key": "k"}).write(fold)
    stage_csvs = sorted((out / "predictions").glob("*.*.csv"))
    before = {p: p.stat().st_mtime_ns for p in stage_csvs}
    messages = []
    run_study(Study.load(path), log=messages.append)  # resumed: every stage reused
    assert sum("finished earlier" in m for m in messages) == 3
    assert {p: p.stat().st_mtime_ns for p in stage_csvs} == before  # already marked: kept
    tables = _all_tables(out)
    assert "engines/baseline/cv/fold00.csv" in tables
    _assert_noted_once(tables, swapped, note, flagged)
    got = tables["engines/baseline/cv/fold00.csv"]["message"].fillna("")
    assert (got[plain["subject_id"] == swapped] == f"engine note; {note}").all()
    unflagged = ~plain["subject_id"].isin(flagged)
    assert got[unflagged].tolist() == plain["message"][unflagged].tolist()  # as the engine wrote
    assert PredictionsTable.read(fold).run == {"cv_key": "k"}  # the engine's resume key kept


def _assert_noted_once(
    tables: dict[str, pd.DataFrame], swapped: str, note: str, flagged: set[str]
) -> None:
    """The swapped subject's rows end with ``note``, once; no unflagged row has a QC note."""
    assert {"predictions/baseline.cv.csv", "predictions/baseline.fit.csv"} <= set(tables)
    with_swapped = {n for n, f in tables.items() if swapped in set(f["subject_id"])}
    assert with_swapped == set(tables) - {"predictions/baseline.fit.csv"}  # that one predicts B
    for name, frame in tables.items():
        message = frame["message"].fillna("")
        rows = frame["subject_id"] == swapped
        assert (message[rows].str.count("qc: swap \\(") == 1).all(), name
        assert message[rows].str.endswith(note).all(), name
        assert not message[~frame["subject_id"].isin(flagged)].str.contains("qc: ").any(), name
