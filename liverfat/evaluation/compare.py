"""Method-comparison tables from predictions tables alone.

The inputs are predictions tables (a reference or "truth" table is just another one, e.g. with
method ``reference``), a list of *pairs* ``a:b`` of method names (``a`` is the truth, ``b`` is
compared against it: bias is mean(b - a)) and named *subsets* of subject ids (e.g. the splits of
a manifest). The output is the method-comparison table of the UK Biobank liver-fat study: one row
per subset and pair with N, MAE, R², limits of agreement, r, ICC, ROC-AUC, sensitivity and
specificity (:func:`comparison_table`, laid out by :func:`published_layout`), plus the
correlation of two methods' errors against a reference, the top outliers of each pair and
correlations with covariates. Nothing here knows which engine wrote a table.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from liverfat.data.atomic import atomic_path, write_text_atomic
from liverfat.data.predictions import PredictionsTable
from liverfat.evaluation.agreement import (
    AgreementError,
    agreement,
    bland_altman,
    correlations,
    paired,
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

#: Name of the subset holding every subject, used when no subsets are given.
ALL = "all"


class ComparisonError(AgreementError):
    """A comparison that cannot be made (unknown method, target or subset; nothing to compare)."""


# Inputs ------------------------------------------------------------------------------------------
def as_table(tables: PredictionsTable | Sequence[PredictionsTable]) -> PredictionsTable:
    """One predictions table from one or several (a method may appear in only one of them)."""
    if isinstance(tables, PredictionsTable):
        return tables
    return PredictionsTable.concat(list(tables))


def value_table(
    tables: PredictionsTable | Sequence[PredictionsTable],
    target: str,
    *,
    include_flagged: bool = False,
) -> pd.DataFrame:
    """Values of every method for ``target`` side by side: index subject_id, one column per method.

    Failed rows, and flagged rows unless ``include_flagged``, are NaN, like subjects a method
    never wrote. Values keep the target's unit (PDFF in %).
    """
    table = as_table(tables)
    frame = table.frame
    if target not in set(frame["target"]):
        raise ComparisonError(
            f"no predictions for target {target!r} (have {', '.join(table.targets) or 'none'})"
        )
    keep = ("ok", "flagged") if include_flagged else ("ok",)
    rows = frame[frame["target"] == target]
    methods = sorted(rows["method"].unique())
    usable = rows[rows["status"].isin(keep)]
    wide = usable.pivot(index="subject_id", columns="method", values="value")
    subjects = pd.Index(sorted(rows["subject_id"].unique()), name="subject_id")
    wide = wide.reindex(index=subjects, columns=methods).astype(float)
    wide.columns.name = None
    return wide


def coverage(
    tables: PredictionsTable | Sequence[PredictionsTable],
    target: str,
    *,
    subjects: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Rows per method by status, and subjects each method wrote nothing for.

    Parameters
    ----------
    subjects:
        The cohort (default: every subject any method wrote a row for).

    Returns
    -------
    pandas.DataFrame
        Indexed by method: ``n_subjects``, ``n_ok``, ``n_flagged``, ``n_failed``, ``n_missing``.
    """
    frame = as_table(tables).frame
    frame = frame[frame["target"] == target]
    cohort = pd.Index(sorted(set(frame["subject_id"]) if subjects is None else set(subjects)))
    rows = []
    for method in sorted(frame["method"].unique()):
        sel = frame[(frame["method"] == method) & frame["subject_id"].isin(cohort)]
        counts = sel["status"].value_counts()
        rows.append(
            {
                "method": method,
                "n_subjects": len(cohort),
                "n_ok": int(counts.get("ok", 0)),
                "n_flagged": int(counts.get("flagged", 0)),
                "n_failed": int(counts.get("failed", 0)),
                "n_missing": int(len(cohort) - sel["subject_id"].nunique()),
            }
        )
    columns = ["method", "n_subjects", "n_ok", "n_flagged", "n_failed", "n_missing"]
    return pd.DataFrame(rows, columns=columns).set_index("method")


def failures(tables: PredictionsTable | Sequence[PredictionsTable], target: str) -> pd.DataFrame:
    """The rows of ``target`` that are not ``ok`` (flagged or failed), with their messages."""
    frame = as_table(tables).frame
    out = frame[(frame["target"] == target) & (frame["status"] != "ok")]
    return out[["subject_id", "method", "status", "value", "message"]].reset_index(drop=True)


def parse_pair(text: str) -> tuple[str, str]:
    """``"reference:network"`` -> ``("reference", "network")``."""
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ComparisonError(f"a pair is two different method names as A:B, got {text!r}")
    return parts[0], parts[1]


