"""2D formats: geometry against a constructed volume, encoding, caching, registry."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.data.manifest import DixonImages, Manifest
from liverfat.deep import formats as F
from liverfat.errors import LiverfatError


def _box_subject(spacing=(4.46, 4.46, 6.0)) -> DixonImages:
    """A body box x in [-100, 100] mm, FF = 10 + 0.1 (x + 100) %, on a half-UKB-like grid."""
    size = (112, 87, 185)
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    origin = [-(n - 1) / 2 * s for n, s in zip(size[:2], spacing[:2], strict=True)] + [3.0]
    image.SetOrigin(origin)
    x = origin[0] + np.arange(size[0]) * spacing[0]
    y = origin[1] + np.arange(size[1]) * spacing[1]
    body = (np.abs(x)[None, None, :] <= 100) & (np.abs(y - 20)[None, :, None] <= 80)
    body = np.broadcast_to(body, (size[2], size[1], size[0]))
    ff = np.where(body, 10 + 0.1 * (x[None, None, :] + 100), 0).astype(np.float32)
    total = np.where(body, 100.0, 1.0).astype(np.float32)

    def img(a):
        out = sitk.GetImageFromArray(np.ascontiguousarray(a, np.float32))
        out.CopyInformation(image)
        return out

    return DixonImages("box", img(total * (1 - ff / 100)), img(total * ff / 100), img(ff))


def test_liverfat_format_samples_the_planes_of_the_body_centres():
    dixon = _box_subject()
    planes = F.slice_planes(dixon)
    assert planes.coronal_y_mm == pytest.approx(20, abs=2.3)  # body centre in y
    assert planes.sagittal_x_mm == pytest.approx(-50, abs=2.3)  # centre of the right half
    array = F.liverfat_format(dixon)
    assert array.shape == (1, 176, 376) and array.dtype == np.uint8
    # Sagittal half: FF at x = -50 mm is 15 % -> 15 * 255 / 50 = 76.5.
    sagittal = F.decode_ff(array[0, 88, 224 + 76])
    assert sagittal == pytest.approx(15, abs=0.6)
    # Coronal column c sits at x = (c - 111.5) * 2.23 mm: FF follows the ramp there.
    for column in (80, 112, 150):
        x = (column - 111.5) * 2.23
        assert F.decode_ff(array[0, 88, column]) == pytest.approx(10 + 0.1 * (x + 100), abs=0.6)
    assert array[0, 88, 0] == 0  # outside the body


def test_encoding_round_trip_and_clipping():
    ff = np.array([-3.0, 0.0, 12.3, 50.0, 80.0])
    encoded = F.encode_ff(ff)
    assert encoded.tolist() == [0, 0, 63, 255, 255]
    assert np.abs(F.decode_ff(encoded[1:4]) - ff[1:4]).max() <= 50 / 255 / 2 + 1e-6


def test_same_size_at_every_scale_and_same_anatomy(phantom_manifest, tmp_path):
    from liverfat.data.manifest import Manifest
    from liverfat.data.phantom import generate_cohort

    half = Manifest.load(
        generate_cohort(1, tmp_path / "h", seed=1, scale="half", executor="serial", progress=False)
    )
    sid = half.subject_ids[0]
    quarter = F.compute_format(phantom_manifest, sid, "liverfat")
    halfs = F.compute_format(half, sid, "liverfat")
    assert quarter.shape == halfs.shape == (1, 176, 376)
    r = np.corrcoef(quarter.ravel().astype(float), halfs.ravel().astype(float))[0, 1]
    assert r > 0.6
    projection = F.compute_format(half, sid, "projection")
    assert projection.shape == (3, 256, 256) and projection.dtype == np.uint8
    liver = F.get_format("liverfat").align(half.dixon(sid), half.liver_mask(sid)) > 0.5
    # The liver sits at the patient's right (image left of the coronal half), upper abdomen.
    rows, columns = np.nonzero(liver[:, :224])
    assert liver.any() and columns.mean() < 112


def test_cache_reuses_and_invalidates(phantom_manifest, tmp_path, monkeypatch):
    sid = phantom_manifest.subject_ids[0]
    first = F.load_or_compute(phantom_manifest, sid, "liverfat", tmp_path)
    files = list(tmp_path.glob(f"{sid}.*.npy"))
    assert len(files) == 1
    calls = []
    monkeypatch.setattr(F, "compute_format", lambda *a: calls.append(a) or first)
    again = F.load_or_compute(phantom_manifest, sid, "liverfat", tmp_path)
    assert not calls and np.array_equal(first, again)
    key = F.format_key(phantom_manifest, sid, "liverfat")
    assert key != F.format_key(phantom_manifest, sid, "projection")
    assert key != F.format_key(phantom_manifest, phantom_manifest.subject_ids[1], "liverfat")
    # an input file that changes (here its modification time) invalidates the cached format
    cohort = Manifest.load(shutil.copytree(phantom_manifest.path.parent, tmp_path / "cohort"))
    water = cohort.image_path(sid, "water")
    before = F.format_key(cohort, sid, "liverfat")
    for _ in range(2):
        F.load_or_compute(cohort, sid, "liverfat", tmp_path / "cache")
    assert len(calls) == 1  # computed once, then reused
    os.utime(water, ns=(water.stat().st_atime_ns, water.stat().st_mtime_ns + 10**9))
    assert F.format_key(cohort, sid, "liverfat") != before
    F.load_or_compute(cohort, sid, "liverfat", tmp_path / "cache")
    assert len(calls) == 2  # computed again


def test_user_format_registration_and_shape_check(phantom_manifest):
    @F.register_format("test_constant", shape=(1, 8, 8))
    def constant(dixon):
        return np.full((1, 8, 8), 7, np.uint8)

    @F.register_format("test_wrong", shape=(1, 8, 8))
    def wrong(dixon):
        return np.zeros((1, 4, 4), np.float32)

    sid = phantom_manifest.subject_ids[0]
    assert F.compute_format(phantom_manifest, sid, "test_constant").sum() == 7 * 64
    with pytest.raises(LiverfatError, match="expected uint8"):
        F.compute_format(phantom_manifest, sid, "test_wrong")
    with pytest.raises(LiverfatError, match="unknown format"):
        F.get_format("nope")


def test_masked_format_zeroes_background_only(phantom_manifest):
    sid = phantom_manifest.subject_ids[0]
    plain = F.compute_format(phantom_manifest, sid, "liverfat")
    masked = F.compute_format(phantom_manifest, sid, "liverfat_masked")
    changed = plain != masked
    assert (masked[changed] == 0).all()
    assert 0.05 < changed.mean() < 0.7  # background noise removed, the body kept
    assert plain[0, 60:120, 60:100].mean() == pytest.approx(masked[0, 60:120, 60:100].mean(), abs=2)
