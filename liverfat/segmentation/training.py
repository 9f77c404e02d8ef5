"""Training and inference of a 2D segmentation network on prepared slices.

The training set is every transversal slice of the training volumes (float16 on the training
device, labels uint8), each seen with its ``context`` neighbours as extra channels (gathered per
batch, never stored three times). Half of each batch is drawn from slices that show liver, half
from all slices, so the network sees the organ often and still learns where it is absent.
Augmentation: MONAI's elastic deformation on a coarse control grid and an optional random
rotation and scaling (``RandAffine``; image and label deformed together), optional left-right
flips, intensity jitter, random gamma and random monotone intensity remapping (MONAI
``RandAdjustContrast`` and ``RandHistogramShift``: a liver whose grey level differs from every
training scan's, as CHAOS' chaos15, should still look like liver).
Cross-entropy (or Dice + CE) loss, Adam with the learning rate reduced tenfold for the last
sixth of the iterations; on CUDA, mixed precision from :mod:`liverfat.nn.device`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from liverfat.nn.device import grad_scaler, mixed_precision
from liverfat.segmentation.slices import context_indices

LOSSES = ("ce", "dice_ce")
#: Range of the random gamma (``gamma_prob``) and control-point counts of the random remap
#: (``histogram_shift_prob``); both act on each slice's own min-max range.
GAMMA_RANGE = (0.5, 2.5)
HISTOGRAM_CONTROL_POINTS = (5, 10)
#: Largest rotation (degrees) and relative scaling per axis of the random affine
#: (``affine_prob``), nnU-Net's defaults: subjects differ in size and tilt more than 8 scans show.
AFFINE_ROTATION_DEG = 15.0
AFFINE_SCALE = 0.15


@dataclass(frozen=True)
class SegmentationSettings:
    """Optimisation and augmentation settings.

    ``elastic_grid`` control points per side of the slice, displaced by a Gaussian of
    ``elastic_sigma_px`` pixels (times a uniform factor in [0, 1)), with probability
    ``elastic_prob``; with ``affine_prob`` a rotation within +-:data:`AFFINE_ROTATION_DEG` and a
    scaling by 1 +- :data:`AFFINE_SCALE` per axis about the slice centre; ``flip_prob``
    left-right flips; ``intensity_jitter`` scales each channel by
    1 + N(0, jitter) and shifts it by N(0, jitter / 2); with ``gamma_prob`` a slice's
    intensities are raised to a gamma drawn from :data:`GAMMA_RANGE`, and with
    ``histogram_shift_prob`` mapped through a random monotone piecewise-linear curve
    (:data:`HISTOGRAM_CONTROL_POINTS`); one draw per slice for all its channels.
    """

    iterations: int = 2000
    batch_size: int = 16
    learning_rate: float = 1e-4
    loss: str = "ce"
    elastic_grid: int = 8
    elastic_sigma_px: float = 4.0
    elastic_prob: float = 0.5
    affine_prob: float = 0.0
    flip_prob: float = 0.0
    intensity_jitter: float = 0.0
    gamma_prob: float = 0.0
    histogram_shift_prob: float = 0.0
    seed: int = 0


@dataclass
class TrainingLog:
    """Per-iteration losses and the wall time of the loop (s)."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


class SliceBatches:
    """Random batches (slices with context, labels) from prepared volumes, on one device.

    ``volumes``: per subject, float32 (z, channels, h, w); ``labels``: uint8 (z, h, w).
    """

    def __init__(
        self,
        volumes: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        context: int,
        device: torch.device,
        seed: int,
    ) -> None:
        self.slices = torch.from_numpy(np.concatenate(volumes)).to(device, torch.float16)
        self.labels = torch.from_numpy(np.concatenate(labels)).to(device)
        starts = np.cumsum([0, *[len(v) for v in volumes]])[:-1]
        index = [context_indices(len(v), context) + s for s, v in zip(starts, volumes, strict=True)]
        self.context_index = torch.from_numpy(np.concatenate(index)).to(device)
        with_liver = np.flatnonzero(np.concatenate([lab.any(axis=(1, 2)) for lab in labels]))
        self.with_liver = torch.from_numpy(with_liver if with_liver.size else np.arange(1)).to(
            device
        )
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device = device

    def draw(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, (2 context + 1) channels, h, w) float32 and (batch, h, w) int64 labels."""
        n_liver = batch_size // 2
        g, device = self.generator, self.device
        liver = self.with_liver[
            torch.randint(len(self.with_liver), (n_liver,), generator=g, device=device)
        ]
        anywhere = torch.randint(
            len(self.slices), (batch_size - n_liver,), generator=g, device=device
        )
        chosen = torch.cat([liver, anywhere])
        x = self.slices[self.context_index[chosen]]  # (b, 2k+1, c, h, w)
        return x.flatten(1, 2).float(), self.labels[chosen].long()


def augment(
    x: torch.Tensor, y: torch.Tensor, settings: SegmentationSettings, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elastic deformation and random affine (MONAI ``Rand2DElastic``, ``RandAffine``; image and
    label together), flips, gamma, intensity remapping and jitter of a batch; the label is
    deformed bilinearly and thresholded at 0.5."""
    x, y = _spatial(x, y, settings, rng)
    if settings.flip_prob > 0:
        flip = torch.from_numpy(rng.random(len(x)) < settings.flip_prob).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
    x = _intensity_curves(x, settings, rng)
    if settings.intensity_jitter > 0:
        n, c = x.shape[:2]
        scale = 1 + settings.intensity_jitter * rng.standard_normal((n, c, 1, 1))
        shift = settings.intensity_jitter / 2 * rng.standard_normal((n, c, 1, 1))
        x = x * torch.from_numpy(scale).to(x) + torch.from_numpy(shift).to(x)
    return x, y


