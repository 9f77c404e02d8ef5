"""Augmentation: random gamma and monotone curves (one draw per slice, labels kept) and the
random affine (image and label moved together, within the stated rotation and scale)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liverfat.errors import LiverfatError
from liverfat.segmentation.engine import SegmentationEngine
from liverfat.segmentation.training import (
    AFFINE_ROTATION_DEG,
    AFFINE_SCALE,
    GAMMA_RANGE,
    SegmentationSettings,
    augment,
)


def _batch(n: int = 6, channels: int = 3, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices whose channels each span exactly [0, 1] (so a gamma acts as x ** gamma)."""
    x = torch.rand(n, channels, size, size)
    x[..., 0, 0], x[..., 0, 1] = 0.0, 1.0
    return x, (torch.rand(n, size, size) > 0.5).long()


def test_gamma_is_one_power_per_slice_within_range():
    x, y = _batch()
    settings = SegmentationSettings(elastic_prob=0.0, gamma_prob=1.0)
    out, labels = augment(x, y, settings, np.random.default_rng(3))
    assert torch.equal(labels, y)
    per_slice = []
    for before, after in zip(x, out, strict=True):
        inside = (before > 0.05) & (before < 0.95)
        per_slice.append(torch.log(after[inside]) / torch.log(before[inside]))
    for g in per_slice:  # one gamma for every channel and pixel of the slice
        assert float(g.max() - g.min()) < 1e-3
        assert GAMMA_RANGE[0] - 1e-3 <= float(g.mean()) <= GAMMA_RANGE[1] + 1e-3
    assert len({round(float(g.mean()), 3) for g in per_slice}) > 1  # drawn per slice


def test_histogram_shift_is_monotone_and_keeps_the_range():
    x, y = _batch()
    settings = SegmentationSettings(elastic_prob=0.0, histogram_shift_prob=1.0)
    out, labels = augment(x, y, settings, np.random.default_rng(5))
    assert torch.equal(labels, y)
    assert not torch.allclose(out, x, atol=1e-3)
    for before, after in zip(x, out, strict=True):  # one curve over all channels of a slice
        order = before.flatten().argsort()
        assert bool((after.flatten()[order].diff() >= -1e-5).all())
        assert float(after.min()) == pytest.approx(0.0, abs=1e-5)
        assert float(after.max()) == pytest.approx(1.0, abs=1e-5)


def test_no_curve_without_probability_and_probabilities_are_checked():
    x, y = _batch()
    out, _ = augment(x, y, SegmentationSettings(elastic_prob=0.0), np.random.default_rng(0))
    assert torch.equal(out, x)
    with pytest.raises(LiverfatError, match="gamma_prob"):
        SegmentationEngine(gamma_prob=1.5)


def test_affine_moves_image_and_label_together_within_rotation_and_scale():
    """Two disks at 20.5 px from the slice centre, one along each axis: from where their
    centroids land, the map's rotation and per-axis scales are read back exactly and must lie
    within the stated ranges."""
    n, size, centre, d = 12, 64, 31.5, 20.5
    rows, cols = np.mgrid[:size, :size]
    before = np.array([[0.0, d], [-d, 0.0]])  # (row, col) offsets: right disk, top disk
    disks = sum((rows - centre - r) ** 2 + (cols - centre - c) ** 2 <= 16 for r, c in before)
    y = torch.from_numpy(np.repeat(disks[None], n, 0)).long()
    x = y[:, None].float().repeat(1, 2, 1, 1)
    settings = SegmentationSettings(elastic_prob=0.0, affine_prob=1.0)
    out, labels = augment(x, y, settings, np.random.default_rng(7))
    angles, scales = [], []
    for image, label in zip(out, labels, strict=True):
        inside = label.numpy().astype(bool)
        assert np.array_equal(image[0].numpy() >= 0.5, inside)  # image and label together
        right, top = inside & (cols > centre + d / 2), inside & (rows < centre - d / 2)
        after = np.array([[rows[m].mean() - centre, cols[m].mean() - centre] for m in (right, top)])
        # after = before @ M.T for the map M from input to output; M^-1 = rotation @ diag(scale)
        inverse = np.linalg.inv(np.linalg.solve(before, after).T)
        columns = inverse / np.linalg.norm(inverse, axis=0)
        assert abs(columns[:, 0] @ columns[:, 1]) < 0.03  # a rotation times an axis scaling
        angles.append(np.degrees(np.arctan2(columns[1, 0], columns[0, 0])))
        scales.extend(np.linalg.norm(inverse, axis=0))
    assert max(np.abs(angles)) <= AFFINE_ROTATION_DEG + 0.5
    assert max(np.abs(angles)) > AFFINE_ROTATION_DEG / 2  # it does rotate
    assert min(scales) >= 1 - AFFINE_SCALE - 0.02 and max(scales) <= 1 + AFFINE_SCALE + 0.02
    assert max(scales) - min(scales) > AFFINE_SCALE  # and scale


def test_no_affine_without_probability():
    x, y = _batch()
    out, labels = augment(
        x, y, SegmentationSettings(elastic_prob=0.0, affine_prob=0.0), np.random.default_rng(0)
    )
    assert torch.equal(out, x) and torch.equal(labels, y)
    with pytest.raises(LiverfatError, match="affine_prob"):
        SegmentationEngine(affine_prob=-0.1)
