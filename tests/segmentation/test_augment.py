"""Intensity augmentation: random gamma and monotone curves, one draw per slice, labels kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liverfat.errors import LiverfatError
from liverfat.segmentation.engine import SegmentationEngine
from liverfat.segmentation.training import GAMMA_RANGE, SegmentationSettings, augment


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
