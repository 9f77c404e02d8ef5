"""The ``fireants`` backend: FireANTs affine then greedy (compositive) deformable registration.

FireANTs (Jena et al. 2024, https://github.com/rohitrango/FireANTs) optimises dense warps with
Adam on local cross-correlation, multi-scale, in torch: CUDA when present, CPU otherwise. The
moving subject arrives centred on the fixed one; an optional moments step, an affine
(:class:`fireants.registration.affine.AffineRegistration`) and a greedy compositive deformation
(:class:`fireants.registration.greedy.GreedyRegistration`) follow, on every channel (the
channel dimension), with the fixed image zero outside its body as in the torch backend. The map
is brought to the form of :func:`liverfat.atlas.torch_registration.optimise`'s points
(normalised xyz of the fixed working grid), so the mask warp and the folding fraction are the
torch backend's own.

Installed by ``make`` as ``pip install --no-deps fireants==1.5.0``: its ``simpleitk==2.2.1`` pin
conflicts with ours, and it runs with SimpleITK 2.5.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import numpy as np
import SimpleITK as sitk

from liverfat.atlas.images import AtlasImage
from liverfat.errors import LiverfatError

#: The one command that installs the backend's package (no dependencies: see the module doc).
INSTALL = "pip install --no-deps fireants==1.5.0"

#: An affine then the greedy compositive warp, both at FireANTs scale 4 only (FireANTs divides
#: every axis by the scale but keeps at least 32 voxels: CHAOS at 2.5 x 2.5 x 7.7 mm is then a
#: 32 x 32 x 32 grid). The affine's Adam runs at most 50 steps (FireANTs stops it earlier once
#: its loss stops falling; 100 steps gained nothing for 30 % more time); 25 warp steps of half a
#: voxel at most, the update smoothed with sigma 2 voxels and the warp with 0.75 (0.5 folded up
#: to 2.5 % of the voxels of some maps). Tuned on CHAOS targets 1, 5 and 13 (docs/atlas.md):
#: about the torch backend's time per registration on one CPU thread; the affine at scales 4 and
#: 2, or the warp at 4 and 2, gained 0.01-0.02 mean fused Dice there for about twice the time.
FIREANTS_DEFAULTS: dict[str, Any] = {
    "moments": 0,
    "affine_scales": [4],
    "affine_iterations": [50],
    "affine_lr": 0.03,
    "deformable_scales": [4],
    "deformable_iterations": [25],
    "deformable_lr": 0.5,
    "cc_kernel_size": 5,
    "smooth_warp_sigma": 0.75,
    "smooth_grad_sigma": 2.0,
    "device": None,
}


def import_fireants() -> None:
    """Import FireANTs quietly (it prints and logs at import; one of its modules configures the
    root logger, undone here); a one-line :class:`LiverfatError` naming the install if absent."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = logging.getLogger("fireants")
    if not any(isinstance(h, logging.NullHandler) for h in quiet.handlers):
        quiet.addHandler(logging.NullHandler())  # its warnings never reach a handler
    quiet.propagate = False
    # it calls the deprecated Logger.warn (a DeprecationWarning where warnings show, as in pytest)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"fireants\.")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import fireants.registration.affine  # noqa: F401
            import fireants.registration.greedy  # noqa: F401
            import fireants.registration.moments  # noqa: F401
    except ImportError as exc:
        raise LiverfatError(
            f"the fireants registration backend needs FireANTs ({exc}): {INSTALL}"
        ) from exc
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


def physical_unit_mm(grid: sitk.Image) -> float:
    """Half the largest extent of ``grid`` (mm): FireANTs' physical unit here.

    FireANTs fits the affine's matrix and translation with one Adam step size; in this unit a
    translation step is a share of the field of view (as the torch backend's normalised
    ``theta``) rather than a fraction of a millimetre. Both images share it, so the map is the
    same map in mm.
    """
    extent = (np.asarray(grid.GetSize()) - 1) * np.asarray(grid.GetSpacing())
    return float(max(extent.max() / 2.0, 1.0))


def _batched(
    channels: tuple[sitk.Image, ...], device: str, unit_mm: float, body: sitk.Image | None = None
):
    """A FireANTs batch of one image holding every channel (zero outside ``body`` if given),
    its geometry in ``unit_mm``."""
    from fireants.io.image import BatchedImages, Image

    if body is not None:
        channels = tuple(sitk.Mask(c, body) for c in channels)
    image = channels[0] if len(channels) == 1 else sitk.Compose(channels)
    geometry = {
        "spacing": np.asarray(image.GetSpacing()) / unit_mm,
        "origin": np.asarray(image.GetOrigin()) / unit_mm,
    }
    return BatchedImages([Image(sitk.Cast(image, _float_pixel(image)), device=device, **geometry)])


