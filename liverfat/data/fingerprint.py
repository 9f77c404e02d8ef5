"""Resume keys: one rule for every cache and finished-work marker in liverfat.

A key hashes the settings that change a result, the signatures of the input files (resolved
path, size, modification time; or size and content hash for inputs that are copied about, such
as a saved engine's templates) and liverfat's version, so a changed input, setting or release is
never served an old result.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from liverfat import __version__


def file_signature(path: str | os.PathLike[str] | None) -> list[Any]:
    """``[resolved path, size in bytes, mtime in ns]``; ``[path, "missing"]`` if unreadable."""
    if path is None:
        return [None]
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return [str(path), "missing"]
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def content_signature(path: str | os.PathLike[str] | None) -> list[Any]:
    """``[size in bytes, sha256 of the bytes]``: the same for a byte-for-byte copy anywhere;
    ``[path, "missing"]`` if unreadable. Hashed once per file version in a process."""
    if path is None:
        return [None]
    path = Path(path)
    try:
        stat = path.stat()
        return [stat.st_size, _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)]
    except OSError:
        return [str(path), "missing"]


@lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Content hash of ``path``; ``size`` and ``mtime_ns`` key the cache to one version."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def subject_files(
    manifest, subject_id: str, columns: Iterable[str] | None = None, *, by_content: bool = False
) -> dict:
    """Signatures of a subject's image files, by manifest column (absent columns left out):
    :func:`file_signature`, or :func:`content_signature` with ``by_content``."""
    wanted = manifest.image_columns if columns is None else columns
    sign = content_signature if by_content else file_signature
    out = {}
    for column in wanted:
        path = manifest.image_path(subject_id, column)
        if path is not None:
            out[column] = sign(path)
    return out


@lru_cache(maxsize=1)
def code_digest() -> str:
    """Hash of liverfat's own source (every ``.py`` file of the installed package, by relative
    path and content): finished-work markers that must not outlive a code change within one
    release (a study's stages) carry it."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(data: Any, *, length: int = 16) -> str:
    """Hex key of ``data`` (JSON, keys sorted, other objects as ``str``) and liverfat's version."""
    text = json.dumps({"liverfat": __version__, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
