"""Grading schemes and grader metrics against scikit-learn, statsmodels and normal theory."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from liverfat.errors import LiverfatError
from liverfat.evaluation.classification import (
    STEATOSIS_GRADE_THRESHOLDS_PCT,
    STEATOSIS_THRESHOLD_PCT,
    steatosis_grade,
)
from liverfat.evaluation.grader import (
    GRADING_SCHEMES,
    bootstrap_interval,
    delong_test,
    grade_auc,
    grade_probability_metrics,
    grading_scheme,
)


def _probabilities(rng: np.random.Generator, grades: np.ndarray, k: int) -> np.ndarray:
    p = rng.dirichlet(np.ones(k), grades.size)
    p[np.arange(grades.size), grades] += 0.5
    return np.round(p / p.sum(axis=1, keepdims=True), 2)  # rounded: ties, which count half


def test_grading_schemes():
    assert grading_scheme("histology").grade([4.9, 5.0, 32.9, 33, 66, 80]).tolist() == [
        0, 1, 1, 2, 3, 3,
    ]  # fmt: skip
    assert grading_scheme("mri_pdff").grade([6.3, 6.4, 17.4, 22.0, 22.1]).tolist() == [
        0, 1, 2, 2, 3,
    ]  # fmt: skip
    assert grading_scheme("binary").grade([5.4, 5.5]).tolist() == [0, 1]
    assert grading_scheme([10, 20]).grade([5, 15, 25]).tolist() == [0, 1, 2]
    assert grading_scheme([10, 20]).n_grades == 3
    with pytest.raises(LiverfatError, match="increase"):
        grading_scheme([20, 10])
    with pytest.raises(LiverfatError, match="unknown grading scheme"):
        grading_scheme("severe")
    with pytest.raises(LiverfatError, match="missing"):
        grading_scheme("binary").grade([3.0, np.nan])


def test_schemes_use_the_evaluation_thresholds():
    """One definition: the MRI-PDFF and binary schemes grade as steatosis_grade does."""
    assert GRADING_SCHEMES["mri_pdff"].cuts_pct == STEATOSIS_GRADE_THRESHOLDS_PCT
    assert GRADING_SCHEMES["binary"].cuts_pct == (STEATOSIS_THRESHOLD_PCT,)
    values = np.random.default_rng(3).uniform(0, 40, 500)
    assert np.array_equal(grading_scheme("mri_pdff").grade(values), steatosis_grade(values))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_grade_auc_matches_scikit_learn(k):
    rng = np.random.default_rng(k)
    grades = rng.integers(0, k, 300)
    p = _probabilities(rng, grades, k)
    if k == 2:
        expected = roc_auc_score(grades, p[:, 1])
    else:
        expected = np.mean([roc_auc_score(grades == g, p[:, g]) for g in range(k)])
        p_exact = p / p.sum(axis=1, keepdims=True)  # scikit-learn's multi-class ROC needs sum 1
        assert grade_auc(grades, p_exact) == pytest.approx(
            roc_auc_score(grades, p_exact, multi_class="ovr", average="macro"), abs=1e-12
        )
    assert grade_auc(grades, p) == pytest.approx(expected, abs=1e-12)
    assert 0.6 < grade_auc(grades, p) < 1.0


def test_grade_auc_skips_absent_grades():
    rng = np.random.default_rng(1)
    grades = rng.choice([0, 2], 100)  # grade 1 of three absent: macro mean over grades 0 and 2
    p = _probabilities(rng, grades, 3)
    expected = np.mean([roc_auc_score(grades == g, p[:, g]) for g in (0, 2)])
    assert grade_auc(grades, p) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(grade_auc(np.zeros(5, int), np.full((5, 2), 0.5)))
    assert np.isnan(grade_auc(np.zeros(5, int), np.full((5, 3), 1 / 3)))


def test_bootstrap_interval_of_a_mean_approaches_normal_theory():
    x = np.random.default_rng(0).normal(10, 2, 400)
    low, high = bootstrap_interval(np.mean, x, n_boot=2000)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert low == pytest.approx(x.mean() - half, abs=0.05)
    assert high == pytest.approx(x.mean() + half, abs=0.05)
    assert bootstrap_interval(np.mean, x, n_boot=200, seed=4) == bootstrap_interval(
        np.mean, x, n_boot=200, seed=4
    )
    narrow = bootstrap_interval(np.mean, x, n_boot=2000, confidence=0.5)
    assert low < narrow[0] < narrow[1] < high
    assert bootstrap_interval(lambda v: np.nan, x, n_boot=10) == pytest.approx(
        (np.nan, np.nan), nan_ok=True
    )


def test_grade_probability_metrics():
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 3, 200)
    p = _probabilities(rng, grades, 3)
    metrics = grade_probability_metrics(grades, p, n_boot=200, seed=1)
    correct = int((p.argmax(axis=1) == grades).sum())
    assert metrics["n"] == 200
    assert metrics["accuracy"] == pytest.approx(correct / 200)
    assert (metrics["accuracy_lower"], metrics["accuracy_upper"]) == pytest.approx(
        proportion_confint(correct, 200, method="wilson")
    )
    assert metrics["auc"] == pytest.approx(grade_auc(grades, p))
    assert (metrics["auc_lower"], metrics["auc_upper"]) == pytest.approx(
        bootstrap_interval(grade_auc, grades, p, n_boot=200, seed=1)
    )
    assert metrics["auc_lower"] < metrics["auc"] < metrics["auc_upper"]


def _brute_force_delong(positive, a, b):
    """Independent DeLong: the O(m n) psi kernel per score, then the 2 x 2 covariance."""
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    v10, v01, aucs = [], [], []
    for s in (a, b):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    s10, s01 = np.cov(v10), np.cov(v01)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / pos.size
    var += (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / neg.size
    z = (aucs[0] - aucs[1]) / np.sqrt(var)
    return aucs, z, 2 * stats.norm.sf(abs(z))


def test_delong_test_matches_the_brute_force_kernel():
    rng = np.random.default_rng(3)
    positive = rng.random(120) < 0.35
    latent = positive * 1.0 + rng.normal(0, 1, 120)
    a = np.round(latent + rng.normal(0, 0.3, 120), 1)  # rounded: ties count half
    b = np.round(0.4 * latent + rng.normal(0, 1, 120), 1)
    result = delong_test(positive, a, b)
    aucs, z, p = _brute_force_delong(positive, a, b)
    assert result["auc_a"] == pytest.approx(aucs[0])
    assert result["auc_b"] == pytest.approx(aucs[1])
    assert result["z"] == pytest.approx(z)
    assert result["p"] == pytest.approx(p)
    assert result["auc_a"] > result["auc_b"] and result["p"] < 0.05
    swapped = delong_test(positive, b, a)
    assert swapped["z"] == pytest.approx(-result["z"]) and swapped["p"] == pytest.approx(p)


def test_delong_test_of_identical_scores_and_too_few_subjects():
    positive = np.array([True, True, False, False, False])
    score = np.array([0.9, 0.4, 0.5, 0.1, 0.2])
    same = delong_test(positive, score, score)
    assert same["difference"] == 0.0 and same["se"] == 0.0 and same["p"] == 1.0
    with pytest.raises(LiverfatError, match="2\\+ positive"):
        delong_test(np.array([True, False, False]), score[:3], score[:3])
