"""Method-comparison tables from predictions tables alone.

The inputs are predictions tables (a reference or "truth" table is just another one, e.g. with
method ``reference``; see :mod:`~liverfat.evaluation.values`), a list of *pairs* ``a:b`` of
method names (``a`` is the truth, ``b`` is compared against it: bias is mean(b - a)) and named
*subsets* of subject ids (e.g. the splits of a manifest). The output is the method-comparison
table of the UK Biobank liver-fat study: one row per subset and pair with N, MAE, R², limits of
agreement, r, ICC, ROC-AUC, sensitivity and specificity (:func:`comparison_table`, laid out as
text by :mod:`~liverfat.evaluation.layouts`), plus the correlation of two methods' errors against
a reference, the top outliers of each pair (:mod:`~liverfat.evaluation.outliers`), steatosis
grading and correlations with covariates (:mod:`~liverfat.evaluation.covariates`).
:func:`run_comparison` does all of it with one :class:`ComparisonSettings`. Nothing here knows
which engine wrote a table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liverfat.data.atomic import atomic_path, write_text_atomic
from liverfat.data.predictions import PredictionsTable
from liverfat.evaluation.agreement import (
    CORRELATION_KEYS,
    ICC_ALIASES,
    ICC_FORMS,
    AgreementError,
    agreement,
    bland_altman,
    correlations,
)
from liverfat.evaluation.classification import (
    STEATOSIS_GRADE_THRESHOLDS_PCT,
    STEATOSIS_THRESHOLD_PCT,
    Roc,
    classification_metrics,
    grading_metrics,
    roc_analysis,
    steatosis_grade,
)
from liverfat.evaluation.covariates import covariate_correlations
from liverfat.evaluation.layouts import published_layout, to_latex, to_markdown
from liverfat.evaluation.outliers import top_outliers
from liverfat.evaluation.values import (
    REFERENCE,
    ComparisonError,
    as_table,
    check_pairs,
    compared_with_same,
    coverage,
    default_pairs,
    failures,
    pair_values,
    subset_index,
    value_table,
)


@dataclass(frozen=True)
class ComparisonSettings:
    """The options of a comparison, typed once (defaults: the UK Biobank liver-fat study's).

    Attributes
    ----------
    threshold:
        Steatosis cut-off in the target unit (%) for ROC-AUC, sensitivity, specificity,
        accuracy and precision; a value equal to it is positive.
    grade_thresholds:
        Increasing cut-offs (%) between steatosis grades.
    icc_form:
        The ICC reported, one of :data:`~liverfat.evaluation.agreement.ICC_FORMS` or
        :data:`~liverfat.evaluation.agreement.ICC_ALIASES`.
    mape_floor:
        References with ``|a|`` below this (target unit) are left out of the MAPE.
    n_boot, seed:
        Subject-level bootstrap replicates (0: no intervals) and their seed.
    confidence:
        Level of every interval.
    top_n:
        Outliers listed per pair.
    include_flagged:
        Also use rows with status ``flagged``.
    by:
        A covariate to stratify the covariate correlations by (e.g. ``sex``).
    unit:
        The target's unit, for labels (``"%"`` for PDFF).
    """

    threshold: float = STEATOSIS_THRESHOLD_PCT
    grade_thresholds: tuple[float, ...] = STEATOSIS_GRADE_THRESHOLDS_PCT
    icc_form: str = "ICC(2,1)"
    mape_floor: float = 1.0
    n_boot: int = 2000
    seed: int = 0
    confidence: float = 0.95
    top_n: int = 10
    include_flagged: bool = False
    by: str | None = None
    unit: str = "%"

    def __post_init__(self) -> None:
        object.__setattr__(self, "grade_thresholds", tuple(float(t) for t in self.grade_thresholds))
        try:
            steatosis_grade([], self.grade_thresholds)  # raises unless they increase strictly
        except AgreementError as exc:
            raise ComparisonError(str(exc)) from exc
        if self.icc_form not in (*ICC_FORMS, *ICC_ALIASES):
            raise ComparisonError(
                f"unknown ICC form {self.icc_form!r} (choose from {', '.join(ICC_FORMS)})"
            )
        if self.n_boot < 0 or self.top_n < 0:
            raise ComparisonError(f"n_boot and top_n are counts, got {self.n_boot}, {self.top_n}")
        if not 0.0 < self.confidence < 1.0:
            raise ComparisonError(f"confidence is a level in (0, 1), got {self.confidence}")

    @classmethod
    def of(cls, settings: ComparisonSettings | None = None, **options: Any) -> ComparisonSettings:
        """``settings`` (default: the defaults) with the fields named in ``options`` replaced."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"no comparison setting(s) {', '.join(unknown)}")
        return replace(settings or cls(), **options)


# The comparison table -----------------------------------------------------------------------------
def comparison_table(
    values: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    *,
    subsets: Mapping[str, Iterable[str]] | None = None,
    settings: ComparisonSettings | None = None,
    **options: Any,
) -> pd.DataFrame:
    """One row per subset and pair: agreement and steatosis classification of b against a.

    Parameters
    ----------
    values:
        :func:`~liverfat.evaluation.values.value_table` (subjects x methods, target unit).
    pairs:
        ``(a, b)`` method names; ``a`` is the truth for classification and R².
    subsets:
        Name -> subject ids (default one subset :data:`~liverfat.evaluation.values.ALL` of every
        subject).
    settings, options:
        :class:`ComparisonSettings` (default: its defaults), any field replaced by ``options``
        (e.g. ``n_boot=0``); ``threshold``, ``icc_form``, ``mape_floor``, ``n_boot``, ``seed``
        and ``confidence`` apply here.

    Returns
    -------
    pandas.DataFrame
        Columns ``subset``, ``pair`` (``"a:b"``), ``method_a``, ``method_b``, every key of
        :func:`~liverfat.evaluation.agreement.agreement` and the classification statistics of
        :func:`~liverfat.evaluation.classification.classification_metrics` (``auc``,
        ``sensitivity``, ``specificity``, ``accuracy``, ``precision``, each with
        ``_lower``/``_upper``; ``n_positive``, ``n_negative``) and ``note``, which says why any
        value is NaN.
    """
    s = ComparisonSettings.of(settings, **options)
    check_pairs(values, pairs)
    rows = []
    for subset, ids in subset_index(values, subsets).items():
        for a, b in pairs:
            va, vb = pair_values(values, a, b, ids)
            agree = agreement(
                va, vb, icc_form=s.icc_form, mape_floor=s.mape_floor, confidence=s.confidence
            )
            cls = classification_metrics(
                va, vb, threshold=s.threshold, n_boot=s.n_boot, seed=s.seed, confidence=s.confidence
            )
            notes = [n for n in (agree.pop("note"), cls.pop("note")) if n]
            cls.pop("n")
            row = {"subset": subset, "pair": f"{a}:{b}", "method_a": a, "method_b": b}
            row.update(agree)
            row.update(cls)
            row["note"] = "; ".join(dict.fromkeys(notes))
            rows.append(row)
    return pd.DataFrame(rows)


# Errors of two methods against a reference -------------------------------------------------------
def error_correlation(
    values: pd.DataFrame,
    reference: str,
    method_a: str,
    method_b: str,
    *,
    subsets: Mapping[str, Iterable[str]] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Do two methods err on the same subjects? Their errors against ``reference`` compared.

    Errors are ``method - reference`` (target unit) on the subjects all three have.

    Returns
    -------
    pandas.DataFrame
        One row per subset: ``n``; Pearson ``r`` of the two errors with ``r_lower``/``r_upper``
        (Fisher z) and ``r_p``; Spearman ``rho``/``rho_p``; ``bias``, ``loa_lower``,
        ``loa_upper``: Bland-Altman of error_b against error_a (mean of error_b - error_a, which
        is also method_b - method_a on these subjects); ``note``.
    """
    check_pairs(values, [(reference, method_a), (reference, method_b)])
    rows = []
    for subset, ids in subset_index(values, subsets).items():
        sub = values.reindex(ids)[[reference, method_a, method_b]].dropna()
        ea = sub[method_a] - sub[reference]
        eb = sub[method_b] - sub[reference]
        n = len(sub)
        row: dict[str, Any] = {
            "subset": subset,
            "reference": reference,
            "method_a": method_a,
            "method_b": method_b,
            "n": n,
        }
        row.update(dict.fromkeys((*CORRELATION_KEYS, "bias", "loa_lower", "loa_upper"), np.nan))
        note = ""
        if n < 3:
            note = f"N = {n} < 3 subjects with all three values"
        elif np.ptp(ea) == 0 or np.ptp(eb) == 0:
            note = "constant errors: correlation undefined"
        else:
            row.update(correlations(ea, eb, confidence=confidence))
        if n >= 3:
            ba = bland_altman(eb, ea, confidence=confidence)
            row.update(bias=ba.bias, loa_lower=ba.loa_lower, loa_upper=ba.loa_upper)
        row["note"] = note
        rows.append(row)
    return pd.DataFrame(rows)


# Steatosis grades ---------------------------------------------------------------------------------
def grading_table(
    values: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    *,
    subsets: Mapping[str, Iterable[str]] | None = None,
    thresholds: Sequence[float] = STEATOSIS_GRADE_THRESHOLDS_PCT,
) -> tuple[pd.DataFrame, dict[tuple[str, str], pd.DataFrame]]:
    """Multi-grade steatosis agreement per subset and pair (``a`` gives the true grade).

    Returns
    -------
    tuple
        A frame with ``subset``, ``pair``, ``n``, ``accuracy``, ``kappa_quadratic``,
        ``ovr_auc_macro`` and ``ovr_auc_<g>`` per grade; and the confusion matrices by
        ``(subset, pair)``.
    """
    check_pairs(values, pairs)
    rows, matrices = [], {}
    for subset, ids in subset_index(values, subsets).items():
        for a, b in pairs:
            va, vb = pair_values(values, a, b, ids)
            gm = grading_metrics(va, vb, thresholds=thresholds)
            row = {
                "subset": subset,
                "pair": f"{a}:{b}",
                "n": gm["n"],
                "accuracy": gm["accuracy"],
                "kappa_quadratic": gm["kappa_quadratic"],
                "ovr_auc_macro": gm["ovr_auc_macro"],
            }
            for g in range(len(thresholds) + 1):
                row[f"ovr_auc_{g}"] = gm["ovr_auc"].get(g, np.nan)
            rows.append(row)
            matrices[(subset, f"{a}:{b}")] = gm["confusion"]
    return pd.DataFrame(rows), matrices


# Everything at once -------------------------------------------------------------------------------
@dataclass
class Comparison:
    """All results of one comparison, for files, figures and the report.

    Attributes
    ----------
    target:
        The target compared (its unit is ``settings.unit``, :attr:`unit`).
    values:
        :func:`~liverfat.evaluation.values.value_table` (subjects x methods).
    pairs, subsets:
        The pairs ``(a, b)`` and subsets (name -> subject ids) compared.
    table:
        :func:`comparison_table`.
    coverage, failures:
        Per method row counts by status, and the non-ok rows.
    error_correlations:
        :func:`error_correlation` for every two methods compared with the same ``a``.
    outliers:
        Per pair ``"a:b"``, :func:`~liverfat.evaluation.outliers.top_outliers` over all
        subjects.
    grading, confusions:
        :func:`grading_table`.
    rocs:
        ROC by ``(subset, pair)`` where both classes occur.
    covariates:
        :func:`~liverfat.evaluation.covariates.covariate_correlations` (None without covariates).
    reference:
        The reference method's name (None: the first method of each pair).
    settings:
        The options used.
    """

    target: str
    values: pd.DataFrame
    pairs: list[tuple[str, str]]
    subsets: dict[str, pd.Index]
    table: pd.DataFrame
    coverage: pd.DataFrame
    failures: pd.DataFrame
    error_correlations: pd.DataFrame
    outliers: dict[str, pd.DataFrame]
    grading: pd.DataFrame
    confusions: dict[tuple[str, str], pd.DataFrame]
    rocs: dict[tuple[str, str], Roc]
    covariates: pd.DataFrame | None = None
    reference: str | None = None
    settings: ComparisonSettings = field(default_factory=ComparisonSettings)

    @property
    def unit(self) -> str:
        """The target's unit (``"%"`` for PDFF)."""
        return self.settings.unit

    def n_paired(self, subset: str, a: str, b: str) -> int:
        """Subjects of ``subset`` with usable values of both ``a`` and ``b``."""
        va, vb = pair_values(self.values, a, b, self.subsets[subset])
        return int((va.notna() & vb.notna()).sum())

    def published(self) -> pd.DataFrame:
        """:func:`~liverfat.evaluation.layouts.published_layout` of the comparison table."""
        return published_layout(self.table)

    def write_tables(self, directory: str | Path) -> list[Path]:
        """Write every table (CSV; the comparison also as Markdown and LaTeX) atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        frames = {
            "comparison": self.table,
            "coverage": self.coverage.reset_index(),
            "failures": self.failures,
            "error_correlation": self.error_correlations,
            "grading": self.grading,
            "outliers": pd.concat(
                [o.assign(pair=p) for p, o in self.outliers.items()], ignore_index=True
            )
            if self.outliers
            else pd.DataFrame(),
            "values": self.values.reset_index(),
        }
        if self.covariates is not None:
            frames["covariates"] = self.covariates
        written = []
        for stem, frame in frames.items():
            path = directory / f"{stem}.csv"
            with atomic_path(path) as tmp:
                frame.to_csv(tmp, index=False, float_format="%.6g")
            written.append(path)
        layout = self.published()
        caption = f"Method comparison, {self.target} ({self.unit})"
        write_text_atomic(directory / "comparison.md", to_markdown(layout))
        write_text_atomic(directory / "comparison.tex", to_latex(layout, caption=caption))
        written += [directory / "comparison.md", directory / "comparison.tex"]
        return written


def run_comparison(
    tables: PredictionsTable | Sequence[PredictionsTable],
    target: str,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    reference: str | None = None,
    subsets: Mapping[str, Iterable[str]] | None = None,
    covariates: pd.DataFrame | None = None,
    settings: ComparisonSettings | None = None,
    **options: Any,
) -> Comparison:
    """Every comparison of the methods in ``tables`` for one target.

    Parameters
    ----------
    tables:
        Predictions tables, the reference ("truth") table among them.
    target:
        The target compared (e.g. ``liver_pdff_pct``).
    pairs:
        ``(a, b)`` pairs; default :func:`~liverfat.evaluation.values.default_pairs` around
        ``reference``.
    reference:
        The reference method's name (default: the first ``a`` of ``pairs``, else a method
        named ``reference``).
    subsets:
        Name -> subject ids (default all subjects).
    covariates:
        For :func:`~liverfat.evaluation.covariates.covariate_correlations` of every method's
        values (stratified by ``settings.by``).
    settings, options:
        :class:`ComparisonSettings` (default: its defaults), any field replaced by ``options``
        (e.g. ``seed=3``).
    """
    s = ComparisonSettings.of(settings, **options)
    tables = as_table(tables)  # combined once for the value, coverage and failure tables
    values = value_table(tables, target, include_flagged=s.include_flagged)
    methods = list(values.columns)
    if reference is None:
        reference = pairs[0][0] if pairs else (REFERENCE if REFERENCE in methods else None)
    pairs = [tuple(p) for p in (default_pairs(methods, reference) if pairs is None else pairs)]
    check_pairs(values, pairs)
    subset_ids = subset_index(values, subsets)
    grading, confusions = grading_table(
        values, pairs, subsets=subset_ids, thresholds=s.grade_thresholds
    )
    cov = None
    if covariates is not None and len(covariates.columns):
        cov = covariate_correlations(
            values, covariates, by=s.by, grade_thresholds=s.grade_thresholds
        )
    cohort = sorted(set().union(*[set(i) for i in subset_ids.values()]))
    return Comparison(
        target=target,
        values=values,
        pairs=pairs,
        subsets=subset_ids,
        table=comparison_table(values, pairs, subsets=subset_ids, settings=s),
        coverage=coverage(tables, target, subjects=cohort),
        failures=failures(tables, target),
        error_correlations=_error_correlations(values, pairs, subset_ids, s.confidence),
        outliers={f"{a}:{b}": top_outliers(values, (a, b), n=s.top_n) for a, b in pairs},
        grading=grading,
        confusions=confusions,
        rocs=_rocs(values, pairs, subset_ids, s.threshold),
        covariates=cov,
        reference=reference,
        settings=s,
    )


def _rocs(
    values: pd.DataFrame, pairs: list[tuple[str, str]], subsets: dict[str, pd.Index], threshold
) -> dict[tuple[str, str], Roc]:
    """ROC of every pair on every subset where both classes occur, by ``(subset, "a:b")``."""
    rocs: dict[tuple[str, str], Roc] = {}
    for subset, ids in subsets.items():
        for a, b in pairs:
            va, vb = pair_values(values, a, b, ids)
            try:
                rocs[(subset, f"{a}:{b}")] = roc_analysis(va, vb, threshold=threshold)
            except AgreementError:
                continue
    return rocs


def _error_correlations(
    values: pd.DataFrame, pairs: list[tuple[str, str]], subsets: dict[str, pd.Index], confidence
) -> pd.DataFrame:
    """:func:`error_correlation` of every two methods compared with the same ``a``."""
    frames = [
        error_correlation(values, a, m1, m2, subsets=subsets, confidence=confidence)
        for a, m1, m2 in compared_with_same(pairs)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
