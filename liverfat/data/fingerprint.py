"""Resume keys: one rule for every cache and finished-work marker in liverfat.

A key hashes the settings that change a result, the signatures of the input files (resolved
path, size, modification time) and liverfat's version, so a changed input, setting or release is
never served an old result.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
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


def subject_files(manifest, subject_id: str, columns: Iterable[str] | None = None) -> dict:
    """Signatures of a subject's image files, by manifest column (absent columns left out)."""
    wanted = manifest.image_columns if columns is None else columns
    out = {}
    for column in wanted:
        path = manifest.image_path(subject_id, column)
        if path is not None:
            out[column] = file_signature(path)
    return out


def fingerprint(data: Any, *, length: int = 16) -> str:
    """Hex key of ``data`` (JSON, keys sorted, other objects as ``str``) and liverfat's version."""
    text = json.dumps({"liverfat": __version__, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
