"""Training and inference of a 2D regression network on uint8 formats.

Targets are standardised (zero mean, unit variance over the training subjects that have them).
The head predicts either the means (``mse``) or means and log-variances (``mean_variance``,
Gaussian negative log-likelihood); missing targets (NaN) are masked out of the loss, so several
targets with gaps train together. Adam with a learning rate reduced tenfold for the last sixth of
the iterations; augmentation by random translations with edge replication (and, for liver fat,
fat-fraction scaling: :func:`scale_fat`). The training set
stays uint8 on the training device and every batch is built there (:class:`TrainingBatches`);
on CUDA, mixed precision (bfloat16, or float16 with loss scaling) with the head and the loss in
float32, channels-last memory, cuDNN autotuning and fused Adam (all from
:mod:`liverfat.nn.device`, except the optimiser).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from liverfat.nn.device import (
    autocast_dtype,
    channels_last,
    float32_head,
    grad_scaler,
    mixed_precision,
    tuned_convolutions,
)

HEADS = ("mse", "mean_variance")
#: Log-variance is clamped to this range (standardised units) for numerical safety.
LOG_VARIANCE_RANGE = (-12.0, 8.0)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings. ``max_shift_px`` is in pixels of the (scaled) network input;
    ``nll_beta`` weights the mean-variance loss (see :func:`masked_loss`); ``balance_bins`` > 0
    draws batches balanced over the first target's range (see :func:`balanced_weights`);
    ``fat_scale_range`` (low, high) scales each image's first channel and its targets by one
    factor, log-uniform in the range (see :func:`scale_fat`)."""

    iterations: int = 6000
    batch_size: int = 32
    learning_rate: float = 1e-4
    max_shift_px: int = 16
    head: str = "mean_variance"
    seed: int = 0
    nll_beta: float = 0.0
    balance_bins: int = 0
    fat_scale_range: tuple[float, float] | None = None


def to_input(formats: np.ndarray, input_scale: float) -> torch.Tensor:
    """uint8 (n, c, h, w) to float32 in [0, 1], resized by ``input_scale`` (area averaging)."""
    return scale_batch(torch.from_numpy(np.ascontiguousarray(formats)), input_scale)


def scale_batch(images: torch.Tensor, input_scale: float) -> torch.Tensor:
    """A uint8 batch (n, c, h, w) on any device to float32 in [0, 1], resized by
    ``input_scale`` (area averaging when shrinking), on the same device."""
    x = images.float().div_(255.0)
    if input_scale != 1.0:
        size = [max(8, int(round(s * input_scale))) for s in x.shape[2:]]
        x = F.interpolate(x, size=size, mode="area" if input_scale < 1 else "bilinear")
    return x


