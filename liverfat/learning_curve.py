"""A study's learning curves: how many referenced subjects each method needs.

The study option ``learning_curve: {sizes: [25, 50, 100, 200], repeats: 3}`` holds out one
fixed part of the training split's subjects with a reference (``held_out_fraction``, default
0.2; seeded, stratified on steatosis at 5.5 %) that no fit ever sees. For each repeat, the rest
(the pool) is put in a seeded order, and size N takes its first N subjects, so a repeat's
subsets are nested. Each engine (``engines:``, default all) is fitted on each subset through the
study's own by-name construction and predicts the held-out part, which is scored against the
study's truth table when it has one (the phantom's), else against the reference: MAE and R² from
:mod:`liverfat.evaluation.curves`. Every engine keeps the study's ``engines/NAME/`` as its
``work_dir``, so formats, features and registrations are shared with its other stages.

Each (engine, repeat, size) cell writes its predictions atomically with a fingerprint
(``learning_curve/predictions/NAME.rR.nN.csv``); a rerun skips finished cells. Sizes beyond the
pool are refused before any work starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from liverfat.data.atomic import write_json_atomic, write_text_atomic
from liverfat.data.fingerprint import fingerprint
from liverfat.data.folds import held_out_subjects, subsample_orders
from liverfat.data.manifest import Manifest
from liverfat.data.predictions import PredictionsTable
from liverfat.errors import LiverfatError
from liverfat.study import (
    TRUTH,
    EngineStage,
    Study,
    StudyError,
    make_engine,
    method_rows,
    run_stage,
    training_reference,
)

KEYS = ("sizes", "repeats", "held_out_fraction", "seed", "engines")


@dataclass(frozen=True)
class LearningCurve:
    """The ``learning_curve:`` option of a study file, validated."""

    sizes: tuple[int, ...]  # increasing training sizes (subjects with a reference)
    repeats: int
    held_out_fraction: float
    seed: int
    engines: tuple[str, ...]  # the study engines that get a curve


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_learning_curve(
    raw: Any, path: Path, engines: Sequence[str], default_seed: int
) -> LearningCurve:
    """Validate a study file's ``learning_curve`` mapping (one-line :class:`StudyError`)."""
    where = f"{path}: learning_curve"
    if not isinstance(raw, dict):
        raise StudyError(f"{where} is a mapping, e.g. {{sizes: [25, 50, 100], repeats: 3}}")
    unknown = set(raw) - set(KEYS)
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    sizes = raw.get("sizes")
    if not isinstance(sizes, list) or not sizes or any((_int(n) or 0) < 1 for n in sizes):
        raise StudyError(f"{where}: sizes is a non-empty list of positive integers, got {sizes!r}")
    if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
        raise StudyError(f"{where}: sizes must be increasing and unique, got {sizes}")
    repeats = _int(raw.get("repeats", 3))
    if repeats is None or repeats < 1:
        raise StudyError(f"{where}: repeats is an integer >= 1, got {raw.get('repeats')!r}")
    fraction = raw.get("held_out_fraction", 0.2)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise StudyError(f"{where}: held_out_fraction is between 0 and 1, got {fraction!r}")
    seed = _int(raw.get("seed", default_seed))
    if seed is None or seed < 0:
        raise StudyError(f"{where}: seed is an integer >= 0, got {raw.get('seed', default_seed)!r}")
    chosen = raw.get("engines", list(engines))
    if isinstance(chosen, str):
        chosen = [chosen]
    if not isinstance(chosen, list) or not chosen:
        raise StudyError(f"{where}: engines is a non-empty list of the study's engines")
    for name in chosen:
        if name not in engines:
            have = ", ".join(engines)
            raise StudyError(f"{where}: unknown engine {name!r} (the study has {have})")
    return LearningCurve(
        sizes=tuple(sizes),
        repeats=repeats,
        held_out_fraction=float(fraction),
        seed=seed,
        engines=tuple(str(n) for n in dict.fromkeys(chosen)),
    )


@dataclass(frozen=True)
class CurvePlan:
    """Who is held out, and each repeat's order of the pool (size N takes its first N)."""

    held_out: list[str]
    orders: list[list[str]]


def learning_curve_plan(study: Study, manifest: Manifest) -> CurvePlan:
    """The held-out part and the pool orders; refuses sizes larger than the pool."""
    spec = study.learning_curve
    reference, steatosis = training_reference(study, manifest)
    try:
        held_out = held_out_subjects(
            list(reference.index),
            spec.held_out_fraction,
            spec.seed,
            strata=steatosis,
            groups=manifest.participants(),  # a participant's visits on one side
        )
    except LiverfatError as exc:
        raise StudyError(f"{study.path}: learning_curve: {exc}") from exc
    pool = sorted(set(reference.index) - set(held_out))
    if spec.sizes[-1] > len(pool):
        raise StudyError(
            f"{study.path}: learning_curve size {spec.sizes[-1]} is larger than the "
            f"{len(pool)} training subjects left to draw from (split {study.train_split} has "
            f"{len(reference)} with a reference, {len(held_out)} held out); use sizes up to "
            f"{len(pool)}, a smaller held_out_fraction or a larger cohort"
        )
    return CurvePlan(held_out=held_out, orders=subsample_orders(pool, spec.repeats, spec.seed))


