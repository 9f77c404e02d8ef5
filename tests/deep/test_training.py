"""Training pieces against hand-computed values, and a network that learns a known rule."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from liverfat.deep.training import (
    TrainingBatches,
    TrainSettings,
    balanced_weights,
    masked_loss,
    predict_network,
    scale_fat,
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


def _pad_and_slice(batch: torch.Tensor, max_shift: int, generator: torch.Generator):
    """The former per-sample translation: replicate padding, then one slice per image."""
    padded = torch.nn.functional.pad(batch, (max_shift,) * 4, mode="replicate")
    height, width = batch.shape[2:]
    offsets = torch.randint(0, 2 * max_shift + 1, (batch.shape[0], 2), generator=generator)
    return torch.stack(
        [padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)]
    )


@pytest.mark.parametrize("balance_bins", [0, 3])
def test_training_batches_match_index_pad_and_slice(balance_bins):
    """The one-gather batches on a device equal indexing the float set, padding and slicing
    each image, with the same generator draws (so CPU training is unchanged by the rewrite)."""
    rng = np.random.default_rng(1)
    formats = rng.integers(0, 256, (10, 2, 12, 20), dtype=np.uint8)
    targets = rng.normal(size=(10, 1))
    settings = TrainSettings(batch_size=4, max_shift_px=3, seed=5, balance_bins=balance_bins)
    batches = TrainingBatches(formats, targets, settings, 1.0, torch.device("cpu"))
    inputs, generator = to_input(formats, 1.0), torch.Generator().manual_seed(5)
    order, cursor = torch.randperm(10, generator=generator), 0
    for _ in range(6):  # past the end of the first epoch
        if balance_bins:
            weights = balanced_weights(targets[:, 0], balance_bins)
            index = torch.multinomial(weights, 4, True, generator=generator)
        else:
            if cursor + 4 > 10:
                order, cursor = torch.randperm(10, generator=generator), 0
            index, cursor = order[cursor : cursor + 4], cursor + 4
        expected = _pad_and_slice(inputs[index], 3, generator)
        x, y = batches.next()
        assert torch.equal(x, expected)
        assert torch.equal(y, torch.from_numpy(targets[index.numpy()].astype(np.float32)))


def test_training_batches_resize_once_like_to_input():
    formats = np.random.default_rng(2).integers(0, 256, (6, 1, 16, 24), dtype=np.uint8)
    settings = TrainSettings(batch_size=6, max_shift_px=0)
    batches = TrainingBatches(formats, np.zeros((6, 1)), settings, 0.5, torch.device("cpu"))
    assert batches.images.shape == (6, 1, 8, 12) and batches.images.dtype == torch.float32
    x, _ = batches.next()
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, to_input(formats, 0.5)[order])


def test_diverging_training_counts_nonfinite_losses():
    images = np.random.default_rng(3).integers(0, 256, (16, 1, 16, 16), dtype=np.uint8)
    targets = np.random.default_rng(3).normal(size=(16, 1))
    settings = TrainSettings(iterations=40, batch_size=8, learning_rate=1e8, head="mse")
    log = train_network(
        build_model("small_cnn", 1, 1), images, targets, settings, device=pick_device("cpu")
    )
    assert log.nonfinite_losses == int(np.sum(~np.isfinite(log.losses))) > 0


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
    log = train_network(model, images[:120], train, settings, device=pick_device("cpu"))
    assert np.mean(log.losses[-20:]) < np.mean(log.losses[:20])
    assert (log.precision, log.skipped_steps, log.nonfinite_losses) == ("float32", 0, 0)
    mean, var = predict_network(model, images[120:], 2, "mean_variance", device=pick_device("cpu"))
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
    log = train_network(model, images, np.zeros((8, 1)), settings, device=torch.device("cuda"))
    assert log.precision == "bfloat16"  # every GPU lent here (Hopper) has it natively
    mean, var = predict_network(model, images, 1, "mean_variance", device=torch.device("cuda"))
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


def test_fat_scaling_scales_the_map_and_its_target_together():
    generator = torch.Generator().manual_seed(0)
    images = torch.full((400, 2, 4, 4), 0.3)
    images[:, :, 0, 0] = 0.9  # a fat depot: saturates at 1 (50 %) once scaled above 1.11
    mean, std = 4.0, 5.0  # the targets' mean and SD (%): a target of 15 % standardised
    raw = torch.full((400, 1), 15.0)
    scaled, targets = scale_fat(
        images, (raw - mean) / std, (0.6, 2.0), torch.tensor([-mean / std]), generator
    )
    factor = scaled[:, 0, 1, 1] / 0.3
    assert factor.min() >= 0.6 - 1e-6 and factor.max() <= 2.0 + 1e-6
    # log-uniform: half of the factors below the geometric mean of the range
    assert (factor < math.sqrt(1.2)).float().mean() == pytest.approx(0.5, abs=0.08)
    assert torch.allclose(targets[:, 0] * std + mean, 15.0 * factor, rtol=1e-5)
    assert torch.allclose(scaled[:, 0, 0, 0], (0.9 * factor).clamp(max=1.0))
    assert torch.equal(scaled[:, 1], images[:, 1])  # other channels are not a fat fraction
    assert torch.equal(images[:, 0, 1, 1], torch.full((400,), 0.3))  # the input is not changed


def test_training_batches_scale_fat_only_when_asked():
    formats = np.full((6, 1, 8, 8), 100, np.uint8)
    targets = np.zeros((6, 1), np.float32)
    plain = TrainSettings(batch_size=6, max_shift_px=0, seed=0)
    x, y = TrainingBatches(formats, targets, plain, 1.0, torch.device("cpu")).next()
    assert torch.allclose(x, torch.full_like(x, 100 / 255)) and torch.equal(y, torch.zeros(6, 1))
    scaled = dataclasses.replace(plain, fat_scale_range=(2.0, 2.0))
    with pytest.raises(ValueError, match="target_zero"):
        TrainingBatches(formats, targets, scaled, 1.0, torch.device("cpu"))
    batches = TrainingBatches(formats, targets, scaled, 1.0, torch.device("cpu"), np.array([-1.0]))
    x, y = batches.next()
    # 0 standardised is 1 SD above 0 %: doubled, 2 SD above, so 1 in standardised units
    assert torch.allclose(x, torch.full_like(x, 200 / 255)) and torch.allclose(y, torch.ones(6, 1))