def _float_pixel(image: sitk.Image) -> int:
    scalar = image.GetNumberOfComponentsPerPixel() == 1
    return sitk.sitkFloat32 if scalar else sitk.sitkVectorFloat32


def _common(options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of every FireANTs stage: local CC without FireANTs' numerator term
    (``smooth_nr`` 1e-5 scores flat windows, e.g. air or moving points outside the image, as a
    perfect match: the affine then blows the moving image away), as MONAI's and the torch
    backend's; no progress bars."""
    return {
        "loss_type": "cc",
        "loss_params": {"smooth_nr": 0.0, "smooth_dr": 1e-5},  # a new dict: FireANTs edits it
        "cc_kernel_size": int(options["cc_kernel_size"]),
        "progress_bar": False,
    }


def _initial_affine(fixed_b, moving_b, options: dict[str, Any]):
    """The moments initialisation (N, 3, 4), or None with ``moments`` 0."""
    from fireants.registration.moments import MomentsRegistration

    order = int(options["moments"])
    if order == 0:
        return None
    moments = MomentsRegistration(
        float(options["affine_scales"][0]), fixed_b, moving_b, moments=order, **_common(options)
    )
    moments.optimize()
    return moments.get_affine_init().detach()


def _affine(fixed_b, moving_b, options: dict[str, Any]):
    """The optimised :class:`~fireants.registration.affine.AffineRegistration`."""
    from fireants.registration.affine import AffineRegistration

    affine = AffineRegistration(
        list(options["affine_scales"]),
        [int(i) for i in options["affine_iterations"]],
        fixed_b,
        moving_b,
        optimizer="Adam",
        optimizer_lr=float(options["affine_lr"]),
        init_rigid=_initial_affine(fixed_b, moving_b, options),
        **_common(options),
    )
    affine.optimize()
    return affine


def _greedy(fixed_b, moving_b, init_affine, options: dict[str, Any]):
    from fireants.registration.greedy import GreedyRegistration

    greedy = GreedyRegistration(
        list(options["deformable_scales"]),
        [int(i) for i in options["deformable_iterations"]],
        fixed_b,
        moving_b,
        deformation_type="compositive",
        optimizer="Adam",
        optimizer_lr=float(options["deformable_lr"]),
        smooth_warp_sigma=float(options["smooth_warp_sigma"]),
        smooth_grad_sigma=float(options["smooth_grad_sigma"]),
        init_affine=init_affine,
        **_common(options),
    )
    greedy.optimize()
    return greedy


def fixed_grid_points(registration, fixed_b, moving_b) -> np.ndarray:
    """The map as moving sample points (D, H, W, 3; normalised xyz of the fixed grid, the form
    :func:`~liverfat.atlas.torch_registration.optimise` returns) at every fixed voxel."""
    import torch

    with torch.no_grad():
        points = registration.get_warped_coordinates(fixed_b, moving_b)[0]  # moving normalised
        to_fixed = (fixed_b.get_phy2torch() @ moving_b.get_torch2phy())[0]
        points = points @ to_fixed[:3, :3].T + to_fixed[:3, 3]
    return points.float().cpu().numpy()


def optimise(
    fixed: AtlasImage, moving: AtlasImage, options: dict[str, Any], device: str
) -> tuple[np.ndarray, np.ndarray]:
    """Register ``moving`` to ``fixed`` (working-grid images, moving already centred).

    Returns the moving sample points of every fixed voxel (see :func:`fixed_grid_points`) and
    the affine (4 x 4, physical mm, fixed -> moving points).
    """
    unit = physical_unit_mm(fixed.reference)
    fixed_b = _batched(fixed.channels, device, unit, body=fixed.body)
    moving_b = _batched(moving.channels, device, unit)
    mapping = _affine(fixed_b, moving_b, options)
    affine = mapping.get_affine_matrix().detach()
    if options["deformable_scales"]:
        mapping = _greedy(fixed_b, moving_b, affine, options)
    affine_mm = affine[0].double().cpu().numpy()
    affine_mm[:3, 3] *= unit
    return fixed_grid_points(mapping, fixed_b, moving_b), affine_mm


def run(fixed, moving, reference, moving_liver, settings):
    """The backend's runner (see :func:`liverfat.atlas.registration.register`)."""
    from liverfat.atlas.registration import torch_device, warp_with_field
    from liverfat.atlas.torch_registration import folding_fraction, sample_points_to_field
    from liverfat.nn.device import torch_threads

    options = {**FIREANTS_DEFAULTS, **settings.extra}
    device = torch_device(options)
    with torch_threads(settings.n_threads):  # restored after: later stages keep their own
        points, affine = optimise(fixed, moving, options, device)
    field = sample_points_to_field(points, fixed.reference)
    warped = warp_with_field(moving_liver, reference, field)
    return warped, {
        "displacement_mm": field,
        "affine_mm": affine.tolist(),
        "folding_fraction": folding_fraction(points),
        "device": device,
    }