def _cell(
    study: Study,
    manifest: Manifest,
    stage: EngineStage,
    train_ids: list[str],
    held_out: list[str],
    repeat: int,
    log: Callable[[str], None],
) -> PredictionsTable:
    """One engine fitted on ``train_ids`` predicting ``held_out`` (reused when finished)."""
    work = study.out / "engines" / stage.name  # the engine's caches, shared with its stages
    size = len(train_ids)

    def fit_predict() -> PredictionsTable:
        engine = make_engine(stage, study, work)
        try:
            engine.fit(manifest.select(subject_ids=train_ids))
            table = engine.predict(manifest.select(subject_ids=held_out))
        except LiverfatError as exc:
            raise StudyError(
                f"learning curve of '{stage.name}' at N = {size} (repeat {repeat}): {exc}"
            ) from exc
        table.run["learning_curve"] = {
            "repeat": repeat,
            "n_train": size,
            "train": sorted(train_ids),
            "held_out": held_out,
        }
        return table

    key = {
        "engine": stage.engine,
        "settings": stage.settings,
        "seed": study.seed,
        "manifest": str(study.manifest),
        "target": study.target,
        "train": sorted(train_ids),
        "held_out": held_out,
        "stage": "learning_curve",
    }
    name = f"{stage.name}.r{repeat}.n{size}"
    return run_stage(study.out / "learning_curve", name, fingerprint(key), fit_predict, log)


def learning_curve_cells(
    study: Study,
    manifest: Manifest,
    plan: CurvePlan,
    truth: PredictionsTable | None,
    log: Callable[[str], None],
) -> pd.DataFrame:
    """Run (or reuse) every cell; one row per method, size and repeat (``CELL_COLUMNS``)."""
    from liverfat.evaluation.curves import CELL_COLUMNS, curve_cell
    from liverfat.evaluation.values import value_table

    spec = study.learning_curve
    against = truth.values(TRUTH, study.target) if truth is not None else None
    if against is None:
        against = manifest.target(study.target)
    against = against.reindex(plan.held_out)
    write_json_atomic(
        study.out / "learning_curve" / "subjects.json",
        {"held_out": plan.held_out, "orders": plan.orders, "sizes": list(spec.sizes)},
    )
    stages = {stage.name: stage for stage in study.engines}
    rows = []
    for name in spec.engines:
        for repeat, order in enumerate(plan.orders):
            for size in spec.sizes:
                subset = order[:size]
                table = _cell(study, manifest, stages[name], subset, plan.held_out, repeat, log)
                frame = method_rows(table, name, study.target)
                values = value_table(PredictionsTable(frame), study.target)
                for method in values.columns:
                    scores = curve_cell(against, values[method].reindex(plan.held_out))
                    rows.append({"method": method, "n_train": size, "repeat": repeat, **scores})
    return pd.DataFrame(rows, columns=list(CELL_COLUMNS))


def run_learning_curve(
    study: Study, manifest: Manifest, truth: PredictionsTable | None, log: Callable[[str], None]
) -> Any:
    """Every cell, then ``tables/learning_curve.csv`` (cells), ``learning_curve_summary.csv``
    (median and range over repeats) and ``figures/learning_curve.png`` (and ``.svg``); returns
    the report's section."""
    from liverfat.evaluation.curves import curve_summary
    from liverfat.evaluation.plots import learning_curve_plot
    from liverfat.evaluation.report import ExtraSection, FigureItem, write_figures

    spec = study.learning_curve
    plan = learning_curve_plan(study, manifest)
    cells = learning_curve_cells(study, manifest, plan, truth, log)
    summary = curve_summary(cells)
    tables = study.out / "tables"
    write_text_atomic(tables / "learning_curve.csv", cells.to_csv(index=False))
    write_text_atomic(tables / "learning_curve_summary.csv", summary.to_csv(index=False))
    against = TRUTH if truth is not None else "reference"
    figure = FigureItem(
        "learning_curve",
        f"MAE and R² on the held-out part against N ({against})",
        learning_curve_plot(summary, against=against),
    )
    write_figures({"learning_curve": [figure]}, study.out / "figures")
    log(f"[learning curve] {len(cells)} cell(s) -> {tables / 'learning_curve.csv'}")
    text = (
        f"Each engine fitted on N subjects with a reference drawn from split {study.train_split} "
        f"(N = {', '.join(map(str, spec.sizes))}; {spec.repeats} seeded repeats, nested within a "
        f"repeat), then scored against the {against} on one fixed held-out part of "
        f"{len(plan.held_out)} subjects (a {spec.held_out_fraction:g} fraction, stratified at "
        f"5.5 %, seed {spec.seed}) that no fit sees. Median and min-max over repeats; MAE in %."
    )
    return ExtraSection("Learning curves", text, summary.round(3), [figure])
