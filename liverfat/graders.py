"""Graders by name, for the grading protocol (:mod:`liverfat.grading`): the boosted trees of the
radiomics engine and any classification network of the model registry on the same ROI patches.

Both arms read the same ROIs: :func:`shared_rois` places them once (the radiomics engine's
placement, written as ``<subject>_rois.json``) and returns a manifest whose ``rois`` column points
at them, unless the manifest brings its own. Engines never import each other; this module, like
the study runner, sits above them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from liverfat.data.fingerprint import fingerprint
from liverfat.data.manifest import Manifest
from liverfat.errors import LiverfatError
from liverfat.study_schema import stage_options

#: The boosted-tree models (:data:`liverfat.radiomics.models.MODELS`).
TREE_MODELS = ("adaboost", "gbdt", "xgboost")
#: Short names of networks: ``densenet`` is the published arm, a DenseNet sized for 16 x 16 ROIs.
NETWORK_ALIASES = {"densenet": "patch_densenet"}
#: The published table's rows.
DEFAULT_MODELS = (*TREE_MODELS, "densenet")


def network_names() -> list[str]:
    """Models that can take a network row: the aliases and the registry's classification task."""
    from liverfat.nn.registry import model_names

    return sorted({*NETWORK_ALIASES, *model_names("classification")})


def check_models(models: Sequence[str]) -> None:
    """One line naming the unknown models, before any work."""
    known = {*TREE_MODELS, *network_names()}
    unknown = [m for m in models if m not in known]
    if unknown:
        raise LiverfatError(
            f"unknown grading model(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
        )
    if len(set(models)) != len(models):
        raise LiverfatError(f"grading models are named twice: {list(models)}")


def shared_rois(
    manifest: Manifest,
    folder: str | os.PathLike[str],
    roi_settings: dict[str, Any],
    *,
    executor: str = "processes",
    n_workers: int | None = 2,
) -> tuple[Manifest, dict[str, str]]:
    """The manifest with a ``rois`` column for every subject, and the subjects whose ROIs could
    not be placed (subject -> one line).

    A manifest with its own ``rois`` column is returned as it is. Otherwise the ROIs are placed
    (:func:`liverfat.radiomics.review.write_subject_rois`, resumable) into a subfolder of
    ``folder`` named by the settings, and a derived manifest is written beside them.
    """
    if "rois" in manifest.subjects.columns:
        return manifest, {}
    from liverfat.radiomics.review import write_subject_rois
    from liverfat.radiomics.rois import RoiSettings

    settings = RoiSettings(**roi_settings)
    out = Path(folder) / f"rois-{fingerprint(asdict(settings), length=8)}"
    review = write_subject_rois(
        manifest, out, settings, executor=executor, n_workers=n_workers, progress="grade: ROIs"
    )
    paths = {sid: str(out / f"{sid}_rois.json") for sid in (*review.placed, *review.existing)}
    return manifest.with_paths("rois", paths, out / "manifest.yaml"), review.failures


def grader_factories(
    models: Sequence[str],
    *,
    target: str,
    grading: str | list[float],
    seed: int,
    work_dir: str | os.PathLike[str],
    tree_settings: dict[str, Any] | None = None,
    network_settings: dict[str, Any] | None = None,
) -> dict[str, Callable[[], Any]]:
    """Name -> factory of an unfitted grader, for :func:`liverfat.grading.run_grading`.

    Trees are :class:`~liverfat.radiomics.engine.RadiomicsEngine` classifiers (``tree_settings``:
    its keyword arguments; features cached in ``work_dir/features``); any other name is a
    :class:`~liverfat.deep.patch_grader.PatchGrader` with that registry model
    (``network_settings``: its keyword arguments; patches cached in ``work_dir/patches``).
    """
    check_models(models)
    common = {"target": target, "grading": grading, "seed": seed}
    factories: dict[str, Callable[[], Any]] = {}
    for model in models:
        if model in TREE_MODELS:
            from liverfat.radiomics.engine import RadiomicsEngine

            settings = {**(tree_settings or {}), **common, "work_dir": str(work_dir)}
            factories[model] = partial(
                RadiomicsEngine, **settings, model=model, task="classification"
            )
        else:
            from liverfat.deep.patch_grader import PatchGrader

            settings = {**(network_settings or {}), **common, "work_dir": str(work_dir)}
            factories[model] = partial(
                PatchGrader, **settings, model=NETWORK_ALIASES.get(model, model)
            )
    return factories


