"""The ``liverfat`` command line: a thin layer over the package, no logic of its own.

Each subcommand has an ``add_parser(subparsers)`` that registers its parser and sets ``func``, a
``main(args) -> int``; one whose ``--out`` is a file (a CSV, a JSON), not a folder, also sets
``out_is_file=True``. User errors (:class:`~liverfat.errors.LiverfatError`), and damaged files or
unusable paths (:func:`_input_failures`), exit 2 with one line.
Engine subcommands live beside their engines (``liverfat/<engine>/cli.py``) and are listed in
:data:`SUBCOMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from liverfat import __version__
from liverfat.cli_common import check_writable
from liverfat.errors import LiverfatError, one_line

#: Modules that each provide ``add_parser(subparsers)``; one line per command group.
SUBCOMMAND_MODULES = (
    "liverfat.data.cli",
    "liverfat.data.ingest_cli",
    "liverfat.study_cli",
    "liverfat.evaluation.cli",
    "liverfat.radiomics.cli",
    "liverfat.deep.cli",
    "liverfat.atlas.cli",
    "liverfat.baseline.cli",
    "liverfat.grade_cli",
    "liverfat.segmentation.cli",
    "liverfat.serve_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liverfat", description="Benchmark suite for liver-fat methods on body MRI."
    )
    parser.add_argument("--version", action="version", version=f"liverfat {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``liverfat`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        if getattr(args, "out", None):  # before any work, not after an hour of it
            check_writable(args.out, folder=not getattr(args, "out_is_file", False))
        return int(args.func(args) or 0)
    except LiverfatError as exc:
        first, *extra = str(exc).splitlines() or [""]
        print(f"liverfat {args.command}: error: {one_line(first or exc)}", file=sys.stderr)
        for line in extra:  # a problem list (e.g. manifest check) keeps one line per problem
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("liverfat: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except _input_failures() as exc:  # a damaged file or an unusable path: one line, no traceback
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        message = one_line(f"{type(exc).__name__}{where}: {exc}", limit=500)
        print(f"liverfat {args.command}: error: {message}", file=sys.stderr)
        return 2


def _input_failures() -> tuple[type[BaseException], ...]:
    """The exception families a damaged input or output path raises: files and folders (OS),
    JSON, text encodings, YAML, safetensors. Anything else is a bug and keeps its traceback."""
    import json

    import yaml
    from safetensors import SafetensorError

    return (OSError, json.JSONDecodeError, UnicodeDecodeError, yaml.YAMLError, SafetensorError)


if __name__ == "__main__":
    sys.exit(main())
