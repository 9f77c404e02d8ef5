"""Ingestion subcommands: ``liverfat ingest ukb`` (UK Biobank field-20201 Dixon zips)."""

from __future__ import annotations

import argparse
import sys

from liverfat.cli_common import add_executor_args, executor_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    ingest = subparsers.add_parser("ingest", help="turn raw scans into volumes and a manifest")
    actions = ingest.add_subparsers(dest="ingest_command", metavar="SOURCE", required=True)
    from liverfat.data.ukbiobank import EXPECTED_STATIONS, MIN_FUSED_SLICES, TRIM_SLICES

    ukb = actions.add_parser(
        "ukb",
        help="UK Biobank neck-to-knee Dixon zips (<eid>_20201_<instance>_<array>.zip)",
        description=(
            "Fuse the Dixon stations of each zip onto one grid and write water, fat, fat "
            "fraction and body mask (NIfTI), subjects.csv, manifest.yaml, ingest_status.csv and "
            "ingest_stations.csv. A station whose water and fat are swapped is swapped back; a "
            "missing station or series, a z-gap or a short volume flags the subject. Reruns "
            "skip subjects already ingested; a bad zip fails alone."
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
        default=None,
        metavar=("X", "Y", "Z"),
        help="output voxel spacing in mm (default: the stations' native pixels, 500/224 = "
        "2.2321 mm in UK Biobank, and 3 mm slices)",
    )
    ukb.add_argument(
        "--trim-slices",
        type=int,
        default=TRIM_SLICES,
        help=f"slices dropped at each end of every station (default {TRIM_SLICES})",
    )
    ukb.add_argument(
        "--stations",
        type=int,
        default=EXPECTED_STATIONS,
        help=f"stations (4 series each) of a complete zip; fewer are flagged "
        f"(default {EXPECTED_STATIONS})",
    )
    ukb.add_argument(
        "--min-slices",
        type=int,
        default=MIN_FUSED_SLICES,
        help=f"flag fused volumes with fewer slices (default {MIN_FUSED_SLICES}; 0: never)",
    )
    ukb.add_argument(
        "--keep-swaps",
        action="store_true",
        help="flag a station found water-fat swapped instead of swapping it back",
    )
    add_executor_args(ukb)
    ukb.add_argument("--quiet", action="store_true", help="no progress bar")
    ukb.set_defaults(func=ukb_main)


def ukb_main(args: argparse.Namespace) -> int:
    """Run the ingestion; exit 0 when every zip was ingested (flagged ones included), 1 when
    some failed; one line per flagged or failed zip."""
    from liverfat.data.ukbiobank import STATUS_NAME, ingest_ukb

    result = ingest_ukb(
        args.zips,
        args.out,
        fields=args.fields,
        spacing_mm=args.spacing_mm,
        trim_slices=args.trim_slices,
        n_stations=args.stations,
        min_slices=args.min_slices,
        fix_swaps=not args.keep_swaps,
        **executor_settings(args),
        progress=not args.quiet,
    )
    for kind in ("flagged", "failed"):
        for message in result.status.loc[result.status["status"] == kind, "message"]:
            print(f"liverfat ingest ukb: {kind}: {message}", file=sys.stderr)
    where = result.card_path or "no manifest (nothing ingested)"
    print(
        f"ingested {result.n_ingested} of {len(result.status)} zip(s) ({result.n_flagged} "
        f"flagged), {result.n_failed} failed; manifest: {where}; status: {args.out}/{STATUS_NAME}"
    )
    return 1 if result.n_failed else 0
