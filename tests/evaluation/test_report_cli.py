"""Figures, the HTML report and ``liverfat compare`` run in-process."""

from __future__ import annotations

import base64
import re

import pandas as pd
import pytest

from liverfat.cli import main as liverfat_main
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


def test_cli_missing_file_is_a_user_error(tmp_path, capsys):
    argv = ["compare", "--reference", str(tmp_path / "nope.csv"), "--predictions",
            str(tmp_path / "x.csv"), "--out", str(tmp_path / "o")]  # fmt: skip
    assert liverfat_main(argv) == 2
    assert "not found" in capsys.readouterr().err
