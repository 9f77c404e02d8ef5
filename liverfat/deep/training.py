"""Training and inference of a 2D regression network on uint8 formats.

Targets are standardised (zero mean, unit variance over the training subjects that have them).
The head predicts either the means (``mse``) or means and log-variances (``mean_variance``,
Gaussian negative log-likelihood); missing targets (NaN) are masked out of the loss, so several
targets with gaps train together. Adam with a learning rate reduced tenfold for the last sixth of
the iterations; augmentation by random translations with edge replication; on CUDA, mixed
precision and channels-last memory (both from :mod:`liverfat.nn.device`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from liverfat.nn.device import channels_last, grad_scaler, mixed_precision

HEADS = ("mse", "mean_variance")
#: Log-variance is clamped to this range (standardised units) for numerical safety.
LOG_VARIANCE_RANGE = (-12.0, 8.0)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings. ``max_shift_px`` is in pixels of the (scaled) network input;
    ``nll_beta`` weights the mean-variance loss (see :func:`masked_loss`); ``balance_bins`` > 0
    draws batches balanced over the first target's range (see :func:`balanced_weights`)."""

    iterations: int = 6000
    batch_size: int = 32
    learning_rate: float = 1e-4
    max_shift_px: int = 16
    head: str = "mean_variance"
    seed: int = 0
    nll_beta: float = 0.0
    balance_bins: int = 0


def to_input(formats: np.ndarray, input_scale: float) -> torch.Tensor:
    """uint8 (n, c, h, w) to float32 in [0, 1], resized by ``input_scale`` (area averaging)."""
    x = torch.from_numpy(np.ascontiguousarray(formats)).float().div_(255.0)
    if input_scale != 1.0:
        size = [max(8, int(round(s * input_scale))) for s in x.shape[2:]]
        x = F.interpolate(x, size=size, mode="area" if input_scale < 1 else "bilinear")
    return x


def translate(batch: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, replicating the edges."""
    if max_shift <= 0:
        return batch
    padded = F.pad(batch, (max_shift,) * 4, mode="replicate")
    height, width = batch.shape[2:]
    offsets = torch.randint(0, 2 * max_shift + 1, (batch.shape[0], 2), generator=generator)
    return torch.stack(
        [
            padded[i, :, int(dy) : int(dy) + height, int(dx) : int(dx) + width]
            for i, (dy, dx) in enumerate(offsets)
        ]
    )


def balanced_weights(target: np.ndarray, bins: int) -> torch.Tensor:
    """Sampling weight per subject: 1 / sqrt(subjects in its bin), with ``bins`` equal-width
    bins over the range of ``target`` (missing values count as the median).

    Rare values (the few subjects with high liver fat) are drawn more often, but, through the
    square root, not as often as the bulk: full inverse-frequency weights would show the
    network a handful of subjects over and over.
    """
    values = np.asarray(target, float)
    values = np.where(np.isfinite(values), values, np.nanmedian(values))
    edges = np.linspace(values.min(), values.max(), bins + 1)[1:-1]
    index = np.searchsorted(edges, values, side="right")
    counts = np.bincount(index, minlength=bins)
    return torch.from_numpy(1.0 / np.sqrt(counts[index]))


def masked_loss(
    output: torch.Tensor, target: torch.Tensor, head: str, nll_beta: float = 0.0
) -> torch.Tensor:
    """MSE or Gaussian NLL over the observed (non-NaN) targets of a batch.

    ``nll_beta`` > 0 gives the beta-NLL of Seitzer et al. (ICLR 2022): each value's NLL is
    weighted by its predicted variance to the power beta, held constant in the gradient. The
    plain NLL (beta 0) lets the network explain a hard subject by a large variance instead of
    moving its mean, which under-predicts the rare high values; beta 1 gives the mean the
    gradient of the MSE while the variance is still learned.
    """
    n_targets = target.shape[1]
    observed = ~torch.isnan(target)
    y = torch.nan_to_num(target)
    mean = output[:, :n_targets].float()
    if head == "mse":
        per_value = (mean - y) ** 2
    else:
        log_var = output[:, n_targets:].float().clamp(*LOG_VARIANCE_RANGE)
        per_value = 0.5 * (log_var + (mean - y) ** 2 * torch.exp(-log_var))
        if nll_beta:
            per_value = per_value * torch.exp(nll_beta * log_var).detach()
    return (per_value * observed).sum() / observed.sum().clamp(min=1)


def train_network(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: np.ndarray,
    settings: TrainSettings,
    *,
    device: torch.device,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` in place on inputs (n, c, h, w) and standardised targets (n, t) with NaNs.

    Returns the loss of every iteration. Batches are drawn with replacement-free epochs from a
    generator seeded with ``settings.seed``.
    """
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    cuda = device.type == "cuda"
    model.to(device)
    if cuda:
        channels_last(model)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    decay_at = settings.iterations - settings.iterations // 6
    scaler = grad_scaler(device)
    y_all = torch.from_numpy(np.asarray(targets, np.float32))
    n = inputs.shape[0]
    order = torch.randperm(n, generator=generator)
    cursor = 0
    weights = (
        balanced_weights(targets[:, 0], settings.balance_bins) if settings.balance_bins else None
    )
    losses = []
    bar = tqdm(range(settings.iterations), desc="training", disable=not progress, unit="it")
    for iteration in bar:
        if iteration == decay_at:
            for group in optimiser.param_groups:
                group["lr"] = settings.learning_rate / 10
        if weights is not None:
            index = torch.multinomial(weights, settings.batch_size, True, generator=generator)
        else:
            if cursor + settings.batch_size > n:
                order, cursor = torch.randperm(n, generator=generator), 0
            index = order[cursor : cursor + settings.batch_size]
            cursor += settings.batch_size
        x = translate(inputs[index], settings.max_shift_px, generator).to(device)
        if cuda:
            x = channels_last(x)
        y = y_all[index].to(device)
        with mixed_precision(device):
            loss = masked_loss(model(x), y, settings.head, settings.nll_beta)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        losses.append(loss.detach())  # no float() here: on a GPU it waits for every step
        if iteration % 20 == 0:
            bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
    model.eval()
    return torch.stack(losses).float().cpu().tolist() if losses else []


@torch.no_grad()
def predict_network(
    model: nn.Module,
    inputs: torch.Tensor,
    n_targets: int,
    head: str,
    *,
    device: torch.device,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Standardised means (n, t) and variances (n, t; NaN for the ``mse`` head).

    Inference uses channels-last memory on every device (on a CPU, oneDNN's convolutions are
    about a quarter faster that way for ResNet50) and mixed precision on CUDA.
    """
    model.to(device).eval()
    channels_last(model)
    outputs = []
    for start in range(0, inputs.shape[0], batch_size):
        x = channels_last(inputs[start : start + batch_size].to(device))
        with mixed_precision(device):
            outputs.append(model(x).float().cpu())
    out = torch.cat(outputs).numpy() if outputs else np.zeros((0, 2 * n_targets), np.float32)
    mean = out[:, :n_targets].astype(np.float64)
    if head == "mse":
        return mean, np.full_like(mean, math.nan)
    log_var = np.clip(out[:, n_targets : 2 * n_targets], *LOG_VARIANCE_RANGE)
    return mean, np.exp(log_var.astype(np.float64))