class GradingOptions(BaseModel):
    """What a grading run compares: a study file's ``grading:`` mapping (every key optional), or
    ``liverfat grade``'s options.

    ``rois`` are :class:`~liverfat.radiomics.rois.RoiSettings` fields (``n_rois``, ``n_right``,
    ``size`` in px, ``border_margin_mm``, ``outlier_mads``), shared by every model; ``trees`` and
    ``networks`` are keyword arguments of the radiomics engine and of the patch grader.
    """

    model_config = ConfigDict(extra="forbid")
    models: list[str] = list(DEFAULT_MODELS)
    scheme: str | list[float] = "histology"
    test_fraction: float = Field(0.3, gt=0, lt=1)
    folds: int = Field(5, ge=0)
    bootstrap: int = Field(1000, ge=1)
    rois: dict[str, Any] = {}
    trees: dict[str, Any] = {}
    networks: dict[str, Any] = {}


def grade(
    manifest: Manifest,
    out: str | os.PathLike[str],
    options: GradingOptions,
    *,
    target: str = "liver_pdff_pct",
    seed: int = 0,
    executor: str = "processes",
    n_workers: int | None = 2,
    log: Callable[[str], None] = print,
) -> Any:
    """``liverfat grade``: shared ROIs, every model through :func:`liverfat.grading.run_grading`,
    the tables written into ``out`` (working state in ``out/work``, so a rerun resumes). The
    trees get the ROI settings too: their augmentation stays inside that placement's liver pixels.
    """
    from liverfat.evaluation.grader import grading_scheme
    from liverfat.grading import run_grading

    check_models(options.models)
    scheme = grading_scheme(options.scheme)
    work = Path(out) / "work"
    placed, lost = shared_rois(manifest, work, options.rois, executor=executor, n_workers=n_workers)
    for message in lost.values():
        log(message)
    engine_rois = {("roi_size" if k == "size" else k): v for k, v in options.rois.items()}
    parallel = {"executor": executor, "n_workers": n_workers}
    factories = grader_factories(
        options.models,
        target=target,
        grading=options.scheme,
        seed=seed,
        work_dir=work,
        tree_settings={**engine_rois, **parallel, **options.trees},
        network_settings={**parallel, **options.networks},
    )
    result = run_grading(
        placed,
        factories,
        target=target,
        scheme=scheme,
        test_fraction=options.test_fraction,
        folds=options.folds,
        seed=seed,
        n_boot=options.bootstrap,
        baseline_models=[m for m in options.models if m in TREE_MODELS],
        work_dir=work,
        log=log,
    )
    said = set(lost)
    for failures in result.failures.values():  # one line per failed subject, not per model
        for sid, message in failures.items():
            if sid not in said:
                said.add(sid)
                log(message)
    result.settings.update(options.model_dump(include={"rois", "trees", "networks"}))
    result.write(out)
    return result


# The study stage ---------------------------------------------------------------------------------
def parse_grading(raw: Any, where: str) -> GradingOptions:
    """Grading options from a mapping (a study's ``grading:``, or the command's options), or one
    line that starts with ``where`` (e.g. ``study.yaml: study key``) and names the wrong key."""
    from liverfat.evaluation.grader import grading_scheme

    options = stage_options(GradingOptions, raw, where, "grading")
    try:
        check_models(options.models)
        grading_scheme(options.scheme)
    except LiverfatError as exc:
        raise LiverfatError(f"{where} grading: {exc}") from None
    return options


def run_grading_stage(study: Any, manifest: Manifest, log: Callable[[str], None]) -> Any:
    """The study's grading comparison on its training split, written to ``OUT/grading/``;
    returns the report's section (the table in the published layout and DeLong's test)."""
    from liverfat.evaluation.report import ExtraSection

    executor = study.executor.get("kind", "serial")
    result = grade(
        manifest.select(split=study.train_split),
        study.out / "grading",
        study.grading,
        target=study.target,
        seed=study.seed,
        executor="processes" if executor == "dask" else executor,
        n_workers=study.executor.get("workers") or 2,
        log=log,
    )
    split = result.split
    text = (
        f"Steatosis grades ({result.scheme.meaning}) from the liver ROIs of split "
        f"{study.train_split}: every model on one seeded train/test split ({len(split.train)} / "
        f"{len(split.test)} subjects, stratified on grade, seed {study.seed}) and "
        f"{len(split.folds)} subject-level folds of the training part ('training CV': out of "
        "fold). Trees and networks read the same ROIs; augmentation stays inside each fit's "
        "subjects. AUC with a seeded bootstrap 95 % CI, accuracy with Wilson's."
    )
    tables = (
        [("DeLong's test on the test set", result.delong.round(4))] if len(result.delong) else []
    )
    return ExtraSection("Steatosis grading", text, result.table, tables=tables)
