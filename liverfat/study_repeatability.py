"""Repeatability as a study stage: each method's test-retest agreement on repeat scans.

A study's ``repeatability: {visits: [2, 3]}`` key (default visits 2 and 3, UK Biobank's first
and repeat imaging visits) needs a manifest with ``participant_id`` and ``visit`` columns (the
phantom's ``--repeat-fraction``, UK Biobank ingestion); it is refused before any engine runs
otherwise. After the comparison it takes the study's values (each engine's table: out-of-fold
predictions on the training split when the engine cross-validates, whose grouped folds never
train on the participant being predicted, fitted-model predictions elsewhere; the reference; the
truth table when the study has one) and, for every participant with a usable value at both
visits, writes (:mod:`liverfat.evaluation.repeatability`):

* ``tables/repeatability.csv``: per method, then reference and truth, ``n_pairs``, wSD, RC,
  test-retest ICC(2,1) and Bland-Altman of the second visit minus the first, with intervals;
* ``tables/repeatability_pairs.csv``: the pairs themselves (method, participant, both values);
* ``figures/repeatability.png`` (and ``.svg``): one Bland-Altman panel per method;
* the report's "Repeatability" section.

It is recomputed on every run from the stored predictions (cheap), so it is always current.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, StrictInt, field_validator

from liverfat.data.atomic import write_text_atomic
from liverfat.data.manifest import PARTICIPANT_COLUMN, VISIT_COLUMN, Manifest
from liverfat.errors import LiverfatError
from liverfat.study_schema import stage_options


class RepeatabilityOptions(BaseModel):
    """A study's ``repeatability:`` key."""

    model_config = ConfigDict(extra="forbid")
    visits: tuple[StrictInt, StrictInt] = (2, 3)  # first, second (UK Biobank instances)

    @field_validator("visits")
    @classmethod
    def _distinct(cls, visits: tuple[int, int]) -> tuple[int, int]:
        if visits[0] == visits[1]:
            raise ValueError(f"the two visits must differ, got {list(visits)}")
        return visits


def parse_repeatability(raw: dict[str, Any], where: str) -> RepeatabilityOptions | None:
    """The study's ``repeatability:`` options (None without the key), or one line that starts
    with ``where`` (e.g. ``study.yaml: study key``) and names the wrong key."""
    if "repeatability" not in raw:
        return None
    return stage_options(RepeatabilityOptions, raw["repeatability"], where, "repeatability")


def check_repeatability(study: Any, manifest: Manifest) -> None:
    """Refuse a ``repeatability:`` study whose manifest cannot pair visits, before any work."""
    if study.repeatability is None:
        return
    missing = [c for c in (PARTICIPANT_COLUMN, VISIT_COLUMN) if c not in manifest.subjects]
    if missing:
        raise LiverfatError(
            f"{study.path}: repeatability needs the manifest's {' and '.join(missing)} "
            f"column(s) (repeat scans: `liverfat phantom --repeat-fraction`, UK Biobank ingestion)"
        )


def _ordered(columns: list[str], last: tuple[str, ...]) -> list[str]:
    """Methods first, then ``last`` (reference, truth) in that order where present."""
    return [c for c in columns if c not in last] + [c for c in last if c in columns]


def run_repeatability(
    study: Any, manifest: Manifest, values: pd.DataFrame, log: Callable[[str], None]
) -> list[Any]:
    """The stage (module docstring) on the study's ``values`` (subjects x methods, the
    comparison's); returns the report's section (none without a ``repeatability:`` key)."""
    options = study.repeatability
    if options is None:
        return []
    from liverfat.evaluation.plots import repeatability_plot
    from liverfat.evaluation.repeatability import MIN_PAIRS, table_of_pairs, visit_pairs
    from liverfat.evaluation.report import ExtraSection, FigureItem, write_figures
    from liverfat.evaluation.values import REFERENCE
    from liverfat.study import TRUTH

    participants, visits = manifest.participants() or {}, manifest.visits()
    values = values[_ordered(list(values.columns), (REFERENCE, TRUTH))]
    pairs = {m: visit_pairs(values[m], participants, visits, pair=options.visits) for m in values}
    table = table_of_pairs(pairs)
    tables = study.out / "tables"
    write_text_atomic(tables / "repeatability.csv", table.to_csv(index=False))
    long = pd.concat(pairs, names=["method"]) if pairs else pd.DataFrame(columns=["method"])
    write_text_atomic(tables / "repeatability_pairs.csv", long.to_csv())
    first, second = options.visits
    shown = {m: p for m, p in pairs.items() if len(p) >= MIN_PAIRS}
    figures = []
    if shown:
        figure = repeatability_plot(shown, visits=options.visits)
        figures.append(
            FigureItem("repeatability", f"Bland-Altman of visit {second} - visit {first}", figure)
        )
        write_figures({"repeatability": figures}, study.out / "figures")
    n_both = int(table["n_pairs"].max()) if len(table) else 0
    log(f"[repeatability] {n_both} participant(s) with visits {first} and {second}")
    return [ExtraSection("Repeatability", _text(first, second, n_both), _display(table), figures)]


def _text(first: int, second: int, n: int) -> str:
    return (
        f"Participants scanned at visits {first} and {second} (up to {n} pairs with a value at "
        "both): each method's predictions (out-of-fold on the training split, whose folds keep a "
        "participant's visits together), the reference where both visits have one, and the "
        "truth. wSD = sqrt(mean(d²)/2), d the difference between the visits: the SD of one "
        "measurement around the participant's own value (95 % chi-square interval); RC = 2.77 "
        "wSD: the difference between two visits that 95 % of participants stay within; ICC(2,1) "
        "(two-way random effects, absolute agreement, single measurement), so a systematic "
        "shift between visits counts against it as it does in wSD; bias and 95 % limits of "
        f"agreement of visit {second} - visit {first}. Differences in percentage points."
    )


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """The report's layout: each statistic with its interval, two decimals."""

    def ci(row: pd.Series, key: str, places: int = 2) -> str:
        if pd.isna(row[key]):
            return ""
        low, high = row[f"{key}_lower"], row[f"{key}_upper"]
        return f"{row[key]:.{places}f} ({low:.{places}f}, {high:.{places}f})"

    rows = []
    for _, row in table.iterrows():
        rows.append(
            {
                "method": row["method"],
                "pairs": int(row["n_pairs"]),
                "wSD (95% CI)": ci(row, "wsd"),
                "RC (95% CI)": ci(row, "rc"),
                "ICC(2,1) (95% CI)": ci(row, "icc", 3),
                "bias (95% CI)": ci(row, "bias"),
                "limits of agreement": ""
                if pd.isna(row["loa_lower"])
                else f"{row['loa_lower']:.2f} to {row['loa_upper']:.2f}",
                "note": row["note"],
            }
        )
    return pd.DataFrame(rows)
