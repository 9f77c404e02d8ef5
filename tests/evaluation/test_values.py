"""Values side by side, coverage and pairs from predictions tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from liverfat.data.manifest import Manifest
from liverfat.data.predictions import PredictionsTable
from liverfat.evaluation.compare import comparison_table
from liverfat.evaluation.values import (
    ComparisonError,
    coverage,
    parse_pair,
    reference_table,
    value_table,
)
from tests.evaluation.conftest import TARGET


def test_value_table_drops_failed_and_flagged(tables):
    values = value_table(tables, TARGET)
    assert list(values.columns) == ["atlas", "network", "reference"]
    assert np.isnan(values.loc["sub005", "network"]) and np.isnan(values.loc["sub007", "network"])
    assert np.isnan(values.loc["sub119", "atlas"])
    with_flagged = value_table(tables, TARGET, include_flagged=True)
    assert np.isfinite(with_flagged.loc["sub007", "network"])
    with pytest.raises(ComparisonError, match="no predictions for target"):
        value_table(tables, "spleen_volume_ml")


def test_coverage_counts_every_status(tables):
    cov = coverage(tables, TARGET)
    assert cov.loc["network"].to_dict() == {
        "n_subjects": 120,
        "n_ok": 118,
        "n_flagged": 1,
        "n_failed": 1,
        "n_missing": 0,
    }
    assert cov.loc["atlas", "n_missing"] == 3


def test_pairs_are_checked():
    assert parse_pair(" reference : atlas ") == ("reference", "atlas")
    for bad in ("reference", "a:a", "a:b:c", ":b"):
        with pytest.raises(ComparisonError):
            parse_pair(bad)
    values = pd.DataFrame({"reference": [1.0], "network": [1.0]})
    with pytest.raises(ComparisonError, match="unknown method"):
        comparison_table(values, [("reference", "cnn")])


def test_reference_table_from_a_manifest_or_a_table(synthetic, tables, files):
    manifest = Manifest.load(files["manifest"])
    for source in (manifest, files["manifest"], files["manifest"].parent):
        reference = reference_table(source, TARGET)
        assert reference.methods == ["reference"] and reference.targets == [TARGET]
        values = reference.values("reference", TARGET)
        assert values.to_numpy() == pytest.approx(np.round(synthetic["reference"], 6))
    assert reference_table(manifest, TARGET, name="mri").methods == ["mri"]
    assert reference_table(files["network"], TARGET).methods == ["network"]
    both = PredictionsTable.concat(tables[:2])
    assert reference_table(both, TARGET, name="network").methods == ["network"]
    with pytest.raises(ComparisonError, match="holds methods network, reference; name"):
        reference_table(both, TARGET)
    with pytest.raises(ComparisonError, match="no method 'atlas'"):
        reference_table(both, TARGET, name="atlas")
    empty = manifest.select(subject_ids=[])
    with pytest.raises(ComparisonError, match="no subject has a value for target"):
        reference_table(empty, TARGET)
