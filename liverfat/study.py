"""Studies: the three-way comparison of the UK Biobank liver-fat study, from one YAML file.

A study names a manifest, the engines with their settings, the target, the splits (A with
reference, B without, C a subset of B), the comparison pairs and subsets, an output folder and
an executor. :func:`run_study` runs the protocol stage by stage:

* each engine with ``cross_validate: true`` gives out-of-fold predictions on the training split
  (A), subject-level folds: one partition of the training subjects with a reference, drawn once
  per study (seeded, stratified on steatosis at 5.5 %) and handed to every engine, so the
  methods' out-of-fold predictions are paired by fold (``folds.json`` records it);
* each engine with ``predict_on`` splits is fitted on all of A and predicts those splits (the
  network predicts B; the atlas, whose linear calibration is fitted on A, predicts A and C);
* the comparison: every pair on every subset where both methods have values, plus every method
  against the truth table when one is given (the phantom's), with tables, figures and an HTML
  report;
* with a ``learning_curve`` option, each engine fitted on nested subsets of the training
  subjects and scored on one fixed held-out part (:mod:`liverfat.learning_curve`);
* with a ``repeatability`` option, each method's test-retest agreement on the participants
  scanned at two visits (:mod:`liverfat.study_repeatability`); with a ``participant_id``
  column, the folds keep a participant's visits together.

Every stage writes its predictions table atomically and a ``.done.json`` fingerprint of its
settings, liverfat's version and its source code; a rerun skips stages whose fingerprint
matches, and engines
themselves skip finished subjects and folds, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from liverfat.data.atomic import write_json_atomic, write_text_atomic
from liverfat.data.fingerprint import code_digest, fingerprint
from liverfat.data.folds import subject_folds
from liverfat.data.manifest import REPORTED_COVARIATES, Manifest, read_yaml_mapping
from liverfat.data.predictions import PredictionsTable, package_versions
from liverfat.errors import LiverfatError
from liverfat.evaluation.values import REFERENCE, reference_table
from liverfat.parallel import dask_scheduler
from liverfat.study_outputs import OUTPUTS_README
from liverfat.study_qc import QcOptions, parse_qc, scan_qc
from liverfat.study_repeatability import check_repeatability, parse_repeatability, run_repeatability
from liverfat.study_schema import study_problem

if TYPE_CHECKING:
    from liverfat.graders import GradingOptions
    from liverfat.learning_curve import LearningCurve
    from liverfat.study_repeatability import RepeatabilityOptions

#: Engine aliases; any ``package.module:Class`` path also works (user engines).
ENGINES = {
    "deep": "liverfat.deep.engine:DeepEngine",
    "linear_baseline": "liverfat.baseline:LinearBaseline",
    "atlas": "liverfat.atlas.engine:AtlasEngine",
    "radiomics": "liverfat.radiomics.engine:RadiomicsEngine",
    "segmentation": "liverfat.segmentation.engine:SegmentationEngine",
}
EXECUTOR_KINDS = ("serial", "processes", "dask")
#: The keys a study file may have.
STUDY_KEYS = (
    "name",
    "manifest",
    "data_root",
    "target",
    "splits",
    "engines",
    "comparison",
    "truth",
    "out",
    "executor",
    "seed",
    "learning_curve",
    "grading",
    "qc",
    "repeatability",
)
TRUTH = "truth"


class StudyError(LiverfatError):
    """A study file that is malformed or names something that does not exist."""


@dataclass(frozen=True)
class EngineStage:
    """One engine of a study and what the protocol asks of it."""

    name: str  # the method name in every table (e.g. "network")
    engine: str  # alias or module:Class
    settings: dict[str, Any]
    cross_validate: bool
    folds: int
    predict_on: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    """A validated study file (paths resolved against the file's folder)."""

    path: Path
    name: str
    manifest: Path
    data_root: Path | None
    target: str
    train_split: str
    engines: tuple[EngineStage, ...]
    pairs: tuple[tuple[str, str, str], ...]  # (a, b, subset)
    review: tuple[str, ...]  # two methods whose agreement against the reference is reviewed
    truth: Path | None
    out: Path
    executor: dict[str, Any]
    seed: int
    learning_curve: LearningCurve | None = None  # liverfat.learning_curve
    grading: GradingOptions | None = None  # liverfat.graders
    qc: QcOptions | None = None  # liverfat.study_qc
    repeatability: RepeatabilityOptions | None = None  # liverfat.study_repeatability

    @classmethod
    def load(cls, path: str | Path, *, out: str | Path | None = None) -> Study:
        path = Path(path)
        if not path.is_file():
            raise StudyError(f"{path}: study file not found")
        raw = read_yaml_mapping(path, "a study file", error=StudyError)
        return cls._from_mapping(raw, path, out)

    @classmethod
    def _from_mapping(cls, raw: dict[str, Any], path: Path, out: str | Path | None) -> Study:
        base = path.parent
        unknown = set(raw) - set(STUDY_KEYS)
        if unknown:
            raise StudyError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("manifest", "engines"):
            if key not in raw:
                raise StudyError(f"{path}: missing '{key}'")
        problem = study_problem(raw)
        if problem:
            raise StudyError(f"{path}: {problem}")
        splits = raw.get("splits") or {}
        train = str(splits.get("train", "A"))
        engines = tuple(_engine_stage(name, entry, path) for name, entry in raw["engines"].items())
        if not engines:
            raise StudyError(f"{path}: 'engines' is empty")
        names = {e.name for e in engines}
        for reserved in (REFERENCE, TRUTH):
            if reserved in names:
                raise StudyError(f"{path}: '{reserved}' is reserved and cannot name an engine")
        comparison = raw.get("comparison") or {}
        pairs = tuple(_pair(text, path) for text in comparison.get("pairs", []))
        known = names | {REFERENCE}
        for a, b, subset in pairs:
            for method in (a, b):
                if method not in known:
                    raise StudyError(f"{path}: pair {a}:{b}@{subset} names unknown method {method}")
        review = tuple(str(m) for m in comparison.get("review") or ())
        if review and (len(review) != 2 or not set(review) <= names):
            raise StudyError(f"{path}: comparison review names two of the engines, got {review}")
        executor = dict(raw.get("executor") or {"kind": "serial"})
        if executor.get("kind", "serial") not in EXECUTOR_KINDS:
            raise StudyError(f"{path}: executor kind must be one of {', '.join(EXECUTOR_KINDS)}")
        seed = int(raw.get("seed", 0))
        curve = None
        if raw.get("learning_curve") is not None:
            from liverfat.learning_curve import parse_learning_curve

            stages = [e.name for e in engines]
            curve = parse_learning_curve(raw["learning_curve"], path, stages, seed)
        grading = None
        if "grading" in raw:
            from liverfat.graders import parse_grading

            grading = parse_grading(raw["grading"], f"{path}: study key")
        return cls(
            path=path,
            name=str(raw.get("name", path.stem)),
            manifest=(base / raw["manifest"]).resolve(),
            data_root=(base / raw["data_root"]).resolve() if raw.get("data_root") else None,
            target=str(raw.get("target", "liver_pdff_pct")),
            train_split=train,
            engines=engines,
            pairs=pairs,
            review=review,
            truth=(base / raw["truth"]).resolve() if raw.get("truth") else None,
            out=Path(out) if out is not None else (base / raw.get("out", "study_output")).resolve(),
            executor=executor,
            seed=seed,
            learning_curve=curve,
            grading=grading,
            qc=parse_qc(raw, f"{path}: study key"),
            repeatability=parse_repeatability(raw, f"{path}: study key"),
        )

    def load_manifest(self) -> Manifest:
        manifest = Manifest.load(self.manifest, data_root=self.data_root)
        if self.target not in manifest.targets:
            raise StudyError(
                f"{self.path}: target {self.target} is not in the manifest "
                f"(it has {', '.join(manifest.targets) or 'none'})"
            )
        for split in {self.train_split, *(s for e in self.engines for s in e.predict_on)}:
            manifest.in_split(split)  # raises on an unknown split
        for _, _, subset in self.pairs:
            manifest.in_split(subset)
        return manifest


def _engine_stage(name: str, entry: Any, path: Path) -> EngineStage:
    if not isinstance(entry, dict) or "engine" not in entry:
        raise StudyError(f"{path}: engine '{name}' needs at least 'engine: NAME'")
    unknown = set(entry) - {"engine", "settings", "cross_validate", "folds", "predict_on"}
    if unknown:
        raise StudyError(f"{path}: engine '{name}': unknown key(s) {', '.join(sorted(unknown))}")
    predict_on = entry.get("predict_on") or []
    predict_on = [predict_on] if isinstance(predict_on, str) else predict_on
    if not entry.get("cross_validate") and not predict_on:
        raise StudyError(
            f"{path}: engine '{name}' has nothing to do: give it cross_validate: true "
            "or predict_on: [SPLIT, ...]"
        )
    return EngineStage(
        name=str(name),
        engine=str(entry["engine"]),
        settings=dict(entry.get("settings") or {}),
        cross_validate=bool(entry.get("cross_validate", False)),
        folds=int(entry.get("folds", 10)),
        predict_on=tuple(str(s) for s in predict_on),
    )


def _pair(text: str, path: Path) -> tuple[str, str, str]:
    """``"reference:network@A"`` -> ``("reference", "network", "A")``."""
    pair, _, subset = str(text).partition("@")
    a, _, b = pair.partition(":")
    if not (a and b and subset) or a == b:
        raise StudyError(f"{path}: a pair is written A:B@SUBSET, got {text!r}")
    return a.strip(), b.strip(), subset.strip()


def engine_class(spec: str) -> type:
    """The engine class for an alias (:data:`ENGINES`) or a ``module:Class`` path."""
    target = ENGINES.get(spec, spec)
    module_name, _, class_name = target.partition(":")
    if not class_name:
        raise StudyError(
            f"unknown engine {spec!r}: use one of {', '.join(ENGINES)} or module:Class"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise StudyError(f"engine {spec!r} is not available ({exc})") from exc
    found = getattr(module, class_name, None)
    if found is None:
        raise StudyError(f"engine {spec!r}: {module_name} has no {class_name}")
    contract = ("fit", "predict", "cross_validate", "save", "load")
    if not isinstance(found, type) or not all(callable(getattr(found, m, None)) for m in contract):
        raise StudyError(
            f"engine {spec!r} is not an engine class (it needs {', '.join(contract)}; "
            "see docs/design.md)"
        )
    return found


def make_engine(stage: EngineStage, study: Study, work: Path | None = None) -> Any:
    """Instantiate a stage's engine, passing the study's executor, seed and (for resuming) a
    working folder for caches and per-subject results where the engine takes them."""
    cls = engine_class(stage.engine)
    accepted = inspect.signature(cls).parameters
    settings = dict(stage.settings)
    for key, value in (
        ("executor", study.executor.get("kind")),
        ("n_workers", study.executor.get("workers")),
        ("scheduler", study.executor.get("scheduler")),
        ("seed", study.seed),
        ("work_dir", None if work is None else str(work)),
    ):
        if key in accepted and key not in settings and value is not None:
            settings[key] = value
    unknown = set(settings) - set(accepted)
    if unknown:
        raise StudyError(
            f"engine '{stage.name}' ({stage.engine}) has no setting(s) {', '.join(sorted(unknown))}"
        )
    try:
        return cls(**settings)
    except (TypeError, ValueError) as exc:
        raise StudyError(f"engine '{stage.name}': {exc}") from exc


# Running ---------------------------------------------------------------------------------------


def method_rows(table: PredictionsTable, method: str, target: str) -> pd.DataFrame:
    """Rows of ``target`` under the study's method name (one name per engine stage; an engine
    writing several methods, e.g. one per radiomics model, gets ``NAME-METHOD``)."""
    frame = table.frame[table.frame["target"] == target].copy()
    produced = sorted(frame["method"].unique())
    frame["method"] = method + "-" + frame["method"] if len(produced) > 1 else method
    return frame


def run_stage(
    out: Path, stage_name: str, fingerprint: str, compute: Callable[[], PredictionsTable], log
) -> PredictionsTable:
    """Compute a stage's table unless a finished one with the same fingerprint and the same
    liverfat source (:func:`~liverfat.data.fingerprint.code_digest`: an engine's code changed
    within a release reruns its stages) exists. A table whose every row failed (a worker lost,
    the data unreadable) is written but not marked finished, so the next run computes it
    again."""
    csv = out / "predictions" / f"{stage_name}.csv"
    done = out / "predictions" / f"{stage_name}.done.json"
    marker = {"fingerprint": fingerprint, "code": code_digest()}
    finished = csv.is_file() and done.is_file()
    if finished and json.loads(done.read_text(encoding="utf-8")) == marker:
        log(f"[{stage_name}] finished earlier, reusing {csv}")
        return PredictionsTable.read(csv)
    log(f"[{stage_name}] running ...")
    start = time.perf_counter()
    table = compute()
    table.run.setdefault("timings_s", {})["stage"] = round(time.perf_counter() - start, 2)
    table.write(csv)
    if len(table.frame) and table.frame["status"].eq("failed").all():  # a rerun tries again
        log(f"[{stage_name}] every row failed ({table.frame['message'].iloc[0]}); not finished")
        return table
    write_json_atomic(done, marker)
    log(f"[{stage_name}] done in {time.perf_counter() - start:.1f} s -> {csv}")
    return table


def run_engine(stage: EngineStage, study: Study, manifest: Manifest, log) -> PredictionsTable:
    """The protocol for one engine: out-of-fold on the training split, then fit and predict."""
    train = manifest.select(split=study.train_split)
    base = {
        "engine": stage.engine,
        "settings": stage.settings,
        "seed": study.seed,
        "manifest": str(study.manifest),
        "train": study.train_split,
        "subjects": train.subject_ids,
    }
    parts = []
    # One working folder for both stages: formats, features and registrations are computed once.
    work = study.out / "engines" / stage.name
    if stage.cross_validate:
        partition = study_folds(study, manifest, stage.folds)

        def oof() -> PredictionsTable:
            engine = make_engine(stage, study, work)
            return engine.cross_validate(train, folds=partition, seed=study.seed)

        fp = fingerprint({**base, "folds": partition, "stage": "cv"})
        parts.append(run_stage(study.out, f"{stage.name}.cv", fp, oof, log))
    if stage.predict_on:

        def fit_predict() -> PredictionsTable:
            engine = make_engine(stage, study, work)
            engine.fit(train)
            wanted = set().union(*(manifest.select(split=s).subject_ids for s in stage.predict_on))
            table = engine.predict(manifest.select(subject_ids=wanted))
            if hasattr(engine, "save"):
                engine.save(work / "fitted")
            return table

        fp = fingerprint({**base, "predict_on": stage.predict_on, "stage": "fit"})
        parts.append(run_stage(study.out, f"{stage.name}.fit", fp, fit_predict, log))
    frames = [method_rows(part, stage.name, study.target) for part in parts]
    frame = pd.concat(frames, ignore_index=True)
    # A subject predicted both out-of-fold and after the final fit keeps its out-of-fold value.
    frame = frame.drop_duplicates(["subject_id", "method", "target"], keep="first")
    return PredictionsTable(frame, {"method": stage.name, "parts": [p.run for p in parts]})


def training_reference(study: Study, manifest: Manifest) -> tuple[pd.Series, dict[str, bool]]:
    """The training split's reference values (subjects without one left out) and each
    subject's steatosis at 5.5 %: what the study's folds and held-out parts are stratified on."""
    from liverfat.evaluation.classification import STEATOSIS_THRESHOLD_PCT

    reference = manifest.select(split=study.train_split).target(study.target).dropna()
    return reference, {s: bool(v >= STEATOSIS_THRESHOLD_PCT) for s, v in reference.items()}


def study_folds(study: Study, manifest: Manifest, folds: int) -> list[list[str]]:
    """The study's partition of its training subjects with a reference into ``folds`` test
    folds (seeded by the study's seed, stratified on the reference at the steatosis threshold),
    recorded in ``folds.json``; every engine with the same number of folds gets this one."""
    reference, steatosis = training_reference(study, manifest)
    groups = manifest.participants()  # a participant's visits share one fold
    partition = subject_folds(reference.index, folds, study.seed, strata=steatosis, groups=groups)
    path = study.out / "folds.json"
    recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if recorded.get(str(folds)) != partition:
        write_json_atomic(path, {**recorded, str(folds): partition})
    return partition


def run_study(study: Study, *, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) a study; return the path of its HTML report."""
    from liverfat.evaluation.compare import run_comparison
    from liverfat.evaluation.report import write_report
    from liverfat.evaluation.segmentation_report import segmentation_sections

    manifest = study.load_manifest()
    for stage in study.engines:  # constructors only validate: fail before any work starts
        make_engine(stage, study)
    check_repeatability(study, manifest)
    if study.learning_curve is not None:
        from liverfat.learning_curve import learning_curve_plan, run_learning_curve

        learning_curve_plan(study, manifest)  # refuses sizes beyond the pool before any work
    out = study.out
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(study.path, out / "study.yaml")
    write_json_atomic(out / "versions.json", package_versions())
    truth = None
    if study.truth is not None:
        truth = PredictionsTable.read(study.truth)
        truth = PredictionsTable(truth.frame[truth.frame["target"] == study.target], truth.run)
    manifest, qc = scan_qc(study, manifest, log)  # OUT/qc/: 'exclude' flags leave from here on
    tables = [reference_table(manifest, study.target)]
    extra = qc.sections()
    with dask_scheduler(study.executor.get("scheduler")):
        for stage in study.engines:
            tables.append(qc.mark(run_engine(stage, study, manifest, log)))
            tables[-1].write(out / "predictions" / f"{stage.name}.csv")
        if study.learning_curve is not None:
            extra.append(run_learning_curve(study, manifest, truth, log))
        if study.grading is not None:
            from liverfat.graders import run_grading_stage

            extra.append(run_grading_stage(study, manifest, log))
    qc.mark_outputs(out, log)  # the stage tables, the engines' own and the learning curve's
    if truth is not None:
        tables.append(truth)
    log("[compare] running ...")
    engine_methods = [t.methods for t in tables[1 : 1 + len(study.engines)]]
    pairs, subsets = comparison_plan(study, manifest, engine_methods, truth is not None)
    comparison = run_comparison(
        tables,
        study.target,
        pairs=sorted({(a, b) for a, b, _ in pairs}),
        reference=REFERENCE,
        subsets=subsets,
        covariates=_covariates(manifest),
        seed=study.seed,
    )
    comparison.table = _planned_rows(comparison.table, [(f"{a}:{b}", s) for a, b, s in pairs])
    comparison.write_tables(out / "tables")
    if study.review:
        extra.insert(0, outlier_review(study, manifest, comparison.values, log))
    extra += run_repeatability(study, manifest, comparison.values, log)
    # An engine whose run carries liver-mask metrics (a segmentation engine) gets its section.
    engine_tables = tables[1 : 1 + len(study.engines)]
    runs = {s.name: t.run for s, t in zip(study.engines, engine_tables, strict=True)}
    extra += segmentation_sections(runs, manifest)
    report = write_report(
        comparison,
        out / "report.html",
        title=f"liverfat study: {study.name}",
        sources=f"manifest {study.manifest}; study {study.path}",
        extra=extra,
    )
    write_text_atomic(out / "README.txt", OUTPUTS_README)
    log(f"[compare] done: report at {report}")
    return report


def outlier_review(study: Study, manifest: Manifest, values: pd.DataFrame, log) -> Any:
    """Probable reference errors on the training split, with each subject's coronal slice."""
    from liverfat.data.preview import coronal_slice
    from liverfat.evaluation.outliers import probable_reference_errors
    from liverfat.evaluation.plots import review_figure
    from liverfat.evaluation.report import ExtraSection, FigureItem

    a, b = study.review
    train = manifest.select(split=study.train_split).subject_ids
    suspects = probable_reference_errors(values.loc[values.index.isin(train)], a, b, REFERENCE)
    write_text_atomic(study.out / "tables" / "probable_reference_errors.csv", suspects.to_csv())
    figures = []
    for sid in suspects.index[:12]:
        try:
            preview = coronal_slice(manifest, sid)
        except LiverfatError as exc:
            log(f"[review] no image for {sid}: {exc}")
            continue
        row = suspects.loc[sid]
        caption = f"{sid}: reference {row[REFERENCE]:.1f} %, {a} {row[a]:.1f} %, {b} {row[b]:.1f} %"
        figure = review_figure(preview.image_pct, pixel_mm=preview.pixel_mm)
        figures.append(FigureItem(f"review_{sid}", caption, figure))
    log(f"[review] {len(suspects)} probable reference error(s)")
    text = (
        f"Subjects of split {study.train_split} where {a} and {b} agree within 2 % but both "
        "differ from the reference by at least 4 % on the same side: probable reference errors. "
        "Each is shown as the coronal fat-fraction slice through its liver (or body) centre."
    )
    return ExtraSection(
        f"Outlier review: {len(suspects)} probable reference errors",
        text,
        suspects.round(2).reset_index(),
        figures,
    )


def comparison_plan(
    study: Study, manifest: Manifest, methods: list[list[str]], with_truth: bool
) -> tuple[list[tuple[str, str, str]], dict[str, list[str]]]:
    """The (a, b, subset) rows of the comparison table and the subsets' subject ids.

    The study's own pairs come first; with a truth table, every method (and the reference) is
    also compared with the truth on each subset where it has values.
    """
    pairs = list(study.pairs)
    subset_names = sorted({s for _, _, s in pairs} | {study.train_split})
    if with_truth:
        names = [REFERENCE] + [m for group in methods for m in group]
        for method in names:
            for subset in subset_names:
                if method == REFERENCE and subset != study.train_split:
                    continue
                pairs.append((TRUTH, method, subset))
    subsets = {name: manifest.select(split=name).subject_ids for name in subset_names}
    return pairs, subsets


def _planned_rows(table: pd.DataFrame, plan: list[tuple[str, str]]) -> pd.DataFrame:
    """Only the planned (pair, subset) rows with subjects, in the plan's order."""
    order = {key: i for i, key in enumerate(plan)}
    rank = [order.get((p, s)) for p, s in zip(table["pair"], table["subset"], strict=True)]
    table = table.assign(_rank=rank).dropna(subset=["_rank"]).sort_values("_rank")
    table = table[table["n"] > 0]  # e.g. a cross-validated-only method on a split it never saw
    return table.drop(columns="_rank").reset_index(drop=True)


def _covariates(manifest: Manifest) -> pd.DataFrame | None:
    columns = [c for c in REPORTED_COVARIATES if c in manifest.subjects.columns]
    return manifest.covariates(columns) if columns else None