def _spatial(
    x: torch.Tensor, y: torch.Tensor, settings: SegmentationSettings, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The elastic and affine deformations, a draw per slice, the label deformed beside it."""
    from monai.transforms import Rand2DElastic, RandAffine

    h, w = x.shape[2:]
    transforms = []
    if settings.elastic_prob > 0 and settings.elastic_sigma_px > 0:
        transforms.append(
            Rand2DElastic(
                spacing=(h / settings.elastic_grid, w / settings.elastic_grid),
                magnitude_range=(0.0, settings.elastic_sigma_px),
                prob=settings.elastic_prob,
                padding_mode="border",
                device=x.device,
            )
        )
    if settings.affine_prob > 0:
        transforms.append(
            RandAffine(
                prob=settings.affine_prob,
                rotate_range=(math.radians(AFFINE_ROTATION_DEG),),
                scale_range=(AFFINE_SCALE, AFFINE_SCALE),
                padding_mode="border",
                device=x.device,
            )
        )
    if not transforms:
        return x, y
    for transform in transforms:
        transform.set_random_state(int(rng.integers(2**31)))
    out = []
    for item in torch.cat([x, y[:, None].float()], dim=1):
        for transform in transforms:
            item = torch.as_tensor(transform(item))
        out.append(item)
    both = torch.stack(out).to(x)
    return both[:, :-1], (both[:, -1] >= 0.5).long()


def _intensity_curves(
    x: torch.Tensor, settings: SegmentationSettings, rng: np.random.Generator
) -> torch.Tensor:
    """Random gamma and random monotone remapping, each slice (all its channels) on its own."""
    from monai.transforms import RandAdjustContrast, RandHistogramShift

    curves = []
    if settings.gamma_prob > 0:
        curves.append(RandAdjustContrast(prob=settings.gamma_prob, gamma=GAMMA_RANGE))
    if settings.histogram_shift_prob > 0:
        curves.append(
            RandHistogramShift(
                num_control_points=HISTOGRAM_CONTROL_POINTS, prob=settings.histogram_shift_prob
            )
        )
    if not curves:
        return x
    for curve in curves:
        curve.set_random_state(int(rng.integers(2**31)))
    out = []
    for item in x:
        for curve in curves:
            item = torch.as_tensor(curve(item))
        out.append(item)
    return torch.stack(out).to(x)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """Cross-entropy, or the sum of cross-entropy and soft Dice of the liver class (MONAI)."""
    ce = F.cross_entropy(logits.float(), labels)
    if loss == "ce":
        return ce
    from monai.losses import DiceLoss

    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True)
    return ce + dice(logits.float(), labels[:, None])


def train_segmentation(
    network: nn.Module,
    batches: SliceBatches,
    settings: SegmentationSettings,
    *,
    progress: bool = False,
) -> TrainingLog:
    """Train ``network`` in place on ``batches``' device; returns the losses."""
    device = batches.device
    network.to(device).train()
    optimiser = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
    drop_at = math.ceil(settings.iterations * 5 / 6)
    scaler = grad_scaler(device)
    rng = np.random.default_rng(settings.seed)
    log = TrainingLog()
    start = time.perf_counter()
    for step in tqdm(range(settings.iterations), disable=not progress, desc="train u-net"):
        if step == drop_at:
            for group in optimiser.param_groups:
                group["lr"] = settings.learning_rate / 10
        x, y = augment(*batches.draw(settings.batch_size), settings, rng)
        optimiser.zero_grad(set_to_none=True)
        with mixed_precision(device):
            logits = network(x)
        loss = segmentation_loss(logits, y, settings.loss)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        log.losses.append(float(loss.detach()))
    log.seconds = time.perf_counter() - start
    network.eval()
    return log


@torch.no_grad()
def predict_probability(
    network: nn.Module,
    slices: np.ndarray,
    context: int,
    *,
    device: torch.device,
    batch_size: int = 16,
) -> np.ndarray:
    """Liver probability (z, h, w) of a prepared volume's slices (float32 (z, c, h, w))."""
    network.to(device).eval()
    n = len(slices)
    index = context_indices(n, context)
    volume = torch.from_numpy(slices).to(device)
    out = np.empty((n, *slices.shape[2:]), np.float32)
    for start in range(0, n, batch_size):
        chunk = torch.from_numpy(index[start : start + batch_size]).to(device)
        x = volume[chunk].flatten(1, 2)
        with mixed_precision(device):
            logits = network(x)
        out[start : start + len(chunk)] = torch.softmax(logits.float(), 1)[:, 1].cpu().numpy()
    return out
