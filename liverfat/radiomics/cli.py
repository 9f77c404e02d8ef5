"""``liverfat radiomics rois | features | cv | fit | predict``, each on a manifest."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from liverfat.cli_common import (
    add_executor_args,
    add_manifest_args,
    executor_settings,
    grading_arg,
    load_manifest,
    positive_float,
    positive_int,
)
from liverfat.evaluation.grader import GRADING_SCHEMES, grading_scheme
from liverfat.radiomics.models import MODELS, TASKS
from liverfat.radiomics.rois import RoiSettings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    radiomics = subparsers.add_parser(
        "radiomics", help="liver ROIs, pyradiomics features and boosted-tree grading/regression"
    )
    sub = radiomics.add_subparsers(dest="radiomics_command", metavar="ACTION", required=True)

    rois = _command(sub, "rois", rois_main, out="folder for <subject>_rois.json/.png (resumes)")
    _roi_args(rois)
    features = _command(sub, "features", features_main, out="CSV of ROI feature rows", file=True)
    _engine_args(features)

    cv = _command(sub, "cv", cv_main, out="output folder for the tables")
    cv.add_argument("--folds", type=positive_int, default=5)
    cv.add_argument("--test-fraction", type=float, default=0.3)
    cv.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    cv.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for AUC CIs")
    cv.add_argument(
        "--truth", help="predictions CSV holding the true value (e.g. a phantom's truth table)"
    )
    _engine_args(cv)

    fit = _command(sub, "fit", fit_main, out="folder for the saved engine", split=True)
    _engine_args(fit)
    predict = _command(sub, "predict", predict_main, out="predictions CSV", file=True)
    predict.add_argument("--model", required=True, help="folder written by `radiomics fit`")
    predict.add_argument("--cache", help="feature cache folder (default: work beside --out)")
    add_executor_args(predict, workers=2)


def _command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    out: str,
    split: bool = False,
    file: bool = False,
) -> argparse.ArgumentParser:
    """A subcommand on a manifest (with ``--data-root``) writing to ``--out`` (a folder, or with
    ``file`` a file), running ``func``; its help is the first line of ``func``'s docstring."""
    summary = (func.__doc__ or "").strip().splitlines()[0].rstrip(".").replace("%", "%%")
    parser = sub.add_parser(name, help=summary[:1].lower() + summary[1:])
    add_manifest_args(parser, split=split, data_root=True)
    parser.add_argument("--out", required=True, help=out)
    parser.set_defaults(func=func, out_is_file=file)
    return parser


def _roi_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-rois", type=int, default=6)
    parser.add_argument("--n-right", type=int, default=4, help="ROIs in the right lobe")
    parser.add_argument("--roi-size", type=int, default=16, help="square side (pixels)")
    parser.add_argument("--border-margin-mm", type=float, default=5.0)
    parser.add_argument("--outlier-mads", type=float, default=3.0)
    add_executor_args(parser, workers=2)


def _engine_args(parser: argparse.ArgumentParser) -> None:
    _roi_args(parser)
    parser.add_argument("--target", default="liver_pdff_pct")
    parser.add_argument("--task", choices=TASKS, default="regression")
    parser.add_argument("--model", choices=MODELS, default="xgboost")
    parser.add_argument(
        "--grading",
        type=grading_arg,
        default="mri_pdff",
        help=f"{', '.join(GRADING_SCHEMES)} or comma-separated cut-offs in %%",
    )
    parser.add_argument("--channels", nargs="+", default=["fat_fraction"])
    parser.add_argument("--augment", type=int, default=8, help="augmented copies per training ROI")
    parser.add_argument("--estimators", type=int, default=200)
    parser.add_argument("--learning-rate", type=positive_float, default=0.05)
    parser.add_argument("--max-depth", type=int, default=3)
    parser.add_argument("--params", help="radiomics parameter file (default: liver_roi_v1.yaml)")
    parser.add_argument(
        "--cache", help="working folder with the feature cache (default: <out>/work)"
    )
    parser.add_argument("--seed", type=int, default=0)


def _roi_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "n_rois": args.n_rois,
        "n_right": args.n_right,
        "roi_size": args.roi_size,
        "border_margin_mm": args.border_margin_mm,
        "outlier_mads": args.outlier_mads,
    }


