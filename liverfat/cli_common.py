"""Argument helpers shared by the subcommands' parsers (``liverfat/<package>/cli.py``).

A floor below every command line: it knows manifests and executors, never an engine. Each helper
stands alone: the common ``manifest`` / ``--split`` / ``--data-root`` arguments and their loading
(a bad manifest raises :class:`~liverfat.errors.ManifestError`, which ``liverfat`` prints as one
line), the common ``--executor`` / ``--workers`` / ``--scheduler`` options and the keyword
arguments they give, and choices read from a package constant only when first needed.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from liverfat.data.manifest import Manifest
from liverfat.errors import LiverfatError, ManifestError
from liverfat.parallel import EXECUTORS

#: Help of the positional ``manifest`` argument.
MANIFEST_HELP = "dataset card (YAML) or a folder holding manifest.yaml"


def add_manifest_args(
    parser: argparse.ArgumentParser,
    *,
    help: str = MANIFEST_HELP,
    split: bool = False,
    data_root: bool = False,
) -> None:
    """The positional ``manifest``, and ``--split`` / ``--data-root`` where asked for."""
    parser.add_argument("manifest", help=help)
    if split:
        parser.add_argument("--split", help="use only this split (e.g. A)")
    if data_root:
        parser.add_argument(
            "--data-root", help="folder image paths are relative to (overrides the card)"
        )


def load_manifest(args: argparse.Namespace, *, allow_empty: bool = False) -> Manifest:
    """The manifest of :func:`add_manifest_args`' arguments, restricted to ``--split`` if given.

    No subjects (a subject table with a header only, an empty split) is a
    :class:`~liverfat.errors.ManifestError` unless ``allow_empty``: a command would otherwise
    "succeed" on nothing.
    """
    manifest = Manifest.load(args.manifest, data_root=getattr(args, "data_root", None))
    split = getattr(args, "split", None)
    if split:
        manifest = manifest.select(split=split)
    if not allow_empty and not len(manifest):
        where = f" in split {split}" if split else " (the subject table has a header only)"
        raise ManifestError(f"{manifest.path}: no subjects{where}")
    return manifest


def add_executor_args(
    parser: argparse.ArgumentParser,
    *,
    default: str | None = "processes",
    workers: int | None = None,
    scheduler: bool = False,
) -> None:
    """``--executor`` (one of :data:`liverfat.parallel.EXECUTORS`), ``--workers`` and, with
    ``scheduler``, ``--scheduler``.

    ``default=None`` leaves both unset (for commands that keep a saved engine's executor unless
    told otherwise); ``workers=None`` means all cores.
    """
    saved = "default: as saved"
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=default,
        help=f"how subjects are mapped ({saved if default is None else 'default %(default)s'})",
    )
    if default is None:
        workers_help = f"worker processes ({saved})"
    elif workers is None:
        workers_help = "worker processes (default: all cores)"
    else:
        workers_help = "worker processes (default %(default)s)"
    parser.add_argument("--workers", type=positive_int, default=workers, help=workers_help)
    if scheduler:
        parser.add_argument("--scheduler", help="Dask scheduler address (with --executor dask)")


def executor_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``executor``, ``n_workers`` (and ``scheduler``) keyword arguments of
    :func:`add_executor_args`' options, as engines and batch functions take them."""
    settings = {"executor": args.executor, "n_workers": args.workers}
    if hasattr(args, "scheduler"):
        settings["scheduler"] = args.scheduler
    return settings


class LazyChoices(Sequence[str]):
    """``choices=`` read from a package constant when argparse first needs them.

    For names whose module is slow to import (torch): building ``liverfat``'s parser then costs
    nothing, and the names are read when a value is checked or help is shown. Give the argument
    a ``metavar`` (argparse would otherwise list the choices while the parser is built) and write
    ``%(choices)s`` in its help to show them.
    """

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self._names = names
        self._cache: tuple[str, ...] | None = None

    def _values(self) -> tuple[str, ...]:
        if self._cache is None:
            self._cache = tuple(self._names())
        return self._cache

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        return self._values()[index]

    def __len__(self) -> int:
        return len(self._values())

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __contains__(self, value: object) -> bool:
        return value in self._values()


def check_writable(out: str | os.PathLike[str], *, folder: bool | None = None) -> None:
    """Raise a one-line :class:`LiverfatError` unless ``out`` (a file or folder to write) can be
    created: the nearest existing folder above it must be a writable folder, not a file. With
    ``folder`` True (an output folder) ``out`` must not be an existing file, with False (an
    output file) not an existing folder; None allows either."""
    path = Path(out).absolute()
    if folder is True and path.exists() and not path.is_dir():
        raise LiverfatError(f"--out {out}: is a file, not a folder")
    if folder is False and path.is_dir():
        raise LiverfatError(f"--out {out}: is a folder, not a file")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path and not existing.is_dir():
        raise LiverfatError(f"--out {out}: {existing} is a file, not a folder")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK):
        raise LiverfatError(f"--out {out}: {folder} is not writable")


def report_saved(engine: Any, out: str) -> None:
    """Say where a fitted, saved engine is (any engine with ``training_subjects_`` and
    ``training_failures_``), naming each subject it skipped."""
    print(f"engine saved in {out} ({len(engine.training_subjects_)} training subjects)")
    for message in engine.training_failures_.values():
        print(f"skipped: {message}")


# Argument types: a nonsense value is refused by the parser, naming the option ---------------------
def _number(kind: type, text: str, ok: Callable[[float], bool], expected: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (``--workers``, ``--n``, ``--iterations``, ``--folds``)."""
    return _number(int, text, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (``--bootstrap``: 0 for none)."""
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate, a spacing in mm)."""
    return _number(float, text, lambda v: v > 0, "a finite number > 0")


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a standard deviation)."""
    return _number(float, text, lambda v: v >= 0, "a finite number >= 0")


def finite_float(text: str) -> float:
    """A finite number (not nan or inf)."""
    return _number(float, text, lambda v: True, "a finite number")


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    return _number(float, text, lambda v: 0 <= v <= 1, "a fraction in [0, 1]")


def torch_device(text: str) -> str:
    """``auto``, ``cpu`` or a CUDA device this machine has (checked when the option is given;
    torch is imported only then)."""
    from liverfat.errors import LiverfatError
    from liverfat.nn.device import check_device

    try:
        check_device(text)
    except LiverfatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def grading_arg(text: str) -> str | list[float]:
    """A grading scheme: a name (``histology``, ``mri_pdff``, ``binary``; checked where the
    scheme is built, before any work) or comma-separated cut-offs in % (``5,20``)."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        if "," in text:
            raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated cut-offs") from None
        return text
