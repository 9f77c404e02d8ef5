"""Reading and writing volumes (NIfTI, NRRD, MHA, DICOM series folders) through SimpleITK.

This module and its siblings in :mod:`liverfat.data` are the only code that touches image files.
Geometry (size, spacing, origin, direction) is always kept. Every failure is an
:class:`~liverfat.errors.ImageError` whose one-line message names the file.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from liverfat.data.atomic import atomic_path
from liverfat.errors import ImageError, one_line

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def read_volume(path: str | os.PathLike[str], *, allow_empty: bool = False) -> sitk.Image:
    """Read a volume file or a DICOM series folder (a folder with exactly one series and echo).

    Raises
    ------
    ImageError
        Missing, unreadable, truncated or corrupt file; a folder with zero or several series;
        NaN or infinite voxels; an all-zero volume unless ``allow_empty``.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if path.is_dir():
        series = list_dicom_series(path)
        if len(series) != 1:
            found = ", ".join(s.label for s in series) or "none"
            raise ImageError(f"{path}: expected one DICOM series, found {len(series)} ({found})")
        image = series[0].read()
    else:
        problem = nifti_payload_problem(path)
        if problem:
            raise ImageError(f"{path}: {problem}")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise ImageError(f"{path}: cannot read image ({one_line(exc, limit=300)})") from exc
    voxels = sitk.GetArrayViewFromImage(image)
    if voxels.dtype.kind == "f" and not np.isfinite(voxels).all():  # formats that keep NaN
        bad = int(np.count_nonzero(~np.isfinite(voxels)))
        raise ImageError(f"{path}: {bad} NaN or infinite voxel(s)")  # they would read as 0 % fat
    if not allow_empty and not np.any(voxels):
        raise ImageError(f"{path}: image is all zeros")
    return image


def read_header(path: str | os.PathLike[str]) -> sitk.ImageFileReader:
    """Read only the header of a volume file (fast geometry checks)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageError(f"{path}: cannot read image header ({one_line(exc, limit=300)})") from exc
    return reader


def write_volume(image: sitk.Image, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write ``image`` atomically; the format follows the suffix (``.nii.gz``, ``.nrrd``, ...)."""
    path = Path(path)
    if not path.name.endswith(VOLUME_SUFFIXES):
        raise ImageError(f"{path}: unsupported suffix (use one of {', '.join(VOLUME_SUFFIXES)})")
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
        # SimpleITK reports a short write (a full disk) on stderr only: check before the rename
        problem = nifti_payload_problem(tmp)
        if problem:
            raise ImageError(f"{path}: not written ({problem}; is the disk full?)")
    return path


#: NIfTI-1 header: its size, and the offsets of ``dim`` (8 int16), ``datatype`` and ``bitpix``
#: (int16) and ``vox_offset`` (float32).
_NIFTI1_HEADER_BYTES, _DIM_AT, _DATATYPE_AT, _BITPIX_AT, _VOX_OFFSET_AT = 348, 40, 70, 72, 108
#: NIfTI datatype codes of float32 and float64 voxels.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def nifti_payload_problem(path: str | os.PathLike[str]) -> str:
    """Why a NIfTI-1 file (``.nii`` or ``.nii.gz``) cannot be trusted, or "" if it is whole.

    SimpleITK reads a truncated ``.nii.gz`` as an image whose missing part is zeros, and NaN or
    infinite float voxels as 0. Cheap for integer images, which are most reads: the file (a
    ``.nii``) or its gzip stream's recorded length (the trailer of a ``.nii.gz``) must match what
    the header declares; a cut file ends in compressed data instead of that trailer. Float
    images are decompressed in full (the CRC checked) and their voxels must be finite. Other
    formats, and NIfTI-2, give "".
    """
    import gzip
    import zlib

    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        return ""
    compressed = path.name.endswith(".gz")
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(_NIFTI1_HEADER_BYTES)
            if len(head) < _NIFTI1_HEADER_BYTES:
                return f"truncated: {len(head)} bytes, not even a NIfTI header"
            layout = _nifti1_layout(head)
            if layout is None:
                return ""
            offset, needed, dtype = layout
            if dtype is None:
                if compressed:
                    whole = _gzip_length(path) == needed % 2**32
                    length = "a gzip trailer that does not match"
                else:
                    whole = path.stat().st_size >= needed
                    length = f"{path.stat().st_size} bytes"
                return "" if whole else f"truncated: {length} where the header declares {needed}"
            payload = handle.read()  # the rest, from the voxel data's offset on
    except (EOFError, OSError, zlib.error) as exc:
        return f"truncated or corrupt file ({one_line(exc, limit=120)})"
    size = len(payload) + _NIFTI1_HEADER_BYTES
    if size < needed:
        return f"truncated: {size} bytes where the header declares {needed}"
    count = (needed - offset) // dtype.itemsize
    values = np.frombuffer(payload, dtype, count=count, offset=offset - _NIFTI1_HEADER_BYTES)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        return f"{bad} NaN or infinite voxel(s)"  # SimpleITK would read them as 0
    return ""


