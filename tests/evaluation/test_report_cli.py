"""Figures, the HTML report and ``liverfat compare`` run in-process."""

from __future__ import annotations

import base64
import re

import pandas as pd
import pytest

from liverfat.cli import main as liverfat_main
from liverfat.data.predictions import PredictionsTable
from liverfat.evaluation.compare import run_comparison
from liverfat.evaluation.plots import figure_to_data_uri, figure_to_svg, new_figure
from liverfat.evaluation.report import comparison_figures, render_report, write_figures
from tests.evaluation.conftest import TARGET


@pytest.fixture(scope="module")
def comparison(synthetic, tables):
    subsets = {"A": synthetic["ids"][:80], "C": synthetic["ids"][80:]}
    return run_comparison(
        tables,
        TARGET,
        pairs=[("reference", "network"), ("reference", "atlas")],
        subsets=subsets,
        covariates=synthetic["covariates"],
        n_boot=50,
    )


def test_figures_are_written_as_png_and_svg(comparison, tmp_path):
    sections = comparison_figures(comparison)
    assert len(sections["pairs"]) == 4 and len(sections["roc"]) == 2
    assert len(sections["errors"]) == 2 and len(sections["grading"]) == 4
    # The Bland-Altman panel labels the largest differences with their subject ids.
    ba = sections["pairs"][0].figure.axes[0]
    assert any(t.get_text().startswith("sub") for t in ba.texts)
    written = write_figures({"roc": sections["roc"]}, tmp_path)
    assert sorted(p.suffix for p in written) == [".png", ".png", ".svg", ".svg"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written[1].read_text(encoding="utf-8").lstrip().startswith("<svg")


def test_report_is_self_contained(comparison):
    page = render_report(comparison, title="Test <report>")
    assert page.startswith("<!DOCTYPE html>") and "Test &lt;report&gt;" in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 12
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert not re.search(r'src="(?!data:)', page)  # nothing fetched from elsewhere
    for heading in ("Method comparison", "ROC-AUC", "Correlation of errors", "Top outliers"):
        assert heading in page


def test_figure_helpers():
    fig = new_figure(2, 2)
    assert figure_to_data_uri(fig).startswith("data:image/png;base64,")
    assert figure_to_svg(fig).startswith("<svg")


def test_cli_with_manifest_reference(files, tmp_path, capsys):
    out = tmp_path / "out"
    code = liverfat_main(
        [
            "compare",
            "--reference", str(files["manifest"]),
            "--target", TARGET,
            "--predictions", str(files["network"]), str(files["atlas"]),
            "--pair", "reference:network",
            "--pair", "reference:atlas",
            "--pair", "atlas:network",
            "--subset", "A",
            "--subset", "C",
            "--by", "sex",
            "--bootstrap", "50",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| Subset | Pair | N | MAE | R² | LoA | r | ICC | ROC-AUC |")
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["subset"]) == ["A"] * 3 + ["C"] * 3
    assert table.loc[0, "n"] == 78  # 80 in split A minus one failed and one flagged
    assert (out / "report.html").is_file() and (out / "comparison.tex").is_file()
    assert len(list((out / "figures").glob("*.svg"))) == len(list((out / "figures").glob("*.png")))
    covariates = pd.read_csv(out / "covariates.csv")
    assert {"all", "sex=F", "sex=M"} == set(covariates["stratum"])


def test_cli_with_predictions_reference(files, tmp_path, capsys):
    out = tmp_path / "out"
    code = liverfat_main(
        [
            "compare",
            "--reference", str(files["reference"]),
            "--predictions", str(files["network"]), str(files["atlas"]),
            "--bootstrap", "0",
            "--no-report",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["pair"]) == ["reference:atlas", "reference:network", "atlas:network"]
    assert not (out / "report.html").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--pair", "reference:cnn"], "unknown method(s) cnn"),
        (["--subset", "A"], "--subset needs a manifest"),
        (["--pair", "reference"], "two different method names"),
        (["--target", "spleen"], "no predictions for target 'spleen'"),
    ],
)
def test_cli_user_errors_are_one_line(files, tmp_path, capsys, extra, message):
    argv = [
        "compare",
        "--reference", str(files["reference"]),
        "--predictions", str(files["network"]),
        "--out", str(tmp_path / "out"),
        *extra,
    ]  # fmt: skip
    assert liverfat_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert err.startswith("liverfat compare: error:")


def test_cli_icc_form_choices_come_from_the_package(files, tmp_path, capsys):
    argv = ["compare", "--reference", str(files["reference"]), "--predictions",
            str(files["network"]), "--out", str(tmp_path / "o"),
            "--icc-form", "ICC(4,1)"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        liverfat_main(argv)
    assert exit_info.value.code == 2
    assert "ICC(A,1)" in capsys.readouterr().err  # an alias of ICC(2,1) is one of the choices


def test_cli_missing_file_is_a_user_error(tmp_path, capsys):
    argv = ["compare", "--reference", str(tmp_path / "nope.csv"), "--predictions",
            str(tmp_path / "x.csv"), "--out", str(tmp_path / "o")]  # fmt: skip
    assert liverfat_main(argv) == 2
    assert "not found" in capsys.readouterr().err


def test_pairs_without_subjects_get_no_empty_panels(synthetic, tables, files, tmp_path, capsys):
    """Reference values only on A (as in UK Biobank): reference vs any method on C has N = 0."""
    reference, network, atlas = tables
    on_a = reference.frame["subject_id"].isin(synthetic["ids"][:80])
    only_a = PredictionsTable(reference.frame[on_a], reference.run)
    subsets = {"A": synthetic["ids"][:80], "C": synthetic["ids"][80:]}
    pairs = [("reference", "network"), ("reference", "atlas"), ("atlas", "network")]
    c = run_comparison([only_a, network, atlas], TARGET, pairs=pairs, subsets=subsets, n_boot=0)
    assert c.n_paired("C", "reference", "atlas") == 0 < c.n_paired("C", "atlas", "network")
    sections = comparison_figures(c)
    stems = {f.stem for items in sections.values() for f in items}
    assert "pair_C_atlas_network" in stems and "pair_A_reference_atlas" in stems
    assert not {s for s in stems if s.startswith(("pair_C_reference", "grades_C_reference"))}
    assert "errors_C_network_atlas" not in stems and "errors_A_network_atlas" in stems
    page = render_report(c, sections=sections)
    assert page.count("No subjects with values of both methods") == 1
    assert "network vs reference (C), atlas vs reference (C)." in page
    # The command line, with a manifest whose split C has no reference values.
    subjects = pd.read_csv(files["manifest"].parent / "subjects.csv", dtype=str)
    subjects.loc[subjects["split"] == "C", TARGET] = ""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    subjects.to_csv(cohort / "subjects.csv", index=False)
    (cohort / "manifest.yaml").write_text(files["manifest"].read_text(encoding="utf-8"))
    out = tmp_path / "out"
    argv = ["compare", "--reference", str(cohort), "--predictions", str(files["network"]),
            str(files["atlas"]), "--subset", "A", "--subset", "C", "--bootstrap", "0",
            "--out", str(out)]  # fmt: skip
    assert liverfat_main(argv) == 0
    capsys.readouterr()
    drawn = {p.stem for p in (out / "figures").glob("*.png")}
    assert "pair_C_atlas_network" in drawn
    assert not {s for s in drawn if s.startswith("pair_C_reference")}
    assert (out / "report.html").read_text(encoding="utf-8").count("No subjects with values") == 1
