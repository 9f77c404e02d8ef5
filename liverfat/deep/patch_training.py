"""Training and inference of an ROI-patch classifier (the patch grader's network).

Training samples are ROI windows (the ROI square plus ``margin`` pixels of context each side).
Every batch is drawn from the training samples and augmented on the training device, seeded, with
the radiomics engine's four augmentations (:class:`liverfat.radiomics.features.AugmentSettings`'s
defaults): a shift of up to ``max_shift_px`` pixels (the crop moves inside the window, so it
stays on image pixels; unlike the trees' copies it is not restricted to liver pixels), a left-right
mirror with probability 1/2, a rotation by a random multiple of 90 degrees, and Gaussian noise of
``noise_fraction`` times the patch's own standard deviation, per channel. Inference uses the
centre crop, no augmentation.

Cross-entropy (optionally class-weighted) with Adam and a cosine learning-rate schedule over
the iterations; on CUDA mixed precision with the head and the loss in float32 (from
:mod:`liverfat.nn.device`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from liverfat.nn.device import (
    autocast_dtype,
    channels_last,
    float32_head,
    grad_scaler,
    mixed_precision,
    tuned_convolutions,
)

#: The learning-rate schedule :func:`train_patch_network` uses (recorded in the training log).
SCHEDULE = "cosine annealing from learning_rate to 0 over the iterations (Adam)"


@dataclass(frozen=True)
class PatchTrainSettings:
    """Optimisation and augmentation settings (pixel counts in window pixels).

    ``class_weights``: per-class weight of the cross-entropy (None: unweighted).
    """

    iterations: int = 1500
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    max_shift_px: int = 2
    mirror: bool = True
    rotate: bool = True
    noise_fraction: float = 0.25
    seed: int = 0
    class_weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class PatchTrainingLog:
    """What training did: the loss of every iteration, the precision (``float32`` off CUDA),
    the wall time (s), and which training samples the batches drew (a bool per sample)."""

    losses: list[float]
    precision: str
    seconds: float
    drawn: np.ndarray


def crop(windows: torch.Tensor, size: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """A ``size x size`` crop of each window (n, c, side, side) with top-left ``(rows, cols)``
    (one per window, long tensors on the windows' device): one gather."""
    n, c, side, _ = windows.shape
    offsets = torch.arange(size, device=windows.device)
    r = rows[:, None] + offsets  # (n, size)
    k = cols[:, None] + offsets
    index = (r[:, :, None] * side + k[:, None, :]).view(n, 1, -1).expand(n, c, -1)
    return windows.flatten(2).gather(2, index).view(n, c, size, size)


def centre_crop(windows: torch.Tensor, margin: int) -> torch.Tensor:
    """The ROI squares: each window without its ``margin`` pixels on every side."""
    side = windows.shape[-1]
    return windows[..., margin : side - margin, margin : side - margin]


def augment(
    windows: torch.Tensor, margin: int, settings: PatchTrainSettings, generator: torch.Generator
) -> torch.Tensor:
    """Augmented ROI patches (n, c, size, size) from windows (n, c, size + 2 margin, ...): shift,
    mirror, rotation and noise as in the module docstring, drawn from ``generator``."""
    n, _, side, _ = windows.shape
    size, device = side - 2 * margin, windows.device
    shift = min(settings.max_shift_px, margin)
    offsets = torch.randint(-shift, shift + 1, (2, n), generator=generator, device=device)
    x = crop(windows, size, margin + offsets[0], margin + offsets[1])
    if settings.mirror:
        flip = torch.randint(0, 2, (n, 1, 1, 1), generator=generator, device=device).bool()
        x = torch.where(flip, x.flip(-1), x)
    if settings.rotate:
        turns = torch.randint(0, 4, (n, 1, 1, 1), generator=generator, device=device)
        rotated = x
        for k in (1, 2, 3):
            rotated = torch.where(turns == k, torch.rot90(x, k, (2, 3)), rotated)
        x = rotated
    if settings.noise_fraction:
        sd = x.std(dim=(2, 3), keepdim=True, correction=0)
        noise = torch.randn(x.shape, generator=generator, device=device)
        x = x + noise * sd * settings.noise_fraction
    return x


def train_patch_network(
    model: nn.Module,
    windows: np.ndarray,
    labels: np.ndarray,
    margin: int,
    settings: PatchTrainSettings,
    device: torch.device,
) -> PatchTrainingLog:
    """Train ``model`` in place on float32 windows (n, c, side, side) and class indices (n,).

    Seeded by ``settings.seed`` (weights' dropout via the global RNG inside a fork that leaves
    the caller's state as it was; batches and augmentation via a generator on ``device``).
    """
    start = time.perf_counter()
    cuda = device.type == "cuda"
    forked = torch.random.fork_rng(devices=[device] if cuda else [], device_type=device.type)
    with forked, tuned_convolutions(device):
        torch.manual_seed(settings.seed)
        model.to(device).train()
        if cuda:
            channels_last(model)
        with float32_head(model):
            losses, drawn = _optimise(model, windows, labels, margin, settings, device)
    model.eval()
    dtype = autocast_dtype(device)
    return PatchTrainingLog(
        losses=losses,
        precision=str(dtype or torch.float32).removeprefix("torch."),
        seconds=round(time.perf_counter() - start, 3),
        drawn=drawn,
    )


def _optimise(
    model: nn.Module,
    windows: np.ndarray,
    labels: np.ndarray,
    margin: int,
    settings: PatchTrainSettings,
    device: torch.device,
) -> tuple[list[float], np.ndarray]:
    x_all = torch.from_numpy(np.ascontiguousarray(windows, np.float32)).to(device)
    y_all = torch.from_numpy(np.asarray(labels, np.int64)).to(device)
    weight = None
    if settings.class_weights is not None:
        weight = torch.tensor(settings.class_weights, dtype=torch.float32, device=device)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    optimiser = torch.optim.Adam(
        model.parameters(),
        lr=settings.learning_rate,
        weight_decay=settings.weight_decay,
        fused=device.type == "cuda" or None,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.iterations)
    scaler = grad_scaler(device)
    losses = torch.zeros(settings.iterations, device=device)
    drawn = torch.zeros(len(y_all), dtype=torch.bool, device=device)
    for iteration in range(settings.iterations):
        index = torch.randint(
            0, len(y_all), (settings.batch_size,), generator=generator, device=device
        )
        drawn[index] = True
        x = augment(x_all[index], margin, settings, generator)
        if device.type == "cuda":
            x = channels_last(x)
        with mixed_precision(device):
            loss = F.cross_entropy(model(x).float(), y_all[index], weight=weight)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        schedule.step()
        losses[iteration] = loss.detach()  # no float() here: on a GPU it waits for every step
    return losses.cpu().tolist(), drawn.cpu().numpy()


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    windows: np.ndarray,
    margin: int,
    device: torch.device,
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """Softmax class probabilities (n, n_classes), float64, of the windows' centre crops."""
    model.to(device).eval()
    outputs = []
    with float32_head(model):
        for start in range(0, len(windows), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(windows[start : start + batch_size]))
            x = centre_crop(chunk.to(device), margin).contiguous()
            with mixed_precision(device):
                outputs.append(torch.softmax(model(x).float(), dim=1).cpu())
    return torch.cat(outputs).numpy().astype(np.float64)
