"""``liverfat segmentation cv | fit | predict | adapt``: the U-Net engine's command line."""

from __future__ import annotations

import argparse
import json
from importlib import import_module
from pathlib import Path
from typing import Any

from liverfat.cli_common import (
    LazyChoices,
    add_executor_args,
    add_manifest_args,
    executor_settings,
    load_manifest,
    positive_float,
    positive_int,
    report_saved,
    torch_device,
)

MODEL_CHOICES = LazyChoices(lambda: _segmentation_models())

#: Options passed to the SegmentationEngine under their own names.
ENGINE_OPTIONS = (
    "targets",
    "channels",
    "context_slices",
    "pixel_spacing_mm",
    "slice_size",
    "normalisation",
    "model",
    "features",
    "loss",
    "iterations",
    "batch_size",
    "learning_rate",
    "elastic_sigma_px",
    "affine_prob",
    "flip_prob",
    "intensity_jitter",
    "gamma_prob",
    "histogram_shift_prob",
    "pretrained",
    "erosion_mm",
    "seed",
    "device",
)


def _segmentation_models() -> list[str]:
    import_module("liverfat.segmentation.networks")  # registers the built-in U-Nets
    return import_module("liverfat.nn.registry").model_names("segmentation")


def _engine_options(parser: argparse.ArgumentParser) -> None:
    """The engine's settings; each left out keeps the engine's default (see its docstring)."""
    add = parser.add_argument
    add("--targets", nargs="+", help="readouts: liver_volume_ml liver_pdff_pct (default both)")
    add("--channels", nargs="+", help="image columns (default: water fat, else image)")
    add("--context-slices", type=int, help="neighbouring slices on each side (default 1)")
    add(
        "--pixel-spacing-mm",
        type=positive_float,
        nargs=2,
        help="x y (default: the subjects' median)",
    )
    add("--slice-size", type=int, nargs=2, help="height width, multiples of 16 (default: fit)")
    add("--normalisation", choices=("volume", "slice", "none"), help="default volume")
    add("--model", choices=MODEL_CHOICES, metavar="MODEL", help="%(choices)s (default unet)")
    add("--features", type=int, nargs=6, help="U-Net stage channels (default 16 16 32 64 128 16)")
    add("--loss", choices=("ce", "dice_ce"), help="default ce")
    add("--iterations", type=positive_int, help="Adam steps (default 2000)")
    add("--batch-size", type=positive_int, help="slices per step (default 16)")
    add("--learning-rate", type=positive_float, help="Adam (default 1e-3)")
    add("--elastic-sigma-px", type=float, help="elastic displacement (px; 0: none; default 4)")
    add(
        "--affine-prob",
        type=float,
        help="share of slices randomly rotated (+-15 deg) and scaled (+-15%%) (default 0)",
    )
    add("--flip-prob", type=float, help="left-right flips (default 0)")
    add("--intensity-jitter", type=float, help="channel scale/shift SD (default 0)")
    add("--gamma-prob", type=float, help="share of slices given a random gamma (default 0)")
    add(
        "--histogram-shift-prob",
        type=float,
        help="share of slices given a random monotone intensity curve (default 0)",
    )
    add("--pretrained", help="local weights file (safetensors / state dict)")
    add("--erosion-mm", type=float, help="fat-fraction mask margin (mm, default 5)")
    add("--seed", type=int, help="default 0")
    add("--device", type=torch_device, help="auto, cpu or cuda (default auto)")
    add("--cache", help="working folder: finished folds (default: <out>/work)")
    add_executor_args(parser, default="serial")
    add("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    add("--out", required=True, help="output folder")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    seg = subparsers.add_parser("segmentation", help="2.5D U-Net liver segmentation and readout")
    sub = seg.add_subparsers(dest="segmentation_command", metavar="ACTION", required=True)

    cv = sub.add_parser("cv", help="k-fold cross-validation: out-of-fold masks, Dice, readout")
    add_manifest_args(cv, split=True, data_root=True)
    _engine_options(cv)
    cv.add_argument("--folds", type=positive_int, default=5)
    cv.add_argument("--fold-seed", type=int, default=0)
    cv.set_defaults(func=cv_main)

    fit = sub.add_parser("fit", help="train on every subject with a liver mask; save the engine")
    add_manifest_args(fit, split=True, data_root=True)
    _engine_options(fit)
    fit.set_defaults(func=fit_main)

    predict = sub.add_parser("predict", help="masks, readout and a manifest with the masks")
    add_manifest_args(predict, split=True, data_root=True)
    predict.add_argument("--engine", required=True, help="folder written by `segmentation fit`")
    add_executor_args(predict, default=None)
    predict.add_argument("--out", required=True, help="output folder")
    predict.set_defaults(func=predict_main)

    adapt = sub.add_parser("adapt", help="train on dataset 1, test on 2 with N of its scans moved")
    adapt.add_argument("source", help="dataset 1 (card or folder)")
    adapt.add_argument("target", help="dataset 2 (card or folder)")
    adapt.add_argument("--moved", type=int, nargs="+", default=[0, 1, 3, 5], help="N values")
    adapt.add_argument(
        "--read-as",
        nargs=2,
        action="append",
        default=[],
        metavar=("COLUMN", "AS"),
        help="read dataset 1's COLUMN as channel AS (e.g. water image)",
    )
    _engine_options(adapt)
    adapt.set_defaults(func=adapt_main)


def _engine(args: argparse.Namespace) -> Any:
    from liverfat.segmentation.engine import SegmentationEngine

    if args.threads:
        from liverfat.nn.device import set_torch_threads

        set_torch_threads(args.threads)
    options = {n: getattr(args, n) for n in ENGINE_OPTIONS if getattr(args, n) is not None}
    return SegmentationEngine(
        **options,
        work_dir=args.cache or str(Path(args.out) / "work"),
        **executor_settings(args),
        progress=True,
    )


def _print_summary(records: list[dict], out: Path) -> None:
    from liverfat.evaluation.segmentation import metrics_table, summarise_metrics

    frame = metrics_table(records)
    frame.to_csv(out / "segmentation.csv", index=False, float_format="%.4g")
    summary = summarise_metrics(frame)
    summary.to_csv(out / "segmentation_summary.csv", index=False, float_format="%.4g")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


def cv_main(args: argparse.Namespace) -> int:
    manifest = load_manifest(args)
    out = Path(args.out)
    oof = _engine(args).cross_validate(manifest, folds=args.folds, seed=args.fold_seed)
    oof.write(out / "oof.csv")
    _print_summary(oof.run["segmentation"], out)
    print(
        f"out-of-fold predictions: {out / 'oof.csv'}; seconds: {json.dumps(oof.run['timings_s'])}"
    )
    models = [m for m in oof.run["fold_models"] if m]
    if models:
        print(f"fold models (for segmentation predict --engine): {Path(models[0]).parent}")
    return 0


def fit_main(args: argparse.Namespace) -> int:
    engine = _engine(args).fit(load_manifest(args))
    engine.save(args.out)
    report_saved(engine, args.out)
    return 0


def predict_main(args: argparse.Namespace) -> int:
    from liverfat.segmentation.engine import SegmentationEngine

    engine = SegmentationEngine.load(args.engine)
    if args.executor:
        engine.set_params(**executor_settings(args))
    out = Path(args.out)
    derived, table = engine.set_params(progress=True).predict_masks(load_manifest(args), out)
    table.write(out / "predictions.csv")
    if table.run["segmentation"]:
        _print_summary(table.run["segmentation"], out)
    failed = int((table.frame["status"] == "failed").sum())
    print(f"{len(table.frame)} rows in {out / 'predictions.csv'}, {failed} failed")
    print(f"manifest with the masks: {derived.path}")
    return 0


def adapt_main(args: argparse.Namespace) -> int:
    from liverfat.data.manifest import Manifest
    from liverfat.segmentation.adapt import adaptation_table, rename_columns

    source = rename_columns(Manifest.load(args.source), dict(args.read_as))
    target = Manifest.load(args.target)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary, details = adaptation_table(_engine(args), source, target, moved=args.moved)
    summary.to_csv(out / "adaptation.csv", index=False, float_format="%.4g")
    details.to_csv(out / "adaptation_subjects.csv", index=False, float_format="%.4g")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0