def translate(batch: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, replicating the edges.

    One gather on the batch's device: each output pixel reads the input pixel at its shifted,
    clamped position (clamping is edge replication). ``generator`` lives on that device too.
    """
    if max_shift <= 0:
        return batch
    n, c, height, width = batch.shape
    device = batch.device
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator, device=device)
    offsets -= max_shift
    rows = (torch.arange(height, device=device) + offsets[:, :1]).clamp_(0, height - 1)
    cols = (torch.arange(width, device=device) + offsets[:, 1:]).clamp_(0, width - 1)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(n, 1, -1).expand(n, c, -1)
    return batch.flatten(2).gather(2, index).view(n, c, height, width)


def scale_fat(
    images: torch.Tensor,
    targets: torch.Tensor,
    scale_range: tuple[float, float],
    target_zero: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fat-fraction scaling: each image's first channel (a fat-fraction map in [0, 1]) and its
    targets multiplied by one factor, log-uniform in ``scale_range``; the map saturates at 1 as
    its encoding does.

    Targets are standardised, so they are scaled about ``target_zero`` (per target: the
    standardised value of 0 %). Only for targets proportional to the map (liver fat on the
    liver-fat format). Why: a subject fattier than any in training is otherwise read from the
    wrong place, as its liver looks like a fat depot to a network that never saw one so bright
    (docs/deep.md); scaling shows it livers across the whole range.
    """
    low, high = (math.log(v) for v in scale_range)
    u = torch.rand(images.shape[0], generator=generator, device=images.device)
    factor = torch.exp(low + u * (high - low))
    images = images.clone()
    images[:, :1] = (images[:, :1] * factor[:, None, None, None]).clamp_(max=1.0)
    return images, (targets - target_zero) * factor[:, None] + target_zero


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


class TrainingBatches:
    """Random batches of a training set, drawn and built on the training device.

    The set is copied to the device once and every batch is gathered, scaled and shifted there,
    with indices and shifts from a generator on the same device, so a GPU never waits for the
    host. At ``input_scale`` 1 the set stays uint8 (a quarter of float32's memory) and each batch
    is converted to [0, 1]; at other scales it is resized once, to float32 (no larger than the
    uint8 set at scales up to 0.5, and a resize per batch would cost more than the step of a
    small network on a CPU). Indices come from replacement-free epochs, or, with
    ``balance_bins``, from :func:`balanced_weights`. ``target_zero`` (per target, the
    standardised value of 0) is needed with ``fat_scale_range``.
    """

    def __init__(
        self,
        formats: np.ndarray,
        targets: np.ndarray,
        settings: TrainSettings,
        input_scale: float,
        device: torch.device,
        target_zero: np.ndarray | None = None,
    ) -> None:
        self.images = _scaled_once(formats, input_scale, device)
        self.targets = torch.from_numpy(np.asarray(targets, np.float32)).to(device)
        self.settings = settings
        if settings.fat_scale_range is not None:
            if target_zero is None:
                raise ValueError("fat_scale_range needs target_zero, the standardised 0 per target")
            self.target_zero = torch.as_tensor(np.asarray(target_zero, np.float32), device=device)
        self.generator = torch.Generator(device=device).manual_seed(settings.seed)
        self.weights = None
        if settings.balance_bins:
            weights = balanced_weights(targets[:, 0], settings.balance_bins)
            self.weights = weights.to(device)
        self.order, self.cursor = self._permutation(), 0

    def _permutation(self) -> torch.Tensor:
        n = self.images.shape[0]
        return torch.randperm(n, generator=self.generator, device=self.images.device)

    def _indices(self) -> torch.Tensor:
        batch_size = self.settings.batch_size
        if self.weights is not None:
            return torch.multinomial(self.weights, batch_size, True, generator=self.generator)
        if self.cursor + batch_size > self.images.shape[0]:
            self.order, self.cursor = self._permutation(), 0
        self.cursor += batch_size
        return self.order[self.cursor - batch_size : self.cursor]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: inputs (b, c, h, w; float32 in [0, 1], channels-last on CUDA), targets."""
        index = self._indices()
        x = self.images[index]
        if x.dtype == torch.uint8:
            x = scale_batch(x, 1.0)
        x = translate(x, self.settings.max_shift_px, self.generator)
        y = self.targets[index]
        if self.settings.fat_scale_range is not None:
            x, y = scale_fat(x, y, self.settings.fat_scale_range, self.target_zero, self.generator)
        if x.device.type == "cuda":
            x = channels_last(x)
        return x, y


def _scaled_once(
    formats: np.ndarray, input_scale: float, device: torch.device, chunk: int = 256
) -> torch.Tensor:
    """The uint8 formats on ``device``: as they are at scale 1, else resized to float32 in
    chunks (a float32 copy of the whole set at full size is never made)."""
    images = torch.from_numpy(np.ascontiguousarray(formats, np.uint8)).to(device)
    if input_scale == 1.0:
        return images
    parts = [scale_batch(images[i : i + chunk], input_scale) for i in range(0, len(images), chunk)]
    return torch.cat(parts)


@dataclass(frozen=True)
class TrainingLog:
    """What a training run did: the loss of every iteration, the mixed-precision type
    (``float32`` off CUDA), and the steps that did not update the weights as intended:
    ``skipped_steps`` skipped by float16 loss scaling for overflowing gradients (its first few
    are the scaler finding its scale), ``nonfinite_losses`` iterations whose loss was NaN or inf.
    """

    losses: list[float]
    precision: str
    skipped_steps: int
    nonfinite_losses: int


def train_network(
    model: nn.Module,
    formats: np.ndarray,
    targets: np.ndarray,
    settings: TrainSettings,
    *,
    input_scale: float = 1.0,
    device: torch.device,
    progress: bool = True,
    target_zero: np.ndarray | None = None,
) -> TrainingLog:
    """Train ``model`` in place on uint8 formats (n, c, h, w), resized by ``input_scale``, and
    standardised targets (n, t) with NaNs (``target_zero``: the standardised 0 per target, for
    ``settings.fat_scale_range``).

    Seeded by ``settings.seed`` (the global RNG too, for dropout, inside a fork that leaves the
    caller's RNG state as it was). On CUDA: mixed precision with the head and the loss in
    float32, channels-last memory, cuDNN autotuning, fused Adam.
    """
    cuda = device.type == "cuda"
    forked = torch.random.fork_rng(devices=[device] if cuda else [], device_type=device.type)
    with forked, tuned_convolutions(device):
        torch.manual_seed(settings.seed)
        model.to(device)
        if cuda:
            channels_last(model)
        model.train()
        with float32_head(model):
            log = _optimise(
                model,
                TrainingBatches(formats, targets, settings, input_scale, device, target_zero),
                settings,
                device,
                progress,
            )
    model.eval()
    return log


def _optimise(
    model: nn.Module,
    batches: TrainingBatches,
    settings: TrainSettings,
    device: torch.device,
    progress: bool,
) -> TrainingLog:
    cuda = device.type == "cuda"
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, fused=cuda or None)
    decay_at = settings.iterations - settings.iterations // 6
    scaler = grad_scaler(device)
    losses = torch.zeros(settings.iterations, device=device)
    skipped = 0
    bar = tqdm(range(settings.iterations), desc="training", disable=not progress, unit="it")
    for iteration in bar:
        if iteration == decay_at:
            for group in optimiser.param_groups:
                group["lr"] = settings.learning_rate / 10
        x, y = batches.next()
        with mixed_precision(device):
            loss = masked_loss(model(x), y, settings.head, settings.nll_beta)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if scaler.is_enabled():  # float16: reading the scale waits for the step (older GPUs only)
            scale = scaler.get_scale()
            scaler.step(optimiser)
            scaler.update()
            skipped += scaler.get_scale() < scale
        else:
            optimiser.step()
        losses[iteration] = loss.detach()  # no float() here: on a GPU it waits for every step
        if progress and iteration % 50 == 0:
            bar.set_postfix(loss=f"{float(losses[iteration]):.3f}")
    dtype = autocast_dtype(device)
    values = losses.cpu()
    return TrainingLog(
        losses=values.tolist(),
        precision=str(dtype or torch.float32).removeprefix("torch."),
        skipped_steps=int(skipped),
        nonfinite_losses=int((~torch.isfinite(values)).sum()),
    )


@torch.no_grad()
def predict_network(
    model: nn.Module,
    formats: np.ndarray,
    n_targets: int,
    head: str,
    *,
    input_scale: float = 1.0,
    device: torch.device,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Standardised means (n, t) and variances (n, t; NaN for the ``mse`` head) from uint8
    formats (n, c, h, w), resized by ``input_scale`` batch by batch on ``device``.

    Inference uses channels-last memory on every device (on a CPU, oneDNN's convolutions are
    about a quarter faster that way for ResNet50) and, on CUDA, mixed precision with the head in
    float32.
    """
    model.to(device).eval()
    channels_last(model)
    outputs = []
    with float32_head(model):
        for start in range(0, formats.shape[0], batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(formats[start : start + batch_size]))
            x = channels_last(scale_batch(chunk.to(device), input_scale))
            with mixed_precision(device):
                outputs.append(model(x).float().cpu())
    out = torch.cat(outputs).numpy() if outputs else np.zeros((0, 2 * n_targets), np.float32)
    mean = out[:, :n_targets].astype(np.float64)
    if head == "mse":
        return mean, np.full_like(mean, math.nan)
    log_var = np.clip(out[:, n_targets : 2 * n_targets], *LOG_VARIANCE_RANGE)
    return mean, np.exp(log_var.astype(np.float64))