def _engine_settings(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """:class:`~liverfat.radiomics.engine.RadiomicsEngine` keyword arguments of the options."""
    return {
        "target": args.target,
        "task": args.task,
        "model": args.model,
        "grading": args.grading,
        "channels": tuple(args.channels),
        **_roi_settings(args),
        "augment_copies": args.augment,
        "n_estimators": args.estimators,
        "learning_rate": args.learning_rate,
        "max_depth": args.max_depth,
        "params_file": args.params,
        "work_dir": args.cache or str(out / "work"),
        **executor_settings(args),
        "seed": args.seed,
    }


def rois_main(args: argparse.Namespace) -> int:
    """Place ROIs per subject; write JSON + overlay PNG for review."""
    from liverfat.radiomics.review import write_subject_rois

    manifest = load_manifest(args)
    settings = _roi_settings(args)
    settings["size"] = settings.pop("roi_size")  # the engine's roi_size is RoiSettings.size
    review = write_subject_rois(
        manifest, args.out, RoiSettings(**settings), **executor_settings(args)
    )
    for message in review.failures.values():
        print(message, file=sys.stderr)
    print(
        f"ROIs of {len(review.placed) + len(review.existing)} of {len(manifest)} subjects in "
        f"{review.folder} ({len(review.existing)} already there)"
    )
    return 1 if review.failures else 0


def features_main(args: argparse.Namespace) -> int:
    """Extract ROI features of every subject (cached)."""
    from liverfat.data.atomic import atomic_path
    from liverfat.radiomics.engine import RadiomicsEngine
    from liverfat.radiomics.features import KEY_COLUMNS

    out = Path(args.out)
    engine = RadiomicsEngine(**_engine_settings(args, out.parent))
    rows, failures = engine.features(load_manifest(args))
    for message in failures.values():
        print(message, file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        rows.to_csv(tmp, index=False, float_format="%.10g")
    n_features = len([c for c in rows.columns if c not in KEY_COLUMNS])
    print(
        f"{len(rows)} ROIs x {n_features} features of "
        f"{rows['subject_id'].nunique() if len(rows) else 0} "
        f"subjects -> {out} ({len(failures)} failed)"
    )
    return 1 if failures else 0


def fit_main(args: argparse.Namespace) -> int:
    """Fit on subjects with a reference and save the engine."""
    from liverfat.radiomics.engine import RadiomicsEngine

    out = Path(args.out)
    engine = RadiomicsEngine(**_engine_settings(args, out)).fit(load_manifest(args))
    engine.save(out)
    for message in engine.failed_subjects_.values():
        print(message, file=sys.stderr)
    print(
        f"{args.model} {args.task} fitted on {len(engine.training_subjects_)} subjects "
        f"({len(engine.filter_.columns_)} features kept) -> {out}"
    )
    return 0


def predict_main(args: argparse.Namespace) -> int:
    """Predict every subject with a saved engine."""
    from liverfat.radiomics.engine import RadiomicsEngine

    engine = RadiomicsEngine.load(args.model).set_params(**executor_settings(args))
    # never the saved engine's own work_dir: the engine folder is an input (maybe read-only,
    # maybe another machine's path)
    engine.set_params(work_dir=args.cache or str(Path(args.out).parent / "work"))
    table = engine.predict(load_manifest(args))
    path = table.write(args.out)
    failed = int((table.frame["status"] == "failed").sum())
    print(f"{len(table.frame)} predictions ({failed} failed) -> {path}")
    return 0


def cv_main(args: argparse.Namespace) -> int:
    """Train/test table (AUC, accuracy, 95% CI) of the three models + CV predictions."""
    from liverfat.data.predictions import PredictionsTable
    from liverfat.radiomics.protocol import run_cv_protocol

    out = Path(args.out)
    settings = _engine_settings(args, out)
    truth = None
    if args.truth:
        table = PredictionsTable.read(args.truth)
        truth = table.frame[table.frame["target"] == args.target].set_index("subject_id")["value"]
    result, _ = run_cv_protocol(
        load_manifest(args),
        out,
        folds=args.folds,
        models=args.models,
        test_fraction=args.test_fraction,
        truth=truth,
        n_boot=args.bootstrap,
        **settings,
    )
    scheme = grading_scheme(settings["grading"])
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(
            f"train {len(result.train_subjects)} / test {len(result.test_subjects)} subjects, "
            f"grading {scheme.name} {list(scheme.cuts_pct)} %"
        )
        print(result.classification.round(3).to_string(index=False))
        print(result.regression.round(3).to_string(index=False))
        print(result.spearman.round(3).to_string(index=False))
    print(f"tables and cv_predictions.csv ({args.folds}-fold {args.task}, {args.model}) in {out}")
    return 0
