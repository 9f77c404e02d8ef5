"""``liverfat deep format | cv | fit | predict | saliency``: the deep engine's command line."""

from __future__ import annotations

import argparse
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
from liverfat.deep.formats import format_names
from liverfat.deep.profiles import DEFAULT_PROFILE

# Read when parsing or showing help, so that building ``liverfat``'s parser imports no torch.
HEAD_CHOICES = LazyChoices(lambda: import_module("liverfat.deep.training").HEADS)
PROFILE_CHOICES = LazyChoices(lambda: (*import_module("liverfat.deep.profiles").PROFILES, "auto"))
MODEL_CHOICES = LazyChoices(lambda: import_module("liverfat.nn.registry").model_names())
TRANSFORM_CHOICES = LazyChoices(lambda: import_module("liverfat.deep.uncertainty").TRANSFORMS)

#: Options of :func:`_engine_options` passed to the DeepEngine under their own names.
ENGINE_OPTIONS = (
    "targets",
    "format",
    "model",
    "head",
    "profile",
    "iterations",
    "batch_size",
    "input_scale",
    "learning_rate",
    "nll_beta",
    "balance_bins",
    "target_transform",
    "fat_scale_range",
    "pretrained",
    "seed",
    "device",
)


def _format_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=format_names(), default="liverfat", help="2D format")


def _engine_options(parser: argparse.ArgumentParser) -> None:
    add_manifest_args(parser, split=True)
    parser.add_argument("--targets", nargs="+", default=["liver_pdff_pct"])
    _format_arg(parser)
    parser.add_argument(
        "--model",
        choices=MODEL_CHOICES,
        metavar="MODEL",
        help="registered model, plug-ins too: %(choices)s (default: the profile's)",
    )
    parser.add_argument(
        "--head",
        choices=HEAD_CHOICES,
        default="mean_variance",
        metavar="HEAD",
        help="%(choices)s (default %(default)s)",
    )
    parser.add_argument(
        "--profile",
        choices=PROFILE_CHOICES,
        default=DEFAULT_PROFILE,
        metavar="PROFILE",
        help="%(choices)s (default %(default)s on every device; auto: paper on a GPU, else cpu)",
    )
    parser.add_argument("--iterations", type=positive_int)
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--input-scale", type=float, help="resize formats before the network")
    parser.add_argument(
        "--learning-rate", type=positive_float, help="Adam (default: the profile's)"
    )
    parser.add_argument("--nll-beta", type=float, help="beta-NLL weight (default: the profile's)")
    parser.add_argument(
        "--balance-bins", type=int, help="balanced batches over N bins (default: the profile's)"
    )
    parser.add_argument(
        "--target-transform",
        choices=TRANSFORM_CHOICES,
        metavar="TRANSFORM",
        help="%(choices)s: the target as it is or log(y + 1) (default: the profile's)",
    )
    parser.add_argument(
        "--fat-scale-range",
        nargs=2,
        type=positive_float,
        metavar=("LOW", "HIGH"),
        help="fat-fraction scaling augmentation for liver fat; 1 1: none (default: the profile's)",
    )
    parser.add_argument("--pretrained", help="local weights file (safetensors / state dict)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=torch_device, default="auto")
    parser.add_argument(
        "--cache", help="working folder: formats, finished folds (default: <out>/work)"
    )
    add_executor_args(parser, default="serial")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="output folder")


