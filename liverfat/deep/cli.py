"""``liverfat deep format | cv | fit | predict | saliency``: the deep engine's command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from liverfat.data.atomic import write_json_atomic
from liverfat.data.manifest import Manifest
from liverfat.errors import LiverfatError
from liverfat.parallel import EXECUTORS


def _engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="dataset card (YAML) or a folder holding manifest.yaml")
    parser.add_argument("--split", help="use only this split (e.g. A)")
    parser.add_argument("--targets", nargs="+", default=["liver_pdff_pct"])
    parser.add_argument("--format", default="liverfat", help="registered 2D format")
    parser.add_argument("--model", default="resnet50", help="registered model (plug-ins too)")
    parser.add_argument("--head", choices=("mean_variance", "mse"), default="mean_variance")
    parser.add_argument("--profile", choices=("auto", "paper", "quick"), default="auto")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--input-scale", type=float, help="resize formats before the network")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--pretrained", help="local weights file (safetensors / state dict)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--cache", help="working folder: formats, finished folds (default: <out>/work)"
    )
    parser.add_argument("--executor", choices=EXECUTORS, default="serial")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="output folder")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    deep = subparsers.add_parser("deep", help="CNN regression from 2D formats (train, predict)")
    sub = deep.add_subparsers(dest="deep_command", metavar="ACTION", required=True)

    fmt = sub.add_parser("format", help="compute and cache 2D formats (resumable)")
    fmt.add_argument("manifest")
    fmt.add_argument("--format", default="liverfat")
    fmt.add_argument("--out", required=True, help="cache folder")
    fmt.add_argument("--png", action="store_true", help="also write one PNG per subject")
    fmt.add_argument("--executor", choices=EXECUTORS, default="processes")
    fmt.add_argument("--workers", type=int)
    fmt.set_defaults(func=format_main)

    cv = sub.add_parser("cv", help="k-fold cross-validation: out-of-fold predictions + metrics")
    _engine_options(cv)
    cv.add_argument("--folds", type=int, default=10)
    cv.add_argument("--fold-seed", type=int, default=0)
    cv.add_argument("--baseline", action="store_true", help="also the linear baseline")
    cv.set_defaults(func=cv_main)

    fit = sub.add_parser("fit", help="train on all subjects with a reference; save the engine")
    _engine_options(fit)
    fit.add_argument("--calibration", help="out-of-fold table (oof.csv) of `deep cv`")
    fit.set_defaults(func=fit_main)

    predict = sub.add_parser("predict", help="predict with a saved engine")
    predict.add_argument("manifest")
    predict.add_argument("--engine", required=True, help="folder written by `deep fit`")
    predict.add_argument("--split")
    predict.add_argument("--out", required=True, help="predictions CSV")
    predict.set_defaults(func=predict_main)

    saliency = sub.add_parser("saliency", help="Grad-CAM maps per subject and cohort mean (PNG)")
    saliency.add_argument("manifest")
    saliency.add_argument("--engine", required=True)
    saliency.add_argument("--split")
    saliency.add_argument("--target")
    saliency.add_argument("--out", required=True, help="output folder")
    saliency.add_argument("--per-subject", action="store_true", help="one PNG per subject too")
    saliency.set_defaults(func=saliency_main)


def _manifest(args: argparse.Namespace) -> Manifest:
    manifest = Manifest.load(args.manifest)
    return manifest.select(split=args.split) if getattr(args, "split", None) else manifest


def _engine(args: argparse.Namespace):
    from liverfat.deep.engine import DeepEngine

    if args.threads:
        from liverfat.nn.device import set_torch_threads

        set_torch_threads(args.threads)
    return DeepEngine(
        targets=args.targets,
        format=args.format,
        model=args.model,
        head=args.head,
        profile=args.profile,
        iterations=args.iterations,
        batch_size=args.batch_size,
        input_scale=args.input_scale,
        learning_rate=args.learning_rate,
        pretrained=args.pretrained,
        seed=args.seed,
        device=args.device,
        work_dir=args.cache or str(Path(args.out) / "work"),
        executor=args.executor,
        n_workers=args.workers,
        progress=True,
    )


def format_main(args: argparse.Namespace) -> int:
    from liverfat.deep.engine import DeepEngine

    manifest = Manifest.load(args.manifest)
    engine = DeepEngine(
        format=args.format,
        work_dir=args.out,
        executor=args.executor,
        n_workers=args.workers,
        progress=True,
    )
    arrays, errors = engine.load_formats(manifest)
    for message in errors.values():
        print(message)
    if args.png:
        import matplotlib.pyplot as plt

        for sid, array in arrays.items():
            plt.imsave(Path(args.out) / f"{sid}.{args.format}.png", array[-1], cmap="gray")
    print(f"{len(arrays)} formats in {args.out}, {len(errors)} failed")
    return 1 if errors and not arrays else 0


def cv_main(args: argparse.Namespace) -> int:
    from liverfat.baseline import LinearBaseline
    from liverfat.deep.metrics import summary_table

    manifest = _manifest(args)
    engine = _engine(args)
    out = Path(args.out)
    oof = engine.cross_validate(manifest, folds=args.folds, seed=args.fold_seed)
    oof.write(out / "oof.csv")
    tables = {engine.method: oof}
    if args.baseline:
        baseline = LinearBaseline(targets=args.targets).cross_validate(
            manifest, folds=args.folds, seed=args.fold_seed
        )
        baseline.write(out / "baseline_oof.csv")
        tables[baseline.run["method"]] = baseline
    summary = summary_table(tables, {t: manifest.target(t) for t in args.targets})
    summary.to_csv(out / "metrics.csv", index=False, float_format="%.4g")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"out-of-fold predictions: {out / 'oof.csv'}")
    return 0


def fit_main(args: argparse.Namespace) -> int:
    from liverfat.data.predictions import PredictionsTable

    manifest = _manifest(args)
    engine = _engine(args).fit(manifest)
    if args.calibration:
        scale = PredictionsTable.read(args.calibration).run.get("variance_scale")
        if not scale:
            raise LiverfatError(f"{args.calibration}: its run.json holds no variance_scale")
        engine.set_calibration(scale)
    engine.save(Path(args.out))
    print(f"engine saved in {args.out} ({len(engine.training_subjects_)} training subjects)")
    for message in engine.training_failures_.values():
        print(f"skipped: {message}")
    return 0


def predict_main(args: argparse.Namespace) -> int:
    from liverfat.deep.engine import DeepEngine

    engine = DeepEngine.load(args.engine)
    table = engine.predict(_manifest(args))
    table.write(args.out)
    failed = int((table.frame["status"] == "failed").sum())
    print(f"{len(table.frame)} rows in {args.out}, {failed} failed")
    return 0


def saliency_main(args: argparse.Namespace) -> int:
    from liverfat.deep.engine import DeepEngine
    from liverfat.deep.saliency import aligned_stack, cohort_saliency, save_overlay

    engine = DeepEngine.load(args.engine)
    manifest = _manifest(args)
    result = cohort_saliency(engine, manifest, target=args.target)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = list(result.maps)
    water = aligned_stack(manifest, engine.format, "water", ids)
    background = water.mean(axis=0)
    for name, image, title in (
        ("mean", result.mean, "mean Grad-CAM"),
        ("deviation", result.deviation, "cohort deviation of signed Grad-CAM"),
        ("sensitivity", result.sensitivity_mean, "mean pixel sensitivity (squared input gradient)"),
    ):
        np.save(out / f"saliency_{name}.npy", image.astype(np.float32))
        save_overlay(out / f"saliency_{name}.png", image, background, title=title)
    if args.per_subject:
        for sid, own in zip(ids, water, strict=True):
            save_overlay(out / f"{sid}.png", result.maps[sid], own, title=sid)
    write_json_atomic(out / "saliency.json", {"subjects": ids, "failed": result.errors})
    for message in result.errors.values():
        print(f"skipped: {message}")
    print(f"mean Grad-CAM of {len(ids)} subjects: {out / 'saliency_mean.png'}")
    return 0
