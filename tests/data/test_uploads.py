"""Uploaded volumes as untrusted bytes: kind by content, forged headers, unsafe zips."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.data.io import write_volume
from liverfat.data.uploads import MAX_UPLOAD_VOXELS, read_upload, upload_kind
from liverfat.errors import ImageError


def _volume() -> sitk.Image:
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    image.SetSpacing((1.5, 1.5, 3.0))
    image.SetOrigin((-10.0, 4.0, 120.0))
    return image


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_is_known_by_its_bytes_whatever_its_name(tmp_path: Path, suffix: str) -> None:
    written = write_volume(_volume(), tmp_path / f"v{suffix}")
    upload = tmp_path / "upload.bin"
    upload.write_bytes(written.read_bytes())
    assert upload_kind(upload) == suffix[1:]
    image = read_upload(upload, tmp_path, label="water")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(_volume()))
    assert image.GetSpacing() == (1.5, 1.5, 3.0)


def test_garbage_and_forged_headers_are_refused_in_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.upload"
    garbage.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ImageError, match=r"^upload 'file': neither a NIfTI image") as raised:
        read_upload(garbage, tmp_path, label="file")
    assert str(tmp_path) not in str(raised.value)  # the server's scratch paths stay private

    header = bytearray(write_volume(_volume(), tmp_path / "v.nii", compress=False).read_bytes())
    header[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)[:16]  # dim[0..7]
    forged = tmp_path / "forged.upload"
    forged.write_bytes(bytes(header))
    with pytest.raises(ImageError, match=f"over the limit of {MAX_UPLOAD_VOXELS} voxels"):
        read_upload(forged, tmp_path, label="fat")


def test_unsafe_or_empty_zips_are_refused(tmp_path: Path) -> None:
    slip = tmp_path / "slip.upload"
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("../../etc/evil.dcm", b"x")
    with pytest.raises(ImageError, match="escapes the output folder"):
        read_upload(slip, tmp_path, label="file")
    assert not (tmp_path.parent / "etc").exists()

    notes = tmp_path / "notes.upload"
    with zipfile.ZipFile(notes, "w") as archive:
        archive.writestr("notes.txt", b"not DICOM")
    with pytest.raises(ImageError, match="one DICOM series, found 0"):
        read_upload(notes, tmp_path, label="file")
