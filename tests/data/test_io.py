"""Volume I/O through SimpleITK, DICOM series, and bad input."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.data.dixon import fat_fraction, two_point_dixon
from liverfat.data.geometry import check_same_geometry
from liverfat.data.io import list_dicom_series, nifti_payload_problem, read_volume, write_volume
from liverfat.errors import GeometryError, ImageError


def _image(shape=(5, 6, 7), value=None) -> sitk.Image:
    rng = np.random.default_rng(0)
    array = (
        rng.uniform(1, 100, size=shape).astype(np.float32)
        if value is None
        else np.full(shape, value, np.float32)
    )
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.23, 2.23, 3.0))
    image.SetOrigin((-10.5, 4.0, 120.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_geometry_and_values(tmp_path: Path, suffix: str) -> None:
    image = _image()
    path = write_volume(image, tmp_path / f"vol{suffix}")
    back = read_volume(path)
    check_same_geometry(image, back)
    assert np.allclose(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_bad_files_give_one_line_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"missing\.nii\.gz: file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    good = write_volume(_image(), tmp_path / "good.nii.gz")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(good.read_bytes()[:150])
    with pytest.raises(ImageError) as info:
        read_volume(corrupt)
    assert "corrupt.nii.gz" in str(info.value) and "\n" not in str(info.value)
    zero = write_volume(_image(value=0.0), tmp_path / "zero.nii.gz")
    with pytest.raises(ImageError, match="zero.nii.gz: image is all zeros"):
        read_volume(zero)
    assert np.count_nonzero(sitk.GetArrayViewFromImage(read_volume(zero, allow_empty=True))) == 0


def test_geometry_mismatch_names_both() -> None:
    a = _image()
    b = _image()
    b.SetOrigin((-10.5, 4.0, 126.0))
    with pytest.raises(GeometryError, match=r"water and fat differ in geometry: origin"):
        check_same_geometry(a, b, names=("water", "fat"))
    c = _image(shape=(5, 6, 8))
    with pytest.raises(GeometryError, match="size"):
        check_same_geometry(a, c)
    d = _image()
    d.SetOrigin((-10.5 + 1e-4, 4.0, 120.0))  # within tolerance
    check_same_geometry(a, d)


def test_dicom_series_split_by_echo_time(tmp_path: Path) -> None:
    """A two-echo series written with SimpleITK: one series UID, two echo times -> two volumes."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    volumes = {2.3: _image((4, 8, 8)), 4.6: _image((4, 8, 8))}
    uid = "1.2.826.0.1.3680043.2.1125.1"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    number = 0
    for te, volume in volumes.items():
        volume = sitk.Cast(sitk.RescaleIntensity(volume, 0, 1000), sitk.sitkInt16)
        volume.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
        for k in range(volume.GetDepth()):
            plane = volume[:, :, k]
            for key, value in {
                "0020|000e": uid,
                "0008|0060": "MR",
                "0018|0081": f"{te}",
                "0020|0011": "801",
                "0020|0032": "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, k)))),
                "0020|0037": "1\\0\\0\\0\\1\\0",
                "0020|0013": str(k + 1),
            }.items():
                plane.SetMetaData(key, value)
            number += 1
            writer.SetFileName(str(folder / f"IMG{number:04d}.dcm"))
            writer.Execute(plane)
    (folder / "notes.txt").write_text("not DICOM", encoding="utf-8")
    series = list_dicom_series(folder)
    assert [s.echo_time_ms for s in series] == [2.3, 4.6]
    assert all(len(s.files) == 4 for s in series)
    with pytest.raises(ImageError, match="expected one DICOM series, found 2"):
        read_volume(folder)
    volume = series[0].read()
    assert volume.GetSize() == (8, 8, 4)


def test_chaos_in_opposed_phase_dicom(shared_data: Path) -> None:
    root = shared_data / "chaos_mr_t1dual_dicom" / "dataset_sample"
    series = list_dicom_series(root)
    by_number: dict[str, dict[float, object]] = {}
    for s in series:
        by_number.setdefault(s.series_number, {})[s.echo_time_ms] = s
    assert set(by_number) == {"601", "801"}
    for number, echoes in by_number.items():
        assert len(echoes) == 2, f"series {number}: echoes {sorted(echoes)}"
        opposed, in_phase = (echoes[te] for te in sorted(echoes))  # 2.3 ms OP, 4.6 ms IP at 1.5 T
        assert opposed.echo_time_ms == pytest.approx(
            2.302
        ) and in_phase.echo_time_ms == pytest.approx(4.635)
        ip_image, op_image = in_phase.read(), opposed.read()
        check_same_geometry(ip_image, op_image, names=("in-phase", "opposed-phase"))
        water, fat = two_point_dixon(
            sitk.GetArrayFromImage(ip_image), sitk.GetArrayFromImage(op_image)
        )
        ff = fat_fraction(water, fat)
        assert ff.shape == sitk.GetArrayViewFromImage(ip_image).shape
        assert ff.min() >= 0 and ff.max() <= 50.0 + 1e-4, (
            "two-point magnitude FF is confined to 0-50 %"
        )
        body = (water + fat) > np.percentile(water + fat, 60)
        assert 0 < np.median(ff[body]) < 50


def _random_volume(shape=(20, 60, 80)) -> sitk.Image:
    rng = np.random.default_rng(0)
    return sitk.GetImageFromArray(rng.integers(1, 1000, shape).astype(np.int16))


@pytest.mark.parametrize("name, compress", [("v.nii.gz", True), ("v.nii", False)])
def test_truncated_nifti_is_refused_not_read_as_zeros(tmp_path, name, compress):
    path = write_volume(_random_volume(), tmp_path / name, compress=compress)
    assert nifti_payload_problem(path) == ""
    whole = path.read_bytes()
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    # SimpleITK alone reads it, the missing third as zeros
    assert np.mean(sitk.GetArrayFromImage(sitk.ReadImage(str(cut))) == 0) > 0.2
    with pytest.raises(ImageError, match="truncated"):
        read_volume(cut)


def test_a_full_disk_leaves_no_torn_file(tmp_path):
    disk = tmp_path / "tiny"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with pytest.raises(ImageError, match="not written .*disk full"):
            write_volume(_random_volume(), disk / "v.nii.gz")  # 192 kB of voxels
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        path = write_volume(_random_volume((2, 3, 4)), tmp_path / "v.nii.gz")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("name", ["ff.nii.gz", "ff.nii", "ff.mha"])
def test_nan_voxels_are_refused(tmp_path, name):
    array = np.ones((3, 4, 5), np.float32)
    array[1, 2, 3] = np.nan
    array[0, 0, 0] = np.inf
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    if name.startswith("ff.nii"):  # SimpleITK's NIfTI reader turns NaN into 0 on its own
        assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[1, 2, 3])
    with pytest.raises(ImageError, match="2 NaN or infinite voxel"):
        read_volume(path)
