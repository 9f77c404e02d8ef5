"""Volumes uploaded by someone else: a NIfTI file or a zip of one DICOM series, as untrusted bytes.

The kind is told by the bytes, not by the name a client gave them (gzip, a NIfTI-1/2 header, a
zip). Zips go through the safety limits of :mod:`liverfat.data.ukbiobank.zipsafe` (member paths,
sizes, compression ratio) and are extracted member by member as plain files (never links); the
folder must then hold exactly one DICOM series. A NIfTI header is checked before its voxels are
read, so a small file that declares a huge grid is refused instead of allocated.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from liverfat.data.io import list_dicom_series, read_header, read_volume
from liverfat.data.ukbiobank.zipsafe import check_zip_limits
from liverfat.errors import ImageError, one_line

#: The most voxels an uploaded volume may hold (a full UK Biobank scan has 14.4 million).
MAX_UPLOAD_VOXELS = 2**28

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip
#: (header size field, magic at its offset) of NIfTI-1 and NIfTI-2.
NIFTI_HEADERS = ((348, 344, (b"n+1\x00", b"ni1\x00")), (540, 4, (b"n+2\x00", b"ni2\x00")))


def upload_kind(path: str | os.PathLike[str]) -> str:
    """``"nii.gz"``, ``"nii"`` or ``"zip"`` from the file's first bytes.

    Raises :class:`ImageError` for anything else (empty, garbage, another image format).
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(560)
    if head.startswith(GZIP_MAGIC):
        try:
            with gzip.open(path, "rb") as handle:
                inner = handle.read(560)
        except (OSError, EOFError) as exc:
            raise ImageError(f"{path.name}: not a readable gzip ({one_line(exc)})") from exc
        if _is_nifti(inner):
            return "nii.gz"
        raise ImageError(f"{path.name}: a gzip file that does not hold a NIfTI image")
    if _is_nifti(head):
        return "nii"
    if head.startswith(ZIP_MAGICS):
        return "zip"
    raise ImageError(
        f"{path.name}: neither a NIfTI image (.nii, .nii.gz) nor a zip of one DICOM series"
    )


def _is_nifti(head: bytes) -> bool:
    for size, offset, magics in NIFTI_HEADERS:
        if len(head) < offset + 4:
            continue
        sizes = {struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]}
        if size in sizes and head[offset : offset + 4] in magics:
            return True
    return False


def read_upload(
    path: str | os.PathLike[str], work_dir: str | os.PathLike[str], *, label: str
) -> sitk.Image:
    """Read an uploaded NIfTI file or DICOM zip at ``path``; scratch files go in ``work_dir``.

    ``label`` names the upload in messages (e.g. the form field). The volume may be all zeros
    (the caller decides what that means).

    Raises
    ------
    ImageError
        One line naming ``label``: unknown or corrupt bytes, a header declaring more than
        :data:`MAX_UPLOAD_VOXELS` voxels, an unsafe zip, or a zip without exactly one series.
    """
    path, work_dir = Path(path), Path(work_dir)
    try:
        kind = upload_kind(path)
        if kind == "zip":
            image = _read_dicom_zip(path, work_dir / f"{label}.dicom")
        else:
            named = work_dir / f"{label}.{kind}"  # SimpleITK chooses its reader by the suffix
            if named != path:
                shutil.move(path, named)
            _check_voxel_count(read_header(named).GetSize())
            image = read_volume(named, allow_empty=True)
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ImageError(
                f"expected a 3-D single-component volume, got {image.GetDimension()}-D with "
                f"{image.GetNumberOfComponentsPerPixel()} component(s)"
            )
        return image
    except ImageError as exc:
        text = one_line(exc)
        for folder in {str(work_dir), str(path.parent)}:  # the client knows only its label
            text = text.replace(folder + os.sep, "")
        text = text.removeprefix(f"{path.name}: ")
        raise ImageError(f"upload {label!r}: {text}") from exc


def _read_dicom_zip(path: Path, folder: Path) -> sitk.Image:
    extract_zip(path, folder, label=path.name)
    series = list_dicom_series(folder)
    if len(series) != 1:
        found = ", ".join(s.label for s in series) or "none"
        raise ImageError(f"expected a zip of one DICOM series, found {len(series)} ({found})")
    width, height = read_header(series[0].files[0]).GetSize()[:2]
    _check_voxel_count((width, height, len(series[0].files)))
    return series[0].read()


def extract_zip(
    path: str | os.PathLike[str], folder: str | os.PathLike[str], *, label: str
) -> list[Path]:
    """Extract the file members of an untrusted zip into ``folder``; return their paths.

    The zip is checked with :func:`~liverfat.data.ukbiobank.zipsafe.check_zip_limits` first;
    members are copied as plain files in chunks (directories and links are not recreated).

    Raises
    ------
    ImageError
        Naming ``label``: not a zip, unsafe (see the limits), or a truncated or corrupt member.
    """
    folder = Path(folder)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ImageError(f"{label}: not a readable zip ({one_line(exc, limit=200)})") from exc
    written = []
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        check_zip_limits(infos, label)
        for info in infos:
            target = folder / info.filename.replace("\\", "/")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, 2**20)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise ImageError(
                    f"{label}: member {info.filename} is truncated or corrupt "
                    f"({one_line(exc, limit=200)})"
                ) from exc
            written.append(target)
    return written


def _check_voxel_count(size: tuple[int, ...]) -> None:
    voxels = float(np.prod([float(s) for s in size]))  # float: a forged header cannot overflow
    if voxels > MAX_UPLOAD_VOXELS:
        raise ImageError(
            f"a grid of {' x '.join(map(str, size))} voxels is over the limit of "
            f"{MAX_UPLOAD_VOXELS} voxels"
        )
