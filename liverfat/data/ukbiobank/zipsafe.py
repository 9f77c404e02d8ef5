"""A UK Biobank field-20201 zip as untrusted input: its name, safe reading, and its manifest CSV.

Member paths that would escape the output folder, absurd compression ratios (zip bombs),
oversized or truncated members, and members the zip's manifest lists but the zip lacks each stop
that subject with one clear line.
"""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from liverfat.errors import ImageError, LiverfatError, one_line

#: Safety limits on one zip.
MAX_MEMBERS = 20_000
MAX_MEMBER_BYTES = 64 * 2**20
MAX_TOTAL_BYTES = 4 * 2**30
MAX_COMPRESSION_RATIO = 100.0
#: Members smaller than this are exempt from the ratio check (a small file cannot be a bomb).
RATIO_CHECK_MIN_BYTES = 2**20

ZIP_NAME = re.compile(r"^(\d+)_20201_(\d+)_(\d+)\.zip$")


# Zip names -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZipName:
    """The parts of ``<eid>_20201_<instance>_<array>.zip``."""

    eid: str
    instance: int
    array: int

    @property
    def subject_id(self) -> str:
        """``<eid>_<instance>`` (``_<array>`` appended when the array index is not 0)."""
        suffix = f"_{self.array}" if self.array else ""
        return f"{self.eid}_{self.instance}{suffix}"


def parse_zip_name(path: str | os.PathLike[str]) -> ZipName:
    """Split a field-20201 zip name; :class:`LiverfatError` if it does not follow the pattern."""
    match = ZIP_NAME.match(Path(path).name)
    if not match:
        raise LiverfatError(
            f"{Path(path).name}: not a UK Biobank Dixon zip name "
            "(<eid>_20201_<instance>_<array>.zip)"
        )
    return ZipName(match.group(1), int(match.group(2)), int(match.group(3)))


# Reading a zip safely --------------------------------------------------------------------------


def _escapes(name: str) -> bool:
    """Whether a member name would land outside the folder it is extracted into."""
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    return posix.startswith("/") or ".." in parts or bool(re.match(r"^[A-Za-z]:", posix))


def read_zip_members(zip_path: str | os.PathLike[str], subject_id: str) -> dict[str, bytes]:
    """All file members of a zip, checked for the safety limits, as ``{name: bytes}``.

    Raises
    ------
    ImageError
        Naming ``subject_id`` and the member: unreadable or truncated zip, a path escaping the
        output folder, an oversized member, a compression ratio above
        :data:`MAX_COMPRESSION_RATIO`, or a member whose data fails to decompress or its CRC.
    """
    zip_path = Path(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ImageError(
            f"{subject_id}: {zip_path.name} is not a readable zip, truncated or corrupt "
            f"({one_line(exc, limit=200)})"
        ) from exc
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        check_zip_limits(infos, subject_id)
        members = {}
        for info in infos:
            try:
                members[info.filename] = read_member(archive, info, subject_id)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
                raise ImageError(
                    f"{subject_id}: member {info.filename} is truncated or corrupt "
                    f"({one_line(exc, limit=200)})"
                ) from exc
    return members


#: Bytes decompressed per read: ``ZipFile.read`` decompresses a member in one call, so a small
#: member that lies about its size could fill the memory before its CRC is checked.
READ_CHUNK_BYTES = 2**20


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, subject_id: str) -> bytes:
    """One member's bytes, decompressed :data:`READ_CHUNK_BYTES` at a time and stopped as soon
    as it outgrows its declared size or :data:`MAX_MEMBER_BYTES` (a zip bomb with false size
    fields), so memory stays bounded whatever the member really holds."""
    limit = min(info.file_size, MAX_MEMBER_BYTES)
    parts, total = [], 0
    with archive.open(info) as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            total += len(chunk)
            if total > limit:
                raise ImageError(
                    f"{subject_id}: member {info.filename} expands beyond its declared "
                    f"{info.file_size} bytes (zip bomb?)"
                )
            parts.append(chunk)
    return b"".join(parts)


def check_zip_limits(infos: Sequence[zipfile.ZipInfo], subject_id: str) -> None:
    """Raise :class:`ImageError` naming ``subject_id`` (any label) if the members of a zip break
    the safety limits: too many members, a path escaping the output folder (zip slip), a member
    over :data:`MAX_MEMBER_BYTES`, a compression ratio over :data:`MAX_COMPRESSION_RATIO`, or a
    total over :data:`MAX_TOTAL_BYTES`. Sizes are the ones the zip declares; :mod:`zipfile` never
    returns more than the declared size of a member."""
    if len(infos) > MAX_MEMBERS:
        raise ImageError(f"{subject_id}: zip holds {len(infos)} members, over {MAX_MEMBERS}")
    total = 0
    for info in infos:
        if _escapes(info.filename):
            raise ImageError(
                f"{subject_id}: member path {info.filename!r} escapes the output folder (zip slip)"
            )
        if info.file_size > MAX_MEMBER_BYTES:
            raise ImageError(
                f"{subject_id}: member {info.filename} would expand to "
                f"{info.file_size / 2**20:.0f} MiB, over the {MAX_MEMBER_BYTES // 2**20} MiB limit"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_CHECK_MIN_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise ImageError(
                f"{subject_id}: member {info.filename} has compression ratio {ratio:.0f}:1, over "
                f"{MAX_COMPRESSION_RATIO:.0f}:1 (zip bomb?)"
            )
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise ImageError(
            f"{subject_id}: zip would expand to {total / 2**30:.1f} GiB, over "
            f"{MAX_TOTAL_BYTES / 2**30:.0f} GiB"
        )


# The zip's manifest CSV ------------------------------------------------------------------------


def manifest_filenames(text: str, member_names: Iterable[str]) -> set[str]:
    """The member names a zip's manifest CSV lists, found by content rather than by header.

    The column whose values most often name a member is the file-name column (the real header
    is shifted against its rows). Values are matched by base name; rows that name no member in
    that column (the header, trailing blanks) and names the zip lacks are both returned as given,
    so the caller can report missing files.
    """
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    by_base = {PurePosixPath(n).name for n in member_names}
    width = max((len(row) for row in rows), default=0)
    counts = [
        sum(1 for row in rows if j < len(row) and PurePosixPath(row[j].strip()).name in by_base)
        for j in range(width)
    ]
    if not counts or max(counts) == 0:
        return set()
    column = int(np.argmax(counts))
    looks_like_file = re.compile(r"\.(dcm|ima)$|^\d+(\.\d+){4,}", re.IGNORECASE)
    return {
        PurePosixPath(row[column].strip()).name
        for row in rows
        if column < len(row) and looks_like_file.search(row[column].strip())
    }


def check_manifest(members: dict[str, bytes], subject_id: str) -> str:
    """The name of the zip's manifest CSV, once every file it lists is found among ``members``.

    Raises :class:`ImageError` when there is no member named ``*manifest*`` or when the zip lacks
    a file the manifest lists (a truncated download).
    """
    manifest_name = next((n for n in members if "manifest" in PurePosixPath(n).name.lower()), None)
    if manifest_name is None:
        raise ImageError(f"{subject_id}: zip has no manifest CSV (a member named *manifest*)")
    text = members[manifest_name].decode("utf-8", errors="replace")
    listed = manifest_filenames(text, members)
    present = {PurePosixPath(n).name for n in members}
    absent = sorted(listed - present)
    if absent:
        raise ImageError(
            f"{subject_id}: zip lacks {len(absent)} file(s) its manifest lists "
            f"(first {absent[0]}): truncated download?"
        )
    return manifest_name