def default_pairs(methods: Sequence[str], reference: str | None) -> list[tuple[str, str]]:
    """``reference`` against every other method, then every pair of the other methods."""
    others = [m for m in methods if m != reference]
    pairs = [(reference, m) for m in others] if reference is not None else []
    return pairs + list(itertools.combinations(others, 2))


def _check_pairs(values: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> None:
    if not pairs:
        raise ComparisonError("no pair of methods to compare")
    known = set(values.columns)
    unknown = sorted({m for pair in pairs for m in pair} - known)
    if unknown:
        raise ComparisonError(
            f"unknown method(s) {', '.join(unknown)} (tables have {', '.join(values.columns)})"
        )


def _subsets(
    values: pd.DataFrame, subsets: Mapping[str, Iterable[str]] | None
) -> dict[str, pd.Index]:
    if not subsets:
        return {ALL: values.index}
    return {name: pd.Index([str(s) for s in ids]) for name, ids in subsets.items()}


def _pair_values(
    values: pd.DataFrame, a: str, b: str, ids: pd.Index
) -> tuple[pd.Series, pd.Series]:
    sub = values.reindex(ids)
    return sub[a], sub[b]


# The comparison table -----------------------------------------------------------------------------
def comparison_table(
    values: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    *,
    subsets: Mapping[str, Iterable[str]] | None = None,
    threshold: float = STEATOSIS_THRESHOLD_PCT,
    icc_form: str = "ICC(2,1)",
    mape_floor: float = 1.0,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per subset and pair: agreement and steatosis classification of b against a.

    Parameters
    ----------
    values:
        :func:`value_table` (subjects x methods, target unit).
    pairs:
        ``(a, b)`` method names; ``a`` is the truth for classification and R².
    subsets:
        Name -> subject ids (default one subset :data:`ALL` of every subject).
    threshold:
        Steatosis cut-off (%) for ROC-AUC, sensitivity, specificity, accuracy and precision.
    icc_form, mape_floor, confidence:
        See :func:`~liverfat.evaluation.agreement.agreement`.
    n_boot, seed:
        Subject-level bootstrap replicates and seed for the classification intervals.

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
    _check_pairs(values, pairs)
    rows = []
    for subset, ids in _subsets(values, subsets).items():
        for a, b in pairs:
            va, vb = _pair_values(values, a, b, ids)
            agree = agreement(
                va, vb, icc_form=icc_form, mape_floor=mape_floor, confidence=confidence
            )
            cls = classification_metrics(
                va, vb, threshold=threshold, n_boot=n_boot, seed=seed, confidence=confidence
            )
            notes = [n for n in (agree.pop("note"), cls.pop("note")) if n]
            cls.pop("n")
            row = {"subset": subset, "pair": f"{a}:{b}", "method_a": a, "method_b": b}
            row.update(agree)
            row.update(cls)
            row["note"] = "; ".join(dict.fromkeys(notes))
            rows.append(row)
    return pd.DataFrame(rows)


#: Columns of the published table, in order (see :func:`published_layout`).
PUBLISHED_COLUMNS = (
    "Subset",
    "Pair",
    "N",
    "MAE",
    "R²",
    "LoA",
    "r",
    "ICC",
    "ROC-AUC",
    "Sensitivity",
    "Specificity",
)


def published_layout(table: pd.DataFrame, *, decimals: int = 3) -> pd.DataFrame:
    """The comparison table laid out as in the UK Biobank liver-fat study, as text cells.

    One row per subset and pair, columns :data:`PUBLISHED_COLUMNS`. LoA is ``bias ± half-width``
    (1.96 SD); MAE and LoA are in the target unit, the rest dimensionless. Undefined values are
    shown as ``n/a`` (the ``note`` column of :func:`comparison_table` says why).
    """

    def fmt(value: float) -> str:
        return f"{value:.{decimals}f}" if np.isfinite(value) else "n/a"

    rows = []
    for _, row in table.iterrows():
        half = (row["loa_upper"] - row["loa_lower"]) / 2.0
        loa = f"{row['bias']:.{decimals}f} ± {half:.{decimals}f}" if np.isfinite(half) else "n/a"
        rows.append(
            {
                "Subset": row["subset"],
                "Pair": f"{row['method_a']} vs {row['method_b']}",
                "N": str(int(row["n"])),
                "MAE": fmt(row["mae"]),
                "R²": fmt(row["r2"]),
                "LoA": loa,
                "r": fmt(row["r"]),
                "ICC": fmt(row["icc"]),
                "ROC-AUC": fmt(row["auc"]),
                "Sensitivity": fmt(row["sensitivity"]),
                "Specificity": fmt(row["specificity"]),
            }
        )
    return pd.DataFrame(rows, columns=list(PUBLISHED_COLUMNS))


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a frame of text cells (no index)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body]) + "\n"


