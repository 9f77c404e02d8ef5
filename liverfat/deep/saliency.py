"""Grad-CAM saliency of a fitted deep engine, per subject and aggregated over a cohort.

Maps are computed with MONAI's :class:`monai.visualize.GradCAM` on the network's last
convolutional stage for one target's predicted mean, upsampled to the format's full size and
normalised to [0, 1] per subject. Because formats share one aligned coordinate frame, the cohort
map is the plain mean over subjects.

For a regression network the ReLU'd Grad-CAM also lights up regions that add a constant to every
prediction (for a fat fraction: the featureless background and body outline), so the mean map
says little about what distinguishes subjects. :func:`deviation_map` aggregates the signed maps
instead, as the mean absolute deviation from the cohort's mean map.

Grad-CAM's grid is coarse (1/8 to 1/32 of the input), so on a small organ like the liver its
upsampled maps spread far beyond it. :func:`sensitivity_maps` works at the input's own pixel
resolution: the squared partial derivatives of the prediction with respect to every input pixel
(the "sensitivity analysis" relevance ``R_i = (df/dx_i)^2`` of Montavon, Samek & Mueller,
Digital Signal Processing 73, 2018), whose sum is the squared gradient norm, i.e. how strongly
the prediction reacts to a change of the image, split over pixels. On the phantom cohort, a
network that generalises puts most of this mass on each subject's liver (see the tests), the
only organ whose fat fraction varies between subjects.

Overlays use the water signal pushed through the format's geometry (its ``align`` function) as
background.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from liverfat.data.atomic import atomic_path, write_json_atomic
from liverfat.data.manifest import Manifest
from liverfat.deep.engine import DeepEngine
from liverfat.deep.formats import get_format
from liverfat.deep.training import to_input
from liverfat.errors import LiverfatError
from liverfat.nn.registry import gradcam_layer


@dataclass
class SaliencyResult:
    """Per-subject Grad-CAM maps (subject -> (H, W) in [0, 1]) and their ``mean``; the cohort
    ``deviation`` map of the signed maps (:func:`deviation_map`); per-subject errors; per-subject
    pixel-resolution ``sensitivity`` maps (:func:`sensitivity_maps`) and their mean."""

    maps: dict[str, np.ndarray]
    mean: np.ndarray
    deviation: np.ndarray
    errors: dict[str, str]
    sensitivity: dict[str, np.ndarray] | None = None
    sensitivity_mean: np.ndarray | None = None


def gradcam_maps(
    engine: DeepEngine, formats: np.ndarray, *, target: str | None = None, batch_size: int = 16
) -> np.ndarray:
    """Grad-CAM maps (n, H, W) at the formats' full size for one target's predicted mean."""
    from monai.visualize import GradCAM

    engine._check_fitted()
    index = _target_index(engine, target)
    _, scale, _ = engine.resolved()
    network = engine.network_.cpu().eval()
    cam = GradCAM(nn_module=network, target_layers=gradcam_layer(engine.model_name, network))
    height, width = formats.shape[2:]
    maps = []
    for start in range(0, formats.shape[0], batch_size):
        x = to_input(formats[start : start + batch_size], scale)
        with torch.enable_grad():
            batch = cam(x, class_idx=index)  # (b, 1, h, w), each normalised to [0, 1]
        batch = F.interpolate(batch.float(), size=(height, width), mode="bilinear")
        maps.append(batch[:, 0].detach().numpy())
    return np.concatenate(maps) if maps else np.zeros((0, height, width), np.float32)


def contribution_maps(
    engine: DeepEngine, formats: np.ndarray, *, target: str | None = None, batch_size: int = 16
) -> np.ndarray:
    """Signed Grad-CAM maps (n, H, W): ``sum_k w_k A_k`` without the ReLU and normalisation.

    ``w_k`` is the spatial mean of the gradient of the target's predicted mean with respect to
    channel ``k`` of the Grad-CAM layer's activations ``A_k``. For a regression output these
    maps add up (for global-average-pooled heads exactly) to each subject's prediction, so where
    they vary across subjects is where the network finds the differences it predicts.
    """
    engine._check_fitted()
    index = _target_index(engine, target)
    _, scale, _ = engine.resolved()
    network = engine.network_.cpu().eval()
    layer = dict(network.named_modules())[gradcam_layer(engine.model_name, network)]
    store: dict[str, torch.Tensor] = {}
    hook = layer.register_forward_hook(lambda module, args, output: store.update(a=output))
    height, width = formats.shape[2:]
    maps = []
    try:
        for start in range(0, formats.shape[0], batch_size):
            with torch.enable_grad():
                output = network(to_input(formats[start : start + batch_size], scale))
                (gradient,) = torch.autograd.grad(output[:, index].sum(), store["a"])
            weights = gradient.mean(dim=(2, 3), keepdim=True)
            cam = (weights * store["a"]).sum(dim=1, keepdim=True).detach()
            maps.append(F.interpolate(cam, size=(height, width), mode="bilinear")[:, 0].numpy())
    finally:
        hook.remove()
    return np.concatenate(maps) if maps else np.zeros((0, height, width), np.float32)


def sensitivity_maps(
    engine: DeepEngine, formats: np.ndarray, *, target: str | None = None, batch_size: int = 16
) -> np.ndarray:
    """Pixel-resolution sensitivity maps (n, H, W): ``(df/dx_i)^2`` per pixel, summing to 1.

    ``f`` is the target's predicted mean and ``x`` the network input (the format resized by the
    engine's ``input_scale``); maps are brought back to the format's size (bilinear) and each is
    divided by its total, so every subject weighs the same in a cohort mean.
    """
    engine._check_fitted()
    index = _target_index(engine, target)
    _, scale, _ = engine.resolved()
    network = engine.network_.cpu().eval()
    height, width = formats.shape[2:]
    maps = []
    for start in range(0, formats.shape[0], batch_size):
        x = to_input(formats[start : start + batch_size], scale).requires_grad_(True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(network(x)[:, index].sum(), x)
        relevance = gradient.pow(2).sum(dim=1, keepdim=True)
        relevance = F.interpolate(relevance, size=(height, width), mode="bilinear")[:, 0]
        total = relevance.sum(dim=(1, 2), keepdim=True).clamp(min=1e-30)
        maps.append((relevance / total).numpy())
    return np.concatenate(maps) if maps else np.zeros((0, height, width), np.float32)


def deviation_map(contributions: np.ndarray) -> np.ndarray:
    """Cohort saliency of a regression: mean over subjects of ``|map - cohort mean map|``.

    Parts of the image that add the same amount to every subject's prediction (a constant
    offset) carry no information about differences between subjects and drop out.
    """
    return np.abs(contributions - contributions.mean(axis=0)).mean(axis=0)


def _target_index(engine: DeepEngine, target: str | None) -> int:
    target = target or engine.targets[0]
    if target not in engine.targets:
        raise LiverfatError(f"the engine predicts {list(engine.targets)}, not {target!r}")
    return list(engine.targets).index(target)


def cohort_saliency(
    engine: DeepEngine, manifest: Manifest, *, target: str | None = None
) -> SaliencyResult:
    """Grad-CAM maps of every subject of ``manifest`` and their mean over the cohort."""
    arrays, errors = engine.load_formats(manifest)
    ids = [s for s in manifest.subject_ids if s in arrays]
    if not ids:
        raise LiverfatError(f"no subject of {manifest.path} has a usable format")
    formats = np.stack([arrays[s] for s in ids])
    maps = gradcam_maps(engine, formats, target=target)
    deviation = deviation_map(contribution_maps(engine, formats, target=target))
    sensitivity = sensitivity_maps(engine, formats, target=target)
    return SaliencyResult(
        dict(zip(ids, maps, strict=True)),
        maps.mean(axis=0),
        deviation,
        errors,
        dict(zip(ids, sensitivity, strict=True)),
        sensitivity.mean(axis=0),
    )


def aligned_stack(
    manifest: Manifest, format_name: str, column: str, subject_ids: list[str]
) -> np.ndarray:
    """Each subject's image column (``water``, ``liver_mask``, ...) in format geometry (n, H, W).

    Its mean over subjects is the background of cohort saliency maps; ``> 0.5`` of a mask
    column gives each subject's region.
    """
    spec = get_format(format_name)
    if spec.align is None:
        raise LiverfatError(f"format {format_name} has no align function")
    aligned = []
    for sid in subject_ids:
        dixon = manifest.dixon(sid)
        image = dixon.water if column == "water" else manifest.read_image(sid, column)
        aligned.append(spec.align(dixon, image))
    return np.stack(aligned)


def mass_fraction_in(saliency: np.ndarray, region: np.ndarray) -> float:
    """Share of a saliency map's total mass inside a boolean region."""
    total = float(saliency.sum())
    return float(saliency[region].sum()) / total if total > 0 else float("nan")


