"""Steatosis detection and grading against scikit-learn, statsmodels and published values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.metrics import roc_curve as sk_roc_curve
from statsmodels.stats.proportion import proportion_confint

from liverfat.evaluation.agreement import AgreementError
from liverfat.evaluation.classification import (
    STEATOSIS_THRESHOLD_PCT,
    binary_metrics,
    classification_metrics,
    cohen_kappa,
    delong_placements,
    grade_scores,
    grading_metrics,
    one_vs_rest_auc,
    roc_analysis,
    roc_curve,
    steatosis_grade,
    wilson_interval,
)


@pytest.fixture
def cohort():
    rng = np.random.default_rng(7)
    a = np.clip(rng.lognormal(1.3, 0.8, 150), 0.3, 45)
    b = a + rng.normal(0, 1.5, 150)
    return a, b


def test_default_threshold_is_5_5_percent():
    assert STEATOSIS_THRESHOLD_PCT == 5.5


def test_point_estimates_match_sklearn(cohort):
    a, b = cohort
    out = classification_metrics(a, b, n_boot=0)
    truth, call = a >= 5.5, b >= 5.5
    assert out["auc"] == pytest.approx(roc_auc_score(truth, b), abs=1e-12)
    assert out["sensitivity"] == pytest.approx(recall_score(truth, call), abs=1e-12)
    assert out["specificity"] == pytest.approx(recall_score(~truth, ~call), abs=1e-12)
    assert out["accuracy"] == pytest.approx(accuracy_score(truth, call), abs=1e-12)
    assert out["precision"] == pytest.approx(precision_score(truth, call), abs=1e-12)
    assert out["n_positive"] == truth.sum() and out["n_negative"] == (~truth).sum()


def test_bootstrap_is_seeded_and_resamples_subjects(cohort):
    a, b = cohort
    one = classification_metrics(a, b, n_boot=300, seed=3)
    two = classification_metrics(a, b, n_boot=300, seed=3)
    other = classification_metrics(a, b, n_boot=300, seed=4)
    assert one == two
    assert one["auc_lower"] != other["auc_lower"]
    for key in ("auc", "sensitivity", "specificity", "accuracy", "precision"):
        assert one[f"{key}_lower"] <= one[key] <= one[f"{key}_upper"], key
    # The vectorised weighted statistics equal a plain loop over resampled subjects.
    rng = np.random.default_rng(3)
    n = a.size
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=200)
    aucs, sens = [], []
    for row in counts:
        idx = np.repeat(np.arange(n), row)
        truth = a[idx] >= 5.5
        aucs.append(roc_auc_score(truth, b[idx]))
        sens.append(recall_score(truth, b[idx] >= 5.5))
    lo, hi = np.quantile(aucs, [0.025, 0.975])
    assert (one["auc_lower"], one["auc_upper"]) != (lo, hi)  # 300 vs 200 replicates
    only200 = classification_metrics(a, b, n_boot=200, seed=3)
    assert (only200["auc_lower"], only200["auc_upper"]) == pytest.approx((lo, hi), abs=1e-12)
    lo, hi = np.quantile(sens, [0.025, 0.975])
    assert (only200["sensitivity_lower"], only200["sensitivity_upper"]) == pytest.approx(
        (lo, hi), abs=1e-12
    )


def test_one_class_and_tiny_inputs_say_why():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    out = classification_metrics(a, a + 0.1, n_boot=50)
    assert np.isnan(out["auc"]) and "one class only" in out["note"]
    assert "precision undefined" in out["note"]
    assert out["specificity"] == 1.0
    tiny = classification_metrics([1.0, 9.0], [2.0, 8.0])
    assert tiny["n"] == 2 and np.isnan(tiny["auc"]) and "N = 2 < 3" in tiny["note"]
    with pytest.raises(AgreementError, match="both classes"):
        roc_analysis(a, a)


def test_hanley_mcneil_1982_ct_ratings():
    # Hanley & McNeil (1982), Radiology 143:29-36, Table 1: 58 normal and 51 abnormal CT
    # images rated 1-5; published AUC 0.893 (SE 0.032 by their approximation).
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    reference = np.r_[np.zeros(58), np.full(51, 10.0)]
    roc = roc_analysis(reference, np.r_[normal, abnormal])
    assert round(roc.auc, 3) == 0.893
    assert roc.se == pytest.approx(0.032, abs=0.002)  # DeLong's SE, not H&M's formula


def test_delong_variance_matches_brute_force(cohort):
    a, b = cohort
    b = np.round(b)  # ties
    pos, neg = b[a >= 5.5], b[a < 5.5]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc, v10, v01 = delong_placements(pos, neg)
    assert auc == pytest.approx(psi.mean(), abs=1e-12)
    assert v10 == pytest.approx(psi.mean(axis=1), abs=1e-12)
    assert v01 == pytest.approx(psi.mean(axis=0), abs=1e-12)
    roc = roc_analysis(a, b)
    var = psi.mean(axis=1).var(ddof=1) / pos.size + psi.mean(axis=0).var(ddof=1) / neg.size
    assert roc.se == pytest.approx(np.sqrt(var), abs=1e-12)


def test_roc_curve_matches_sklearn(cohort):
    a, b = cohort
    b = np.round(b, 0)
    fpr, tpr, thr = roc_curve(b, a >= 5.5)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(a >= 5.5, b, drop_intermediate=False)
    assert fpr == pytest.approx(sk_fpr) and tpr == pytest.approx(sk_tpr)
    assert thr[1:] == pytest.approx(sk_thr[1:])


def test_binary_metrics_wilson_intervals_match_statsmodels(cohort):
    a, b = cohort
    out = binary_metrics(a, b, threshold=5.5)
    tp, fn, tn, fp = out["tp"], out["fn"], out["tn"], out["fp"]
    lo, hi = proportion_confint(tp, tp + fn, method="wilson")
    assert (out["sensitivity_lower"], out["sensitivity_upper"]) == pytest.approx((lo, hi), abs=1e-9)
    lo, hi = proportion_confint(tn, tn + fp, method="wilson")
    assert (out["specificity_lower"], out["specificity_upper"]) == pytest.approx((lo, hi), abs=1e-9)
    assert out["kappa"] == pytest.approx(cohen_kappa_score(a >= 5.5, b >= 5.5), abs=1e-12)
    assert np.isnan(wilson_interval(0, 0)[0])


def test_grades_follow_thresholds():
    assert steatosis_grade([0.0, 6.39, 6.4, 17.4, 22.0, 22.1, 60]).tolist() == [0, 0, 1, 2, 2, 3, 3]
    with pytest.raises(AgreementError, match="increase"):
        steatosis_grade([1.0], thresholds=[5, 5])
    with pytest.raises(AgreementError, match="missing"):
        steatosis_grade([np.nan])


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_kappa_matches_sklearn(weights):
    rng = np.random.default_rng(9)
    r = rng.integers(0, 4, 200)
    p = np.clip(r + rng.integers(-1, 2, 200), 0, 3)
    assert cohen_kappa(r, p, weights=weights) == pytest.approx(
        cohen_kappa_score(r, p, weights=weights), abs=1e-12
    )


def test_grading_metrics_match_sklearn(cohort):
    a, b = cohort
    out = grading_metrics(a, b)
    ga, gb = steatosis_grade(a), steatosis_grade(b)
    assert out["confusion"].to_numpy() == pytest.approx(
        confusion_matrix(ga, gb, labels=[0, 1, 2, 3])
    )
    assert out["accuracy"] == pytest.approx(accuracy_score(ga, gb))
    assert out["kappa_quadratic"] == pytest.approx(
        cohen_kappa_score(ga, gb, weights="quadratic"), abs=1e-12
    )
    scores = grade_scores(b, (6.4, 17.4, 22.1))
    for g, auc in out["ovr_auc"].items():
        assert auc == pytest.approx(roc_auc_score(ga == g, scores[:, g]), abs=1e-12), g
    # The extreme grades' one-vs-rest AUC is the plain threshold ROC of the value.
    assert out["ovr_auc"][3] == pytest.approx(roc_auc_score(a >= 22.1, b), abs=1e-12)
    assert out["ovr_auc"][0] == pytest.approx(roc_auc_score(a < 6.4, -b), abs=1e-12)


def test_one_vs_rest_absent_grade_is_nan():
    a = np.array([1.0, 2.0, 8.0, 9.0])
    aucs = one_vs_rest_auc(a, a)
    assert aucs[0] == 1.0 and np.isnan(aucs[2]) and np.isnan(aucs[3])