def to_latex(frame: pd.DataFrame, *, caption: str = "", label: str = "") -> str:
    """A ``tabular`` (booktabs) LaTeX table of a frame of text cells, special characters escaped."""

    special = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "±": r"$\pm$",
        "²": r"$^2$",
    }

    def esc(text: object) -> str:
        return "".join(special.get(char, char) for char in str(text))

    lines = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{esc(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\begin{tabular}{" + "l" * 2 + "r" * (len(frame.columns) - 2) + "}")
    lines.append(r"\toprule")
    lines.append(" & ".join(esc(c) for c in frame.columns) + r" \\")
    lines.append(r"\midrule")
    for row in frame.itertuples(index=False):
        lines.append(" & ".join(esc(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


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
    _check_pairs(values, [(reference, method_a), (reference, method_b)])
    rows = []
    for subset, ids in _subsets(values, subsets).items():
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
        row.update(
            dict.fromkeys(
                (
                    "r",
                    "r_lower",
                    "r_upper",
                    "r_p",
                    "rho",
                    "rho_p",
                    "bias",
                    "loa_lower",
                    "loa_upper",
                ),
                np.nan,
            )
        )
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


def top_outliers(
    values: pd.DataFrame,
    pair: tuple[str, str],
    *,
    n: int = 10,
    subset: Iterable[str] | None = None,
) -> pd.DataFrame:
    """The ``n`` subjects where ``b`` differs most from ``a``, with every method's value.

    Returns
    -------
    pandas.DataFrame
        ``rank``, ``subject_id``, ``difference`` (b - a, target unit), then one column per
        method (NaN where a method has no usable value), largest ``|difference|`` first.
    """
    a, b = pair
    _check_pairs(values, [pair])
    sub = values if subset is None else values.reindex(pd.Index([str(s) for s in subset]))
    diff = (sub[b] - sub[a]).dropna()
    order = diff.abs().sort_values(ascending=False, kind="mergesort").index[:n]
    out = sub.loc[order].copy()
    out.insert(0, "difference", diff.loc[order])
    out = out.reset_index().rename(columns={"index": "subject_id"})
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


# Covariates ---------------------------------------------------------------------------------------
def probable_reference_errors(
    values: pd.DataFrame,
    a: str,
    b: str,
    reference: str,
    *,
    agree_pct: float = 2.0,
    disagree_pct: float = 4.0,
) -> pd.DataFrame:
    """Subjects where methods ``a`` and ``b`` agree but both disagree with ``reference``.

    Two independent methods that agree with each other (``|a - b| <= agree_pct``) while both
    miss the reference by at least ``disagree_pct`` on the same side point at the reference
    measurement, not the methods (the UK Biobank liver-fat study found ten such subjects).

    Parameters
    ----------
    values:
        :func:`value_table` (subjects x methods), in the target's unit.

    Returns
    -------
    pandas.DataFrame
        Indexed by subject_id: the three values, ``error_a``, ``error_b`` (method minus
        reference) and ``a_minus_b``, sorted by the smaller absolute error, largest first.
    """
    for method in (a, b, reference):
        if method not in values.columns:
            raise ComparisonError(f"unknown method {method!r} (have {', '.join(values.columns)})")
    frame = values[[reference, a, b]].dropna()
    error_a = frame[a] - frame[reference]
    error_b = frame[b] - frame[reference]
    flagged = (
        ((frame[a] - frame[b]).abs() <= agree_pct)
        & (np.minimum(error_a.abs(), error_b.abs()) >= disagree_pct)
        & (np.sign(error_a) == np.sign(error_b))
    )
    out = frame[flagged].assign(
        error_a=error_a[flagged], error_b=error_b[flagged], a_minus_b=(frame[a] - frame[b])[flagged]
    )
    order = np.minimum(out["error_a"].abs(), out["error_b"].abs()).sort_values(ascending=False)
    return out.loc[order.index]


def encode_covariates(covariates: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Numeric covariate columns, two-level text columns (e.g. sex) coded 0/1.

    Returns the numeric frame (index subject_id as text) and per column a note on its coding
    (``""`` for numeric columns). Text columns with more than two levels are dropped.
    """
    numeric = {}
    coding: dict[str, str] = {}
    for column in covariates.columns:
        series = covariates[column]
        as_number = pd.to_numeric(series, errors="coerce")
        text = series.astype("string").str.strip().replace("", pd.NA)
        if as_number.notna().sum() == text.notna().sum() and as_number.notna().any():
            numeric[column] = as_number.astype(float)
            coding[column] = ""
            continue
        levels = sorted(text.dropna().unique())
        if len(levels) == 2:
            numeric[column] = text.map({levels[0]: 0.0, levels[1]: 1.0}).astype(float)
            coding[column] = f"{levels[0]}=0, {levels[1]}=1"
    frame = pd.DataFrame(numeric, index=covariates.index)
    frame.index = frame.index.astype(str)
    return frame, coding


def covariate_correlations(
    values: pd.DataFrame,
    covariates: pd.DataFrame,
    *,
    methods: Sequence[str] | None = None,
    quantity: str = "value",
    grade_thresholds: Sequence[float] = STEATOSIS_GRADE_THRESHOLDS_PCT,
    by: str | None = None,
) -> pd.DataFrame:
    """Spearman correlation of each method's values (or grades) with each covariate.

    Parameters
    ----------
    values:
        :func:`value_table`.
    covariates:
        Index subject_id, one column per covariate in its own unit (age in years, BMI in
        kg/m², ...); two-level text columns are coded 0/1 (:func:`encode_covariates`).
    methods:
        Methods to correlate (default: every column of ``values``).
    quantity:
        ``"value"`` (the target, e.g. PDFF in %) or ``"grade"`` (steatosis grade from
        ``grade_thresholds``).
    by:
        A covariate column to stratify by (e.g. ``"sex"``): one row per stratum besides the
        pooled one; the column itself is then not correlated.

    Returns
    -------
    pandas.DataFrame
        ``method``, ``covariate``, ``stratum`` (``"all"`` or ``"<by>=<level>"``), ``n``,
        ``rho``, ``p`` and ``note`` (why rho is NaN, or the covariate's coding).
    """
    if quantity not in ("value", "grade"):
        raise ComparisonError(f"quantity must be 'value' or 'grade', got {quantity!r}")
    chosen = list(values.columns) if methods is None else list(methods)
    unknown = [m for m in chosen if m not in values.columns]
    if unknown or not chosen:
        raise ComparisonError(f"unknown or no method(s) to correlate: {', '.join(unknown)}")
    cov = covariates.copy()
    cov.index = cov.index.astype(str)
    strata: list[tuple[str, pd.Index]] = [("all", cov.index)]
    if by is not None:
        if by not in cov.columns:
            raise ComparisonError(f"no covariate {by!r} to stratify by (have {', '.join(cov)})")
        levels = cov[by].astype("string").str.strip().replace("", pd.NA)
        for level in sorted(levels.dropna().unique()):
            strata.append((f"{by}={level}", cov.index[(levels == level).to_numpy()]))
        cov = cov.drop(columns=[by])
    encoded, coding = encode_covariates(cov)
    rows = []
    for method in chosen:
        series = values[method]
        if quantity == "grade":
            finite = series.dropna()
            series = pd.Series(
                steatosis_grade(finite.to_numpy(), grade_thresholds).astype(float),
                index=finite.index,
            )
        for column in encoded.columns:
            for stratum, ids in strata:
                x, y = paired(series, encoded[column].reindex(ids))
                row = {
                    "method": method,
                    "covariate": column,
                    "stratum": stratum,
                    "n": int(x.size),
                    "rho": np.nan,
                    "p": np.nan,
                }
                if x.size < 3:
                    note = f"N = {x.size} < 3"
                elif np.ptp(x) == 0 or np.ptp(y) == 0:
                    note = "constant values: rho undefined"
                else:
                    sr = stats.spearmanr(x, y)
                    row.update(rho=float(sr.statistic), p=float(sr.pvalue))
                    note = coding[column]
                row["note"] = note
                rows.append(row)
    return pd.DataFrame(rows, columns=["method", "covariate", "stratum", "n", "rho", "p", "note"])


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
    _check_pairs(values, pairs)
    rows, matrices = [], {}
    for subset, ids in _subsets(values, subsets).items():
        for a, b in pairs:
            va, vb = _pair_values(values, a, b, ids)
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
    target, unit:
        The target compared and its unit (``"%"`` for PDFF).
    values:
        :func:`value_table` (subjects x methods).
    pairs, subsets:
        The pairs ``(a, b)`` and subsets (name -> subject ids) compared.
    table:
        :func:`comparison_table`.
    coverage, failures:
        Per method row counts by status, and the non-ok rows.
    error_correlations:
        :func:`error_correlation` for every two methods compared with the same ``a``.
    outliers:
        Per pair ``"a:b"``, :func:`top_outliers` over all subjects.
    grading, confusions:
        :func:`grading_table`.
    rocs:
        ROC by ``(subset, pair)`` where both classes occur.
    covariates:
        :func:`covariate_correlations` (None without covariates).
    settings:
        The options used.
    """

    target: str
    unit: str
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
    settings: dict[str, Any] = field(default_factory=dict)

    def published(self) -> pd.DataFrame:
        """:func:`published_layout` of the comparison table."""
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
    by: str | None = None,
    include_flagged: bool = False,
    threshold: float = STEATOSIS_THRESHOLD_PCT,
    grade_thresholds: Sequence[float] = STEATOSIS_GRADE_THRESHOLDS_PCT,
    icc_form: str = "ICC(2,1)",
    mape_floor: float = 1.0,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    top_n: int = 10,
    unit: str = "%",
) -> Comparison:
    """Every comparison of the methods in ``tables`` for one target.

    Parameters
    ----------
    tables:
        Predictions tables, the reference ("truth") table among them.
    target:
        The target compared (e.g. ``liver_pdff_pct``).
    pairs:
        ``(a, b)`` pairs; default :func:`default_pairs` around ``reference``.
    reference:
        The reference method's name (default: the first ``a`` of ``pairs``, else a method
        named ``reference``).
    subsets:
        Name -> subject ids (default all subjects).
    covariates, by:
        For :func:`covariate_correlations` (values of every method), stratified by ``by``.
    Other parameters:
        As in :func:`comparison_table` and :func:`grading_table`; ``top_n`` outliers per pair.
    """
    values = value_table(tables, target, include_flagged=include_flagged)
    methods = list(values.columns)
    if reference is None:
        reference = pairs[0][0] if pairs else ("reference" if "reference" in methods else None)
    if pairs is None:
        pairs = default_pairs(methods, reference)
    pairs = [tuple(p) for p in pairs]
    _check_pairs(values, pairs)
    subset_ids = _subsets(values, subsets)
    table = comparison_table(
        values,
        pairs,
        subsets=subset_ids,
        threshold=threshold,
        icc_form=icc_form,
        mape_floor=mape_floor,
        n_boot=n_boot,
        seed=seed,
        confidence=confidence,
    )
    grading, confusions = grading_table(
        values, pairs, subsets=subset_ids, thresholds=grade_thresholds
    )
    rocs: dict[tuple[str, str], Roc] = {}
    for subset, ids in subset_ids.items():
        for a, b in pairs:
            va, vb = _pair_values(values, a, b, ids)
            try:
                rocs[(subset, f"{a}:{b}")] = roc_analysis(va, vb, threshold=threshold)
            except AgreementError:
                continue
    correlations = []
    for a in dict.fromkeys(p[0] for p in pairs):
        compared = [b for x, b in pairs if x == a]
        for m1, m2 in itertools.combinations(compared, 2):
            correlations.append(
                error_correlation(values, a, m1, m2, subsets=subset_ids, confidence=confidence)
            )
    cov = None
    if covariates is not None and len(covariates.columns):
        cov = covariate_correlations(values, covariates, by=by, grade_thresholds=grade_thresholds)
    cohort = sorted(set().union(*[set(i) for i in subset_ids.values()]))
    return Comparison(
        target=target,
        unit=unit,
        values=values,
        pairs=list(pairs),
        subsets=subset_ids,
        table=table,
        coverage=coverage(tables, target, subjects=cohort),
        failures=failures(tables, target),
        error_correlations=pd.concat(correlations, ignore_index=True)
        if correlations
        else pd.DataFrame(),
        outliers={f"{a}:{b}": top_outliers(values, (a, b), n=top_n) for a, b in pairs},
        grading=grading,
        confusions=confusions,
        rocs=rocs,
        covariates=cov,
        settings={
            "reference": reference,
            "threshold_pct": float(threshold),
            "grade_thresholds_pct": [float(t) for t in grade_thresholds],
            "icc_form": icc_form,
            "mape_floor": float(mape_floor),
            "n_boot": int(n_boot),
            "seed": int(seed),
            "confidence": float(confidence),
            "include_flagged": bool(include_flagged),
            "top_n": int(top_n),
        },
    )
