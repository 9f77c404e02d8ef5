"""``liverfat radiomics rois | features | cv | fit | predict``, each on a manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from liverfat.data.manifest import Manifest
from liverfat.errors import ImageError, LiverfatError, subject_message
from liverfat.parallel import EXECUTORS, map_subjects
from liverfat.radiomics.models import GRADING_SCHEMES, MODELS, TASKS
from liverfat.radiomics.rois import RoiSettings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    radiomics = subparsers.add_parser(
        "radiomics", help="liver ROIs, pyradiomics features and boosted-tree grading/regression"
    )
    sub = radiomics.add_subparsers(dest="radiomics_command", metavar="ACTION", required=True)

    rois = sub.add_parser(
        "rois", help="place ROIs per subject; write JSON + overlay PNG for review"
    )
    _manifest_args(rois)
    rois.add_argument("--out", required=True, help="folder for <subject>_rois.json/.png (resumes)")
    _roi_args(rois)
    rois.set_defaults(func=rois_main)

    features = sub.add_parser("features", help="extract ROI features of every subject (cached)")
    _manifest_args(features)
    features.add_argument("--out", required=True, help="CSV of ROI feature rows")
    _engine_args(features)
    features.set_defaults(func=features_main)

    cv = sub.add_parser(
        "cv", help="train/test table (AUC, accuracy, 95%% CI) of the three models + CV predictions"
    )
    _manifest_args(cv)
    cv.add_argument("--out", required=True, help="output folder for the tables")
    cv.add_argument("--folds", type=int, default=5)
    cv.add_argument("--test-fraction", type=float, default=0.3)
    cv.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    cv.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for AUC CIs")
    cv.add_argument(
        "--truth", help="predictions CSV holding the true value (e.g. a phantom's truth table)"
    )
    _engine_args(cv)
    cv.set_defaults(func=cv_main)

    fit = sub.add_parser("fit", help="fit on subjects with a reference and save the engine")
    _manifest_args(fit)
    fit.add_argument("--split", help="only this split (e.g. A)")
    fit.add_argument("--out", required=True, help="folder for the saved engine")
    _engine_args(fit)
    fit.set_defaults(func=fit_main)

    predict = sub.add_parser("predict", help="predict every subject with a saved engine")
    _manifest_args(predict)
    predict.add_argument("--model", required=True, help="folder written by `radiomics fit`")
    predict.add_argument("--out", required=True, help="predictions CSV")
    predict.add_argument("--cache", help="feature cache folder")
    predict.add_argument("--executor", choices=EXECUTORS, default="processes")
    predict.add_argument("--workers", type=int, default=2)
    predict.set_defaults(func=predict_main)


def _manifest_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="dataset card (YAML) or a folder holding manifest.yaml")
    parser.add_argument("--data-root", help="folder image paths are relative to")


def _roi_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-rois", type=int, default=6)
    parser.add_argument("--n-right", type=int, default=4, help="ROIs in the right lobe")
    parser.add_argument("--roi-size", type=int, default=16, help="square side (pixels)")
    parser.add_argument("--border-margin-mm", type=float, default=5.0)
    parser.add_argument("--outlier-mads", type=float, default=3.0)
    parser.add_argument("--executor", choices=EXECUTORS, default="processes")
    parser.add_argument("--workers", type=int, default=2)


def _engine_args(parser: argparse.ArgumentParser) -> None:
    _roi_args(parser)
    parser.add_argument("--target", default="liver_pdff_pct")
    parser.add_argument("--task", choices=TASKS, default="regression")
    parser.add_argument("--model", choices=MODELS, default="xgboost")
    parser.add_argument(
        "--grading",
        default="mri_pdff",
        help=f"{', '.join(GRADING_SCHEMES)} or comma-separated cut-offs in %%",
    )
    parser.add_argument("--channels", nargs="+", default=["fat_fraction"])
    parser.add_argument("--augment", type=int, default=8, help="augmented copies per training ROI")
    parser.add_argument("--estimators", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--max-depth", type=int, default=3)
    parser.add_argument("--params", help="radiomics parameter file (default: liver_roi_v1.yaml)")
    parser.add_argument(
        "--cache", help="working folder with the feature cache (default: <out>/work)"
    )
    parser.add_argument("--seed", type=int, default=0)


def _engine_settings(args: argparse.Namespace, out: Path) -> dict:
    grading = args.grading
    if grading not in GRADING_SCHEMES:
        try:
            grading = [float(v) for v in grading.split(",")]
        except ValueError as exc:
            raise LiverfatError(
                f"--grading: {args.grading!r} is neither a scheme nor cut-offs"
            ) from exc
    return {
        "target": args.target,
        "task": args.task,
        "model": args.model,
        "grading": grading,
        "channels": tuple(args.channels),
        "n_rois": args.n_rois,
        "n_right": args.n_right,
        "roi_size": args.roi_size,
        "border_margin_mm": args.border_margin_mm,
        "outlier_mads": args.outlier_mads,
        "augment_copies": args.augment,
        "n_estimators": args.estimators,
        "learning_rate": args.learning_rate,
        "max_depth": args.max_depth,
        "params_file": args.params,
        "work_dir": args.cache or str(out / "work"),
        "executor": args.executor,
        "n_workers": args.workers,
        "seed": args.seed,
    }


def _load(args: argparse.Namespace) -> Manifest:
    return Manifest.load(args.manifest, data_root=args.data_root)


# rois -----------------------------------------------------------------------------------------
def _subject_rois(job: tuple[Manifest, RoiSettings, str]) -> str:
    from liverfat.radiomics.features import liver_array, subject_rois
    from liverfat.radiomics.rois import save_rois

    subject, settings, out = job
    sid = subject.subject_ids[0]
    try:
        liver = liver_array(subject, sid)
        if subject.has(sid, "water") or subject.has(sid, "in_phase"):
            dixon = subject.dixon(sid)
            reference = dixon.fat_fraction
            shown = sitk.GetArrayFromImage(dixon.fat_fraction).astype(float)
            intensities = [shown, sitk.GetArrayFromImage(dixon.water).astype(float)]
            channel = "fat_fraction (%) and water"
        else:  # a non-Dixon scan (e.g. CHAOS T2-SPIR): place on the image's own intensity
            reference = subject.read_image(sid, "image")
            shown = sitk.GetArrayFromImage(reference).astype(float)
            intensities = [shown]
            channel = "image"
        if shown.shape != liver.shape:
            raise ImageError(
                f"liver mask grid {liver.shape} differs from the image's {shown.shape}"
            )
        rois = subject_rois(subject, sid, intensities, liver, reference, settings)
    except ImageError as exc:
        raise ImageError(subject_message(sid, exc)) from exc
    save_rois(rois, out, sid, image=shown, liver=liver, extra={"placement_channels": channel})
    return sid


def rois_main(args: argparse.Namespace) -> int:
    manifest = _load(args)
    settings = RoiSettings(
        n_rois=args.n_rois,
        n_right=args.n_right,
        size=args.roi_size,
        border_margin_mm=args.border_margin_mm,
        outlier_mads=args.outlier_mads,
    )
    out = Path(args.out)
    todo = [sid for sid in manifest.subject_ids if not (out / f"{sid}_rois.json").is_file()]
    jobs = [(manifest.select(subject_ids=[sid]), settings, str(out)) for sid in todo]
    failed = 0
    for outcome in map_subjects(
        _subject_rois,
        jobs,
        executor=args.executor,
        n_workers=args.workers,
        progress="radiomics rois",
    ):
        if not outcome.ok:
            failed += 1
            print(outcome.error, file=sys.stderr)
    done = len(manifest) - failed
    print(
        f"ROIs of {done} of {len(manifest)} subjects in {out} "
        f"({len(manifest) - len(todo)} already there)"
    )
    return 1 if failed else 0


# features / fit / predict / cv ------------------------------------------------------------------
def features_main(args: argparse.Namespace) -> int:
    from liverfat.data.atomic import atomic_path
    from liverfat.radiomics.engine import RadiomicsEngine

    out = Path(args.out)
    engine = RadiomicsEngine(**_engine_settings(args, out.parent))
    rows, failures = engine.features(_load(args))
    for message in failures.values():
        print(message, file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        rows.to_csv(tmp, index=False, float_format="%.10g")
    n_features = len(
        [c for c in rows.columns if c not in ("subject_id", "roi", "augmentation", "lobe")]
    )
    print(
        f"{len(rows)} ROIs x {n_features} features of "
        f"{rows['subject_id'].nunique() if len(rows) else 0} "
        f"subjects -> {out} ({len(failures)} failed)"
    )
    return 1 if failures else 0


def fit_main(args: argparse.Namespace) -> int:
    from liverfat.radiomics.engine import RadiomicsEngine

    out = Path(args.out)
    manifest = _load(args)
    if args.split:
        manifest = manifest.select(split=args.split)
    engine = RadiomicsEngine(**_engine_settings(args, out)).fit(manifest)
    engine.save(out)
    for message in engine.failed_subjects_.values():
        print(message, file=sys.stderr)
    print(
        f"{args.model} {args.task} fitted on {len(engine.training_subjects_)} subjects "
        f"({len(engine.filter_.columns_)} features kept) -> {out}"
    )
    return 0


def predict_main(args: argparse.Namespace) -> int:
    from liverfat.radiomics.engine import RadiomicsEngine

    engine = RadiomicsEngine.load(args.model)
    engine.executor, engine.n_workers = args.executor, args.workers
    if args.cache:
        engine.work_dir = args.cache
    table = engine.predict(_load(args))
    path = table.write(args.out)
    failed = int((table.frame["status"] == "failed").sum())
    print(f"{len(table.frame)} predictions ({failed} failed) -> {path}")
    return 0


def cv_main(args: argparse.Namespace) -> int:
    from liverfat.data.predictions import PredictionsTable
    from liverfat.radiomics.engine import RadiomicsEngine
    from liverfat.radiomics.protocol import covariate_spearman, run_protocol

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _load(args)
    settings = _engine_settings(args, out)
    truth = None
    if args.truth:
        table = PredictionsTable.read(args.truth)
        truth = table.frame[table.frame["target"] == args.target].set_index("subject_id")["value"]
    result = run_protocol(
        manifest,
        models=args.models,
        test_fraction=args.test_fraction,
        seed=args.seed,
        truth=truth,
        n_boot=args.bootstrap,
        **{k: v for k, v in settings.items() if k != "seed"},
    )
    result.classification.to_csv(out / "classification.csv", index=False, float_format="%.4f")
    result.regression.to_csv(out / "regression.csv", index=False, float_format="%.4f")
    oof = RadiomicsEngine(**settings).cross_validate(manifest, folds=args.folds, seed=args.seed)
    oof.write(out / "cv_predictions.csv")
    engine = RadiomicsEngine(**settings)
    if engine.task == "classification":
        predicted = oof.frame.set_index("subject_id")["value"]
        spearman_pred = covariate_spearman(
            predicted.rename("grade"), manifest.subjects.set_index("subject_id")
        )
        spearman_pred.insert(0, "grade_from", "cv_prediction")
    else:
        spearman_pred = pd.DataFrame()
    spearman = pd.concat([result.spearman.assign(grade_from="reference"), spearman_pred])
    spearman.to_csv(out / "spearman.csv", index=False, float_format="%.4g")
    pd.Series({"train": result.train_subjects, "test": result.test_subjects}).to_json(
        out / "split.json"
    )
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(
            f"train {len(result.train_subjects)} / test {len(result.test_subjects)} subjects, "
            f"grading {engine.scheme.name} {list(engine.scheme.cuts_pct)} %"
        )
        print(result.classification.round(3).to_string(index=False))
        print(result.regression.round(3).to_string(index=False))
        print(result.spearman.round(3).to_string(index=False))
    print(f"tables and cv_predictions.csv ({args.folds}-fold {args.task}, {args.model}) in {out}")
    return 0
