"""Training pieces against hand-computed values, and a network that learns a known rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from liverfat.deep.training import (
    TrainSettings,
    balanced_weights,
    masked_loss,
    predict_network,
    to_input,
    train_network,
    translate,
)
from liverfat.nn.device import pick_device
from liverfat.nn.registry import build_model


def test_masked_losses_by_hand():
    out = torch.tensor([[1.0, 2.0, 0.0, math.log(4.0)]])
    y = torch.tensor([[0.0, float("nan")]])
    assert masked_loss(out[:, :2], y, "mse").item() == pytest.approx(1.0)
    # NLL of target 0 only: 0.5 * (log 1 + 1^2 / 1) = 0.5.
    assert masked_loss(out, y, "mean_variance").item() == pytest.approx(0.5)
    y2 = torch.tensor([[0.0, 0.0]])
    expected = (0.5 + 0.5 * (math.log(4.0) + 4.0 / 4.0)) / 2
    assert masked_loss(out, y2, "mean_variance").item() == pytest.approx(expected)


def test_translation_replicates_edges():
    image = torch.arange(25.0).reshape(1, 1, 5, 5)
    generator = torch.Generator().manual_seed(0)
    shifted = translate(image.repeat(50, 1, 1, 1), 2, generator)
    assert shifted.shape == (50, 1, 5, 5)
    values = set(torch.unique(shifted).tolist())
    assert values <= set(range(25))  # replicate padding adds no new values
    assert any(not torch.equal(s, image[0]) for s in shifted)


def test_network_learns_mean_intensity_with_missing_targets():
    """Two targets from image content; 30 % of values missing; held-out R^2 > 0.8 on both."""
    rng = np.random.default_rng(0)
    n = 160
    brightness = rng.uniform(0, 1, n)
    size = rng.uniform(4, 14, n)
    images = np.zeros((n, 1, 32, 32), np.uint8)
    for i in range(n):
        half = int(size[i])
        images[i, 0, 16 - half : 16 + half, 16 - half : 16 + half] = int(40 + 200 * brightness[i])
    targets = np.stack([brightness, size], 1)
    standard = (targets - targets.mean(0)) / targets.std(0)
    train = standard[:120].copy()
    train[rng.uniform(size=train.shape) < 0.3] = np.nan
    model = build_model("small_cnn", 1, 4)
    settings = TrainSettings(iterations=300, batch_size=16, learning_rate=3e-3, max_shift_px=2)
    losses = train_network(
        model, to_input(images[:120], 1.0), train, settings, device=pick_device("cpu")
    )
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    mean, var = predict_network(
        model, to_input(images[120:], 1.0), 2, "mean_variance", device=pick_device("cpu")
    )
    for j in range(2):
        truth = standard[120:, j]
        r2 = 1 - np.sum((mean[:, j] - truth) ** 2) / np.sum((truth - truth.mean()) ** 2)
        assert r2 > 0.8, (j, r2)
    assert np.all(var > 0)


@pytest.mark.gpu
def test_cuda_mixed_precision_channels_last():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device in this environment")
    model = build_model("resnet50", 1, 2)
    images = np.random.default_rng(0).integers(0, 255, (8, 1, 176, 376), dtype=np.uint8)
    settings = TrainSettings(iterations=3, batch_size=4)
    train_network(
        model, to_input(images, 1.0), np.zeros((8, 1)), settings, device=torch.device("cuda")
    )
    mean, var = predict_network(
        model, to_input(images, 1.0), 1, "mean_variance", device=torch.device("cuda")
    )
    assert mean.shape == (8, 1) and np.isfinite(var).all()


def test_beta_nll_weights_each_value_by_its_variance_by_hand():
    out = torch.tensor([[0.0, math.log(4.0)]], requires_grad=True)
    y = torch.tensor([[2.0]])
    nll = 0.5 * (math.log(4.0) + 4.0 / 4.0)
    assert masked_loss(out, y, "mean_variance", nll_beta=1.0).item() == pytest.approx(4.0 * nll)
    masked_loss(out, y, "mean_variance", nll_beta=1.0).backward()
    assert out.grad[0, 0].item() == pytest.approx(-2.0)  # the MSE gradient (0.5 * 2 * error)


def test_balanced_weights_by_hand():
    weights = balanced_weights(np.array([0.0, 0.0, 0.0, 0.0, 10.0, np.nan]), bins=2)
    # bins [0, 5) holds 4 values plus the missing one (counted as the median, 0): 1 / sqrt(5);
    # bin [5, 10] holds one: 1
    assert weights.tolist() == pytest.approx([5**-0.5] * 4 + [1.0] + [5**-0.5])
