"""The deep engine's profiles: the model and optimisation settings it trains with.

A profile sets every :data:`PROFILE_KEYS` constructor argument of
:class:`~liverfat.deep.engine.DeepEngine` left at None; explicit values win. The default is
``cpu`` on every device: the same settings whatever machine runs them, so a study's figures do
not change with the hardware, and a first run on a GPU takes minutes, not the paper's half hour
per split. ``paper`` is an explicit choice; ``auto`` is ``paper`` on CUDA and ``cpu`` elsewhere.

``paper``
    The published setting: ResNet50, 6000 iterations of batch 32 at lr 1e-4 on full-size
    formats, the plain Gaussian NLL (about half an hour per split on a GPU without the data
    pipeline of :class:`~liverfat.deep.training.TrainingBatches`; ``python -m benchmarks gpu``
    measures it).
``cpu``
    The best accuracy a 2-core CPU trains in minutes, the default on every device: the
    attention readout with U-Net cell scores (:class:`liverfat.nn.architectures.AttentionUNet`)
    on quarter-size formats, 6000 iterations of batch 16 at lr 2e-3, beta-NLL with beta 0.5,
    batches balanced over the target's range, and, for liver fat, fat-fraction scaling by
    0.6-2x (why: docs/deep.md); about 4-5 minutes per training on 2 cores, 21-25 for 5
    folds of 240 subjects.
``quick``
    ResNet50 for 400 iterations of batch 16 on half-size formats: a smoke test of the paper
    network on a CPU, not a result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from liverfat.deep.formats import FAT_FRACTION_FORMATS
from liverfat.errors import LiverfatError

PROFILES: dict[str, dict[str, Any]] = {
    "paper": {
        "model": "resnet50",
        "iterations": 6000,
        "batch_size": 32,
        "input_scale": 1.0,
        "learning_rate": 1e-4,
        "nll_beta": 0.0,
        "balance_bins": 0,
        "target_transform": "none",
        "fat_scale_range": None,
    },
    "cpu": {
        "model": "attention_unet",
        "iterations": 6000,
        "batch_size": 16,
        "input_scale": 0.25,
        "learning_rate": 2e-3,
        "nll_beta": 0.5,
        "balance_bins": 5,
        "target_transform": "none",
        "fat_scale_range": (0.6, 2.0),
    },
    "quick": {
        "model": "resnet50",
        "iterations": 400,
        "batch_size": 16,
        "input_scale": 0.5,
        "learning_rate": 1e-4,
        "nll_beta": 0.0,
        "balance_bins": 0,
        "target_transform": "none",
        "fat_scale_range": None,
    },
}
#: Constructor arguments a profile sets when they are left at None.
PROFILE_KEYS = tuple(PROFILES["paper"])
#: The profile of an engine, command line or study that names none.
DEFAULT_PROFILE = "cpu"


def resolve_profile(profile: str, device_type: str, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``profile`` (``auto`` resolved for ``device_type``, e.g. ``"cuda"``),
    overridden by the non-None values of ``explicit``, plus the resolved ``profile`` name."""
    if profile == "auto":
        profile = "paper" if device_type == "cuda" else "cpu"
    given = {k: v for k, v in explicit.items() if v is not None}
    return {**PROFILES[profile], **given, "profile": profile}


#: Targets proportional to the liver's fat fraction on the format's first channel: the ones
#: fat-fraction scaling (``fat_scale_range``) may scale.
LIVER_FAT_TARGETS = ("liver_pdff_pct",)


def _scales_every_target(targets: Sequence[str], format_name: str, transform: str) -> bool:
    """Whether scaling the format's first channel scales every target with it."""
    return (
        set(targets) <= set(LIVER_FAT_TARGETS)
        and format_name in FAT_FRACTION_FORMATS
        and transform == "none"
    )


def fat_scale(
    scale_range: Sequence[float] | None, targets: Sequence[str], format_name: str, transform: str
) -> tuple[float, float] | None:
    """The fat-fraction scaling an engine trains with: ``scale_range`` where it is valid
    (:data:`LIVER_FAT_TARGETS` on a format of :data:`FAT_FRACTION_FORMATS`, no target
    transform), else None; None for (1, 1) too."""
    if scale_range is None or not _scales_every_target(targets, format_name, transform):
        return None
    low, high = (float(v) for v in scale_range)
    return None if low == high == 1.0 else (low, high)


def check_fat_scale(
    scale_range: Sequence[float], targets: Sequence[str], format_name: str, transform: str
) -> None:
    """One-line error for an explicit ``scale_range`` that is malformed or used where it is not
    valid (see :func:`fat_scale`); (1, 1), no scaling, is valid everywhere."""
    low, high = (float(v) for v in scale_range)
    if not 0 < low <= high:
        raise LiverfatError(f"fat_scale_range must be 0 < low <= high, got {low}, {high}")
    if (low, high) != (1.0, 1.0) and not _scales_every_target(targets, format_name, transform):
        raise LiverfatError(
            f"fat_scale_range needs targets among {', '.join(LIVER_FAT_TARGETS)}, a format "
            f"among {', '.join(FAT_FRACTION_FORMATS)} and target_transform none"
        )
