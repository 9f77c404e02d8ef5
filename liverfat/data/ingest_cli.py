"""Ingestion subcommands: ``liverfat ingest ukb`` (UK Biobank field-20201 Dixon zips)."""

from __future__ import annotations

import argparse
import sys

from liverfat.cli_common import add_executor_args, executor_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    ingest = subparsers.add_parser("ingest", help="turn raw scans into volumes and a manifest")
    actions = ingest.add_subparsers(dest="ingest_command", metavar="SOURCE", required=True)
    from liverfat.data.ukbiobank import OUTPUT_SPACING_MM, TRIM_SLICES

    ukb = actions.add_parser(
        "ukb",
        help="UK Biobank neck-to-knee Dixon zips (<eid>_20201_<instance>_<array>.zip)",
        description=(
            "Fuse the six Dixon stations of each zip onto one grid and write water, fat, fat "
            "fraction and body mask (NIfTI), subjects.csv, manifest.yaml and ingest_status.csv. "
            "Reruns skip subjects already ingested; a bad zip fails alone."
        ),
    )
    ukb.add_argument("zips", nargs="+", help="zip files, or folders holding *_20201_*.zip")
    ukb.add_argument("--out", required=True, help="output folder (resumes if it exists)")
    ukb.add_argument(
        "--fields",
        help="UK Biobank CSV extract with fields 22402, 22436, 31, 34, 52, 53, 12144, 21002, 21001",
    )
    ukb.add_argument(
        "--spacing-mm",
        type=float,
        nargs=3,
        default=list(OUTPUT_SPACING_MM),
        metavar=("X", "Y", "Z"),
        help="output voxel spacing in mm (default 2.23 2.23 3)",
    )
    ukb.add_argument(
        "--trim-slices",
        type=int,
        default=TRIM_SLICES,
        help=f"slices dropped at each end of every station (default {TRIM_SLICES})",
    )
    add_executor_args(ukb)
    ukb.add_argument("--quiet", action="store_true", help="no progress bar")
    ukb.set_defaults(func=ukb_main)


def ukb_main(args: argparse.Namespace) -> int:
    """Run the ingestion; exit 0 when every zip worked, 1 when some failed (one line each)."""
    from liverfat.data.ukbiobank import STATUS_NAME, ingest_ukb

    result = ingest_ukb(
        args.zips,
        args.out,
        fields=args.fields,
        spacing_mm=args.spacing_mm,
        trim_slices=args.trim_slices,
        **executor_settings(args),
        progress=not args.quiet,
    )
    for _, row in result.status[result.status["status"] == "failed"].iterrows():
        print(f"liverfat ingest ukb: failed: {row['message']}", file=sys.stderr)
    where = result.card_path or "no manifest (nothing ingested)"
    print(
        f"ingested {result.n_ok} of {len(result.status)} zip(s), {result.n_failed} failed; "
        f"manifest: {where}; status: {args.out}/{STATUS_NAME}"
    )
    return 1 if result.n_failed else 0
