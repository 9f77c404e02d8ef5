"""Data subcommands: ``liverfat phantom`` and ``liverfat manifest check``."""

from __future__ import annotations

import argparse
import sys

from liverfat.data.manifest import Manifest


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    manifest = subparsers.add_parser("manifest", help="validate a manifest")
    manifest_sub = manifest.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)
    check = manifest_sub.add_parser("check", help="list every problem of a manifest, one per line")
    check.add_argument("path", help="dataset card (YAML) or a folder holding manifest.yaml")
    check.add_argument("--data-root", help="folder image paths are relative to (overrides the card)")
    check.add_argument("--no-geometry", action="store_true", help="skip image-geometry comparison")
    check.set_defaults(func=manifest_check)


def manifest_check(args: argparse.Namespace) -> int:
    manifest = Manifest.load(args.path, data_root=args.data_root)
    problems = manifest.problems(check_geometry=not args.no_geometry)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{manifest.path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{manifest.path}: OK, {len(manifest)} subjects, targets {', '.join(manifest.targets)}")
    return 0