def _saved_engine_options(parser: argparse.ArgumentParser, out: str, where: str) -> None:
    add_manifest_args(parser, split=True)
    parser.add_argument("--engine", required=True, help="folder written by `deep fit`")
    parser.add_argument("--out", required=True, help=out)
    parser.add_argument("--cache", help=f"working folder: formats (default: work {where} --out)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    deep = subparsers.add_parser("deep", help="CNN regression from 2D formats (train, predict)")
    sub = deep.add_subparsers(dest="deep_command", metavar="ACTION", required=True)

    fmt = sub.add_parser("format", help="compute and cache 2D formats (resumable)")
    add_manifest_args(fmt)
    _format_arg(fmt)
    fmt.add_argument("--out", required=True, help="cache folder")
    fmt.add_argument("--png", action="store_true", help="also write one PNG per subject")
    add_executor_args(fmt)
    fmt.set_defaults(func=format_main)

    cv = sub.add_parser("cv", help="k-fold cross-validation: out-of-fold predictions + metrics")
    _engine_options(cv)
    cv.add_argument("--folds", type=positive_int, default=10)
    cv.add_argument("--fold-seed", type=int, default=0)
    cv.set_defaults(func=cv_main)

    fit = sub.add_parser("fit", help="train on all subjects with a reference; save the engine")
    _engine_options(fit)
    fit.add_argument("--calibration", help="out-of-fold table (oof.csv) of `deep cv`")
    fit.set_defaults(func=fit_main)

    predict = sub.add_parser("predict", help="predict with a saved engine")
    _saved_engine_options(predict, "predictions CSV", "beside")
    predict.set_defaults(func=predict_main, out_is_file=True)

    saliency = sub.add_parser("saliency", help="Grad-CAM maps per subject and cohort mean (PNG)")
    _saved_engine_options(saliency, "output folder", "in")
    saliency.add_argument("--target")
    saliency.add_argument("--per-subject", action="store_true", help="one PNG per subject too")
    saliency.set_defaults(func=saliency_main)


def _engine(args: argparse.Namespace) -> Any:
    from liverfat.deep.engine import DeepEngine

    if args.threads:
        from liverfat.nn.device import set_torch_threads

        set_torch_threads(args.threads)
    options = {name: getattr(args, name) for name in ENGINE_OPTIONS}
    return DeepEngine(
        **options,
        work_dir=args.cache or str(Path(args.out) / "work"),
        **executor_settings(args),
        progress=True,
    )


def format_main(args: argparse.Namespace) -> int:
    from liverfat.deep.engine import DeepEngine
    from liverfat.deep.formats import write_format_pngs

    engine = DeepEngine(
        format=args.format, work_dir=args.out, **executor_settings(args), progress=True
    )
    arrays, errors = engine.load_formats(load_manifest(args))
    for message in errors.values():
        print(message)
    if args.png:
        write_format_pngs(arrays, args.out, args.format)
    print(f"{len(arrays)} formats in {args.out}, {len(errors)} failed")
    return 1 if errors and not arrays else 0


def cv_main(args: argparse.Namespace) -> int:
    from liverfat.evaluation.summary import write_cv_summary

    manifest = load_manifest(args)
    oof = _engine(args).cross_validate(manifest, folds=args.folds, seed=args.fold_seed)
    print(write_cv_summary(oof, {t: manifest.target(t) for t in args.targets}, args.out))
    return 0


def fit_main(args: argparse.Namespace) -> int:
    from liverfat.deep.uncertainty import saved_variance_scale

    engine = _engine(args).fit(load_manifest(args))
    if args.calibration:
        engine.set_calibration(saved_variance_scale(args.calibration))
    engine.save(Path(args.out))
    report_saved(engine, args.out)
    return 0


def predict_main(args: argparse.Namespace) -> int:
    from liverfat.deep.engine import DeepEngine

    # never the saved engine's own work_dir: the engine folder is an input (maybe read-only,
    # maybe another machine's path)
    work_dir = args.cache or str(Path(args.out).parent / "work")
    engine = DeepEngine.load(args.engine).set_params(work_dir=work_dir)
    table = engine.predict(load_manifest(args))
    table.write(args.out)
    failed = int((table.frame["status"] == "failed").sum())
    print(f"{len(table.frame)} rows in {args.out}, {failed} failed")
    return 0


def saliency_main(args: argparse.Namespace) -> int:
    from liverfat.deep.engine import DeepEngine
    from liverfat.deep.saliency import write_cohort_saliency

    out = Path(args.out)
    result = write_cohort_saliency(
        DeepEngine.load(args.engine).set_params(work_dir=args.cache or str(out / "work")),
        load_manifest(args),
        out,
        target=args.target,
        per_subject=args.per_subject,
    )
    for message in result.errors.values():
        print(f"skipped: {message}")
    print(f"mean Grad-CAM of {len(result.maps)} subjects: {out / 'saliency_mean.png'}")
    return 0
