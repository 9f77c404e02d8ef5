"""``liverfat grade MANIFEST --out DIR``: the steatosis-grading table of every model, trees and
networks, on one split (:mod:`liverfat.grading`, models by name from :mod:`liverfat.graders`).

A top-level command: it runs two engines side by side, so it lives above both of them.
"""

from __future__ import annotations

import argparse

import pandas as pd

from liverfat.cli_common import (
    LazyChoices,
    add_executor_args,
    add_manifest_args,
    executor_settings,
    fraction,
    grading_arg,
    load_manifest,
    non_negative_int,
    positive_float,
    positive_int,
    torch_device,
)
from liverfat.graders import DEFAULT_MODELS, TREE_MODELS


def _models() -> list[str]:
    from liverfat.graders import network_names

    return [*TREE_MODELS, *network_names()]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "grade",
        help="steatosis grading: boosted trees and networks on the same liver ROIs, one table",
        description="Grade steatosis from six 16x16 liver ROIs per subject with boosted trees on "
        "radiomics features and networks on the ROI patches, on one seeded train/test split "
        "and one set of folds: AUC and accuracy with 95% CIs, DeLong's test (docs/grading.md).",
    )
    add_manifest_args(parser, data_root=True, split=True)
    parser.add_argument("--out", required=True, help="output folder (resumes if it exists)")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=LazyChoices(_models),
        default=list(DEFAULT_MODELS),
        metavar="MODEL",
        help="rows of the table: %(choices)s (default: adaboost gbdt xgboost densenet)",
    )
    parser.add_argument("--target", default="liver_pdff_pct", help="reference fat fraction (%%)")
    parser.add_argument(
        "--grading",
        type=grading_arg,
        default="histology",
        help="histology (5/33/66 %%), mri_pdff, binary, or comma-separated cut-offs in %%",
    )
    parser.add_argument("--test-fraction", type=fraction, default=0.3)
    parser.add_argument(
        "--folds", type=non_negative_int, default=5, help="folds of the training part (0: none)"
    )
    parser.add_argument("--bootstrap", type=positive_int, default=1000, help="AUC resamples")
    parser.add_argument("--seed", type=int, default=0, help="split, folds, models (default 0)")
    rois = parser.add_argument_group("ROIs (shared by every model)")
    rois.add_argument("--n-rois", type=positive_int, default=6)
    rois.add_argument("--n-right", type=non_negative_int, default=4, help="ROIs in the right lobe")
    rois.add_argument("--roi-size", type=positive_int, default=16, help="square side (pixels)")
    rois.add_argument("--border-margin-mm", type=positive_float, default=5.0)
    rois.add_argument("--outlier-mads", type=positive_float, default=3.0)
    trees = parser.add_argument_group("boosted trees")
    trees.add_argument("--augment", type=non_negative_int, default=8, help="copies per ROI")
    trees.add_argument("--estimators", type=positive_int, default=200)
    networks = parser.add_argument_group("networks")
    networks.add_argument("--iterations", type=positive_int, help="training iterations")
    networks.add_argument("--batch-size", type=positive_int, help="patches per batch")
    networks.add_argument("--device", type=torch_device, default="auto", help="auto, cpu, cuda")
    add_executor_args(parser, workers=2)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run (or resume) the grading comparison and print its table."""
    from liverfat.graders import grade, parse_grading

    networks = {"iterations": args.iterations, "batch_size": args.batch_size}
    options = parse_grading(
        dict(
            models=args.models,
            scheme=args.grading,
            test_fraction=args.test_fraction,
            folds=args.folds,
            bootstrap=args.bootstrap,
            rois={
                "n_rois": args.n_rois,
                "n_right": args.n_right,
                "size": args.roi_size,
                "border_margin_mm": args.border_margin_mm,
                "outlier_mads": args.outlier_mads,
            },
            trees={"augment_copies": args.augment, "n_estimators": args.estimators},
            networks={"device": args.device, **{k: v for k, v in networks.items() if v}},
        ),
        "option",
    )
    result = grade(
        load_manifest(args),
        args.out,
        options,
        target=args.target,
        seed=args.seed,
        **executor_settings(args),
    )
    split, scheme = result.split, result.scheme
    print(
        f"train {len(split.train)} / test {len(split.test)} subjects, {len(split.folds)} folds, "
        f"grading {scheme.name} {list(scheme.cuts_pct)} %, {result.seconds['total']:.0f} s"
    )
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result.table.to_string(index=False))
        if len(result.delong):
            print(result.delong.round(4).to_string(index=False))
    print(f"tables in {args.out}")
    return 0