def subject_mass_fractions(maps: dict[str, np.ndarray], masks: np.ndarray) -> np.ndarray:
    """Per subject, the share of its saliency map's mass inside its own mask (same order)."""
    return np.array(
        [mass_fraction_in(m, mask) for m, mask in zip(maps.values(), masks, strict=True)]
    )


def save_overlay(
    path: str | os.PathLike[str],
    saliency: np.ndarray,
    background: np.ndarray,
    *,
    title: str = "",
    contour: np.ndarray | None = None,
) -> Path:
    """Write a PNG of ``saliency`` (jet, translucent) over ``background`` (grey), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = saliency.shape
    figure, axis = plt.subplots(figsize=(width / 50, height / 50 + 0.4), dpi=100)
    axis.imshow(background, cmap="gray", interpolation="nearest")
    axis.imshow(saliency, cmap="jet", alpha=0.45, vmin=0, vmax=max(float(saliency.max()), 1e-9))
    if contour is not None:
        axis.contour(contour.astype(float), levels=[0.5], colors="white", linewidths=0.8)
    axis.set_title(title, fontsize=8)
    axis.axis("off")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return Path(path)


#: The cohort maps :func:`write_cohort_saliency` writes: file stem, result attribute, title.
COHORT_MAPS = (
    ("mean", "mean", "mean Grad-CAM"),
    ("deviation", "deviation", "cohort deviation of signed Grad-CAM"),
    ("sensitivity", "sensitivity_mean", "mean pixel sensitivity (squared input gradient)"),
)


def write_cohort_saliency(
    engine: DeepEngine,
    manifest: Manifest,
    folder: str | os.PathLike[str],
    *,
    target: str | None = None,
    per_subject: bool = False,
) -> SaliencyResult:
    """:func:`cohort_saliency` of ``manifest``, written into ``folder`` (``deep saliency``).

    Each map of :data:`COHORT_MAPS` as ``saliency_<name>.npy`` (float32) and ``.png`` over the
    cohort's mean water image; with ``per_subject`` one ``<subject>.png`` of each subject's
    Grad-CAM over its own water image; ``saliency.json`` lists the subjects and the failures.
    """
    result = cohort_saliency(engine, manifest, target=target)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    ids = list(result.maps)
    water = aligned_stack(manifest, engine.format, "water", ids)
    background = water.mean(axis=0)
    for name, attribute, title in COHORT_MAPS:
        image = getattr(result, attribute)
        np.save(out / f"saliency_{name}.npy", image.astype(np.float32))
        save_overlay(out / f"saliency_{name}.png", image, background, title=title)
    if per_subject:
        for sid, own in zip(ids, water, strict=True):
            save_overlay(out / f"{sid}.png", result.maps[sid], own, title=sid)
    write_json_atomic(out / "saliency.json", {"subjects": ids, "failed": result.errors})
    return result