def _gzip_length(path: Path) -> int:
    """The uncompressed length (mod 2**32) a gzip file's trailer records."""
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return int.from_bytes(handle.read(4), "little")


def _nifti1_layout(head: bytes) -> tuple[int, int, np.dtype | None] | None:
    """(voxel offset, bytes the file needs, float dtype or None) of a NIfTI-1 header; None if it
    is not one."""
    if len(head) < _NIFTI1_HEADER_BYTES:
        return None
    sizes = {o: int(np.frombuffer(head[:4], f"{o}i4")[0]) for o in "<>"}
    order = next((o for o, size in sizes.items() if size == _NIFTI1_HEADER_BYTES), None)
    if order is None:
        return None

    def field(at: int, kind: str, count: int = 1) -> np.ndarray:
        return np.frombuffer(head, f"{order}{kind}", count=count, offset=at)

    dims = field(_DIM_AT, "i2", 8)
    bitpix = int(field(_BITPIX_AT, "i2")[0])
    n_dims = int(dims[0])
    if not 1 <= n_dims <= 7 or bitpix <= 0:
        return None
    offset = int(max(float(field(_VOX_OFFSET_AT, "f4")[0]), _NIFTI1_HEADER_BYTES))
    voxels = int(np.prod([max(int(d), 1) for d in dims[1 : n_dims + 1]], dtype=np.int64))
    kind = _NIFTI_FLOATS.get(int(field(_DATATYPE_AT, "i2")[0]))
    return offset, offset + voxels * bitpix // 8, np.dtype(f"{order}{kind}") if kind else None


def array_to_image(
    array: np.ndarray, reference: sitk.Image | None = None, **geometry
) -> sitk.Image:
    """Wrap a (z, y, x) array as an image with ``reference``'s geometry or the given one.

    ``geometry`` keywords: ``spacing``, ``origin``, ``direction`` (x, y, z order, mm).
    """
    image = sitk.GetImageFromArray(array)
    if reference is not None:
        image.CopyInformation(reference)
    if "spacing" in geometry:
        image.SetSpacing([float(s) for s in geometry["spacing"]])
    if "origin" in geometry:
        image.SetOrigin([float(o) for o in geometry["origin"]])
    if "direction" in geometry:
        image.SetDirection([float(d) for d in geometry["direction"]])
    return image


# DICOM ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomSeries:
    """The files of one DICOM series at one echo time, sorted along the slice normal."""

    series_uid: str
    echo_time_ms: float | None
    description: str
    series_number: str
    files: tuple[Path, ...]

    @property
    def label(self) -> str:
        te = "" if self.echo_time_ms is None else f" TE {self.echo_time_ms:g} ms"
        name = self.description or f"series {self.series_number}"
        return f"{name}{te} ({len(self.files)} files)"

    def read(self) -> sitk.Image:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in self.files])
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise ImageError(
                f"{self.files[0].parent}: cannot read DICOM series {self.label} "
                f"({one_line(exc, limit=300)})"
            ) from exc
        return image


def list_dicom_series(folder: str | os.PathLike[str]) -> list[DicomSeries]:
    """Find DICOM files under ``folder`` (recursively), grouped by series UID and echo time.

    Multi-echo acquisitions often share one series UID (in/opposed-phase pairs); they are split
    into one :class:`DicomSeries` per echo time. Non-DICOM files are ignored.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[tuple[str, float | None], list[tuple[float, Path, object]]] = defaultdict(list)
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "ImagePositionPatient" not in ds:
            continue
        te = float(ds.EchoTime) if ds.get("EchoTime") not in (None, "") else None
        groups[(str(ds.get("SeriesInstanceUID", "")), te)].append((slice_position_mm(ds), path, ds))
    series = []
    for (uid, te), members in groups.items():
        members.sort(key=lambda m: m[0])
        ds = members[0][2]
        series.append(
            DicomSeries(
                series_uid=uid,
                echo_time_ms=te,
                description=str(ds.get("SeriesDescription", "")),
                series_number=str(ds.get("SeriesNumber", "")),
                files=tuple(m[1] for m in members),
            )
        )
    series.sort(key=lambda s: (s.series_number, s.series_uid, s.echo_time_ms or 0.0))
    return series


def slice_normal(orientation) -> np.ndarray:
    """The slice normal of a DICOM ``ImageOrientationPatient`` (row x column direction cosines)."""
    orientation = np.asarray(orientation, float)
    return np.cross(orientation[:3], orientation[3:])


def slice_position_mm(ds) -> float:
    """Position of a DICOM slice along its normal (mm), for ordering and spacing.

    A slice without ``ImageOrientationPatient`` is taken as axial (identity orientation).
    """
    normal = slice_normal(ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]))
    return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float)))
