"""Data subcommands: ``liverfat phantom`` and ``liverfat manifest check``."""

from __future__ import annotations

import argparse
import sys

from liverfat.cli_common import (
    add_executor_args,
    add_manifest_args,
    executor_settings,
    finite_float,
    fraction,
    load_manifest,
    positive_float,
    positive_int,
)
from liverfat.data.phantom.grid import SCALES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    phantom = subparsers.add_parser(
        "phantom", help="generate the synthetic Dixon cohort (images, manifest, truth table)"
    )
    phantom.add_argument(
        "--n", type=positive_int, default=20, help="number of subjects (default 20)"
    )
    phantom.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    phantom.add_argument(
        "--scale",
        choices=tuple(SCALES),
        default="quarter",
        help="grid: full 224x174x370 voxels of 2.23x2.23x3 mm; half; quarter",
    )
    phantom.add_argument("--out", required=True, help="output folder (resumes if it exists)")
    add_executor_args(phantom)
    phantom.add_argument(
        "--swap-fraction", type=fraction, help="fraction of subjects with a water-fat swap"
    )
    phantom.add_argument("--outlier-fraction", type=fraction, help="fraction of reference outliers")
    phantom.add_argument(
        "--noise-floor", type=finite_float, help="noise-floor bias of body fat fraction (%%)"
    )
    phantom.add_argument(
        "--proportional-bias", type=positive_float, help="proportional bias factor (1 = none)"
    )
    phantom.set_defaults(func=phantom_main)

    manifest = subparsers.add_parser("manifest", help="validate a manifest")
    manifest_sub = manifest.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)
    check = manifest_sub.add_parser("check", help="list every problem of a manifest, one per line")
    add_manifest_args(check, data_root=True)
    check.add_argument("--no-geometry", action="store_true", help="skip image-geometry comparison")
    check.set_defaults(func=manifest_check)


def manifest_check(args: argparse.Namespace) -> int:
    manifest = load_manifest(args)
    problems = manifest.problems(check_geometry=not args.no_geometry)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{manifest.path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    targets = ", ".join(manifest.targets) or "none"
    print(f"{manifest.path}: OK, {len(manifest)} subjects, targets: {targets}")
    return 0


def phantom_main(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from liverfat.data.phantom import PhantomConfig, generate_cohort

    overrides = {
        "swap_fraction": args.swap_fraction,
        "reference_outlier_fraction": args.outlier_fraction,
        "noise_floor_pct": args.noise_floor,
        "proportional_bias": args.proportional_bias,
    }
    config = replace(PhantomConfig(), **{k: v for k, v in overrides.items() if v is not None})
    card = generate_cohort(
        args.n,
        args.out,
        seed=args.seed,
        scale=args.scale,
        config=config,
        **executor_settings(args),
    )
    print(f"phantom cohort of {args.n} subjects: {card}")
    return 0
