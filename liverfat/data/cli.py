"""Data subcommands: ``liverfat phantom``, ``liverfat manifest check`` and ``liverfat qc``."""

from __future__ import annotations

import argparse
import math
import sys

from liverfat.cli_common import (
    add_executor_args,
    add_manifest_args,
    executor_settings,
    finite_float,
    fraction,
    load_manifest,
    non_negative_float,
    positive_float,
    positive_int,
)
from liverfat.data.phantom.grid import SCALES
from liverfat.data.phantom.realism import ITEMS, SNR_ITEM


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    phantom = subparsers.add_parser(
        "phantom", help="generate the synthetic Dixon cohort (images, manifest, truth table)"
    )
    phantom.add_argument(
        "--n",
        type=positive_int,
        help="number of subjects (default 20, or the total of --pdff-bins)",
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
        "--reference-fraction",
        type=fraction,
        help="fraction of subjects in split A, the ones with a reference (default 0.6)",
    )
    phantom.add_argument(
        "--noise-floor", type=finite_float, help="noise-floor bias of body fat fraction (%%)"
    )
    phantom.add_argument(
        "--proportional-bias", type=positive_float, help="proportional bias factor (1 = none)"
    )
    phantom.add_argument(
        "--pdff-bins",
        type=pdff_bin,
        nargs="+",
        metavar="LOW:HIGH:COUNT",
        help="draw liver PDFF in fixed bins with exact counts instead of UK Biobank's "
        "distribution: COUNT subjects in [LOW, HIGH) %% each, e.g. 5:33:38 33:66:12; "
        "the counts add up to --n",
    )
    phantom.add_argument(
        "--repeat-fraction",
        type=fraction,
        help="fraction of subjects given a repeat scan (visit 3; default 0): same anatomy and "
        "liver fat, new positioning, noise, coil field, motion, swap draw and reference",
    )
    phantom.add_argument(
        "--repeat-change-pp",
        type=non_negative_float,
        help="SD of a true liver-fat change between the visits (percentage points; default 0)",
    )
    phantom.add_argument(
        "--realism",
        action="store_true",
        help="make the scans as hard as UK Biobank's: liver fat varying in space, the three-ROI "
        "reference, SNR and partial volume, arms, gallbladder and stomach, station-border "
        "deformation, artefact classes (docs/phantom.md); off by default",
    )
    phantom.add_argument(
        "--realism-off",
        nargs="+",
        default=(),
        metavar="ITEM",
        help=f"with --realism, turn these items off: {' '.join([*ITEMS, SNR_ITEM])}",
    )
    phantom.add_argument(
        "--artefact-rates",
        type=artefact_rate,
        nargs="+",
        metavar="CLASS=RATE",
        help="with --realism, the artefact classes' rates (fractions of scans), e.g. swap=0.012 "
        "metal=0.008 noise=0.008 positioning=0.008 (the default, 3.6 %% in all); classes "
        "not named get 0",
    )
    phantom.set_defaults(func=phantom_main)

    manifest = subparsers.add_parser("manifest", help="validate a manifest")
    manifest_sub = manifest.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)
    check = manifest_sub.add_parser("check", help="list every problem of a manifest, one per line")
    add_manifest_args(check, data_root=True)
    check.add_argument("--no-geometry", action="store_true", help="skip image-geometry comparison")
    check.set_defaults(func=manifest_check)

    qc = subparsers.add_parser(
        "qc",
        help="automated scan QC from the images: water-fat swap, signal void, noise, metal, "
        "station seams, positioning",
    )
    add_manifest_args(qc, split=True)
    qc.add_argument("--out", required=True, help="output folder (resumes if it exists)")
    qc.add_argument(
        "--slab-mm",
        type=positive_float,
        default=100.0,
        help="height of the z-slabs scored for a water-fat swap (mm, default %(default)s)",
    )
    qc.add_argument(
        "--truth",
        help="truth table with an 'artefact' (or 'water_fat_swap') column, e.g. the phantom's "
        "truth/truth.csv: also writes OUT/qc_scores.csv, sensitivity and specificity per class",
    )
    add_executor_args(qc)
    qc.set_defaults(func=qc_main)


def pdff_bin(text: str) -> tuple[float, float, int]:
    """One ``LOW:HIGH:COUNT`` bin of ``--pdff-bins``: PDFF bounds (%) and a subject count."""
    expected = "LOW:HIGH:COUNT with 0 <= LOW < HIGH <= 100 (%) and a whole COUNT >= 0"
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high <= 100 and count >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
    return low, high, count


def artefact_rate(text: str) -> tuple[str, float]:
    """One ``CLASS=RATE`` of ``--artefact-rates``: an artefact class and a fraction of scans."""
    name, _, rate = text.partition("=")
    try:
        value = float(rate)
    except ValueError:
        value = float("nan")
    if not name or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not CLASS=RATE with RATE in [0, 1]")
    return name, value


def manifest_check(args: argparse.Namespace) -> int:
    manifest = load_manifest(args, allow_empty=True)  # no subjects is one of the problems listed
    problems = manifest.problems(check_geometry=not args.no_geometry)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{manifest.path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    targets = ", ".join(manifest.targets) or "none"
    print(f"{manifest.path}: OK, {len(manifest)} subjects, targets: {targets}")
    return 0


def qc_main(args: argparse.Namespace) -> int:
    from liverfat.data.qc_run import run_qc, score_run

    manifest = load_manifest(args)
    run = run_qc(manifest, args.out, slab_mm=args.slab_mm, **executor_settings(args))
    for sid, error in run.failures.items():
        print(f"{sid}: {error}", file=sys.stderr)
    print(run.line(len(manifest)))
    if args.truth:
        for line in score_run(run, args.truth):
            print(line)
    return 0


def phantom_main(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from liverfat.data.phantom import PhantomConfig, generate_cohort
    from liverfat.data.phantom.realism import realistic_config
    from liverfat.errors import LiverfatError

    overrides = {
        "swap_fraction": args.swap_fraction,
        "reference_outlier_fraction": args.outlier_fraction,
        "fraction_a": args.reference_fraction,
        "noise_floor_pct": args.noise_floor,
        "proportional_bias": args.proportional_bias,
        "pdff_bins": tuple(args.pdff_bins) if args.pdff_bins else None,
        "repeat_fraction": args.repeat_fraction,
        "repeat_change_pp": args.repeat_change_pp,
    }
    config = PhantomConfig()
    if args.realism:
        rates = dict(args.artefact_rates) if args.artefact_rates else None
        config = realistic_config(config, off=tuple(args.realism_off), artefact_rates=rates)
    elif args.realism_off or args.artefact_rates:
        raise LiverfatError("--realism-off and --artefact-rates need --realism")
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    n = args.n
    if n is None:
        n = sum(count for _, _, count in args.pdff_bins) if args.pdff_bins else 20
    card = generate_cohort(
        n,
        args.out,
        seed=args.seed,
        scale=args.scale,
        config=config,
        **executor_settings(args),
    )
    repeats = round(config.repeat_fraction * n)
    extra = f" (+{repeats} repeat scans)" if repeats else ""
    print(f"phantom cohort of {n} subjects{extra}: {card}")
    return 0
