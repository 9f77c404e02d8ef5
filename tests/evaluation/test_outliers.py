"""Subjects to look at: the largest differences and probable reference errors."""

from __future__ import annotations

import pandas as pd
import pytest

from liverfat.evaluation.outliers import probable_reference_errors, top_outliers
from liverfat.evaluation.values import value_table
from tests.evaluation.conftest import TARGET


def test_top_outliers_show_every_method(tables):
    values = value_table(tables, TARGET)
    top = top_outliers(values, ("reference", "atlas"), n=5)
    assert list(top.columns) == [
        "rank",
        "subject_id",
        "difference",
        "atlas",
        "network",
        "reference",
    ]
    diff = (values["atlas"] - values["reference"]).dropna()
    assert top["difference"].abs().tolist() == pytest.approx(sorted(diff.abs(), reverse=True)[:5])


def test_probable_reference_errors_are_agreeing_methods_against_reference() -> None:
    values = pd.DataFrame(
        {
            "reference": [2.0, 10.0, 3.0, 20.0, 5.0, 1.0],
            "network": [2.5, 3.0, 3.2, 12.0, 12.0, 9.0],
            "atlas": [2.2, 3.5, 2.9, 11.0, 6.0, 6.5],
        },
        index=pd.Index(["s1", "s2", "s3", "s4", "s5", "s6"], name="subject_id"),
    )
    found = probable_reference_errors(values, "network", "atlas", "reference")
    # s2 and s4: both methods agree and both miss the reference low by >= 4 %;
    # s5: methods disagree (12 vs 6); s6: agree within 2.5 %, not 2 %.
    assert found.index.tolist() == ["s4", "s2"]
    assert found.loc["s2", "error_a"] == pytest.approx(-7.0)
    assert found.loc["s4", "a_minus_b"] == pytest.approx(1.0)
    assert probable_reference_errors(
        values, "network", "atlas", "reference", agree_pct=3
    ).index.tolist() == ["s4", "s2", "s6"]
