"""``liverfat baseline cv | fit | predict``: the covariate-only baseline's command line.

``liverfat baseline cv`` with the same ``--folds`` and ``--fold-seed`` as ``liverfat deep cv``
and the same targets scores the same subjects in the same folds, so the two ``metrics.csv``
tables compare directly (``liverfat compare`` takes both ``oof.csv`` tables for the rest).
"""

from __future__ import annotations

import argparse

from liverfat.cli_common import add_manifest_args, load_manifest, positive_int
from liverfat.data.manifest import BASELINE_COVARIATES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "baseline", help="the covariate-only linear baseline: cv | fit | predict"
    )
    sub = parser.add_subparsers(dest="baseline_command", metavar="ACTION", required=True)
    cv = sub.add_parser("cv", help="k-fold out-of-fold predictions + metrics")
    _options(cv)
    cv.add_argument("--folds", type=positive_int, default=10)
    cv.add_argument("--fold-seed", type=int, default=0)
    cv.set_defaults(func=cv_main)
    fit = sub.add_parser("fit", help="fit on every subject with a reference; save it")
    _options(fit)
    fit.set_defaults(func=fit_main)
    predict = sub.add_parser("predict", help="predict with a saved baseline")
    add_manifest_args(predict, split=True)
    predict.add_argument("--model", required=True, help="folder written by `baseline fit`")
    predict.add_argument("--out", required=True, help="predictions CSV")
    predict.set_defaults(func=predict_main, out_is_file=True)


def _options(parser: argparse.ArgumentParser) -> None:
    add_manifest_args(parser, split=True)
    parser.add_argument("--targets", nargs="+", default=["liver_pdff_pct"])
    parser.add_argument("--covariates", nargs="+", default=list(BASELINE_COVARIATES))
    parser.add_argument("--out", required=True, help="output folder")


def _baseline(args: argparse.Namespace):
    from liverfat.baseline.engine import LinearBaseline

    return LinearBaseline(targets=args.targets, covariates=args.covariates)


def cv_main(args: argparse.Namespace) -> int:
    from liverfat.evaluation.summary import write_cv_summary

    manifest = load_manifest(args)
    oof = _baseline(args).cross_validate(manifest, folds=args.folds, seed=args.fold_seed)
    print(write_cv_summary(oof, {t: manifest.target(t) for t in args.targets}, args.out))
    return 0


def fit_main(args: argparse.Namespace) -> int:
    model = _baseline(args).fit(load_manifest(args))
    model.save(args.out)
    print(f"baseline on {', '.join(model.covariates)} saved to {args.out}")
    return 0


def predict_main(args: argparse.Namespace) -> int:
    from liverfat.baseline.engine import LinearBaseline

    table = LinearBaseline.load(args.model).predict(load_manifest(args))
    path = table.write(args.out)
    failed = int((table.frame["status"] == "failed").sum())
    print(f"{len(table.frame)} predictions ({failed} failed) -> {path}")
    return 0
