"""The torch backend's optimiser: affine then dense displacement, multi-resolution, on any device.

Built on MONAI's registration blocks: :class:`monai.losses.LocalNormalizedCrossCorrelationLoss`
(local NCC, the similarity) and :class:`monai.losses.DiffusionLoss` (smoothness of the
displacement). The deformation is ``x -> A(x + u(x))`` in normalised coordinates
(``align_corners=True``), with ``u`` parameterised on a control grid ``control_spacing_voxels``
coarser than each pyramid level and upsampled trilinearly. Runs on CUDA when present.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import SimpleITK as sitk


def _identity(shape: tuple[int, int, int], device) -> Any:
    import torch
    import torch.nn.functional as F

    eye = torch.eye(3, 4, device=device).unsqueeze(0)
    return F.affine_grid(eye, (1, 1, *shape), align_corners=True)  # (1, D, H, W, 3), xyz


def _sample_points(theta, displacement, shape):
    """Moving sample points (normalised xyz) for every fixed voxel."""
    import torch.nn.functional as F

    base = _identity(shape, theta.device)
    if displacement is not None:
        up = F.interpolate(displacement, size=shape, mode="trilinear", align_corners=True)
        base = base + up.permute(0, 2, 3, 4, 1)
    return (
        base @ theta[:, :, :3].transpose(1, 2).unsqueeze(1).unsqueeze(1)
        + theta[:, None, None, None, :, 3]
    )


def _warp(moving, points):
    import torch.nn.functional as F

    return F.grid_sample(moving, points, mode="bilinear", padding_mode="zeros", align_corners=True)


def _pyramid(volume, factor: int):
    import torch.nn.functional as F

    if factor == 1:
        return volume
    kernel = [max(1, min(factor, s)) for s in volume.shape[2:]]
    return F.avg_pool3d(volume, kernel, ceil_mode=True)


def optimise(
    fixed: np.ndarray, moving: np.ndarray, options: dict[str, Any], device: str
) -> tuple[np.ndarray, np.ndarray]:
    """Register ``moving`` to ``fixed`` (both (C, D, H, W) on one grid).

    Returns the moving sample points (D, H, W, 3; normalised xyz in [-1, 1]) at full resolution
    and the affine ``theta`` (3 x 4).
    """
    import torch
    from monai.losses import DiffusionLoss, LocalNormalizedCrossCorrelationLoss

    # MONAI's LNCC indexes with a list on every call; torch warns each time (harmless, MONAI's).
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional")
    torch.manual_seed(0)
    fixed_t = torch.as_tensor(fixed, dtype=torch.float32, device=device).unsqueeze(0)
    moving_t = torch.as_tensor(moving, dtype=torch.float32, device=device).unsqueeze(0)
    kernel = int(options["lncc_kernel"])
    similarity = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=kernel)
    smoothness = DiffusionLoss()
    theta = torch.eye(3, 4, device=device).unsqueeze(0).requires_grad_(True)
    optimiser = torch.optim.Adam([theta], lr=float(options["affine_lr"]))
    for factor in options["affine_levels"]:
        f, m = _pyramid(fixed_t, factor), _pyramid(moving_t, factor)
        for _ in range(int(options["affine_iterations"])):
            optimiser.zero_grad()
            loss = similarity(_warp(m, _sample_points(theta, None, f.shape[2:])), f)
            loss.backward()
            optimiser.step()
    theta = theta.detach()
    displacement = None
    for factor in options["deformable_levels"]:
        f, m = _pyramid(fixed_t, factor), _pyramid(moving_t, factor)
        shape = f.shape[2:]
        control = [max(2, s // int(options["control_spacing_voxels"])) for s in shape]
        if displacement is None:
            start = torch.zeros((1, 3, *control), device=device)
        else:
            start = torch.nn.functional.interpolate(
                displacement, size=control, mode="trilinear", align_corners=True
            )
        displacement = start.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([displacement], lr=float(options["deformable_lr"]) / factor)
        for _ in range(int(options["deformable_iterations"])):
            optimiser.zero_grad()
            warped = _warp(m, _sample_points(theta, displacement, shape))
            loss = similarity(warped, f) + float(options["diffusion_weight"]) * smoothness(
                displacement * torch.tensor(control, device=device).view(1, 3, 1, 1, 1).flip(1)
            )
            loss.backward()
            optimiser.step()
        displacement = displacement.detach()
    with torch.no_grad():
        points = _sample_points(theta, displacement, fixed_t.shape[2:])
    return points[0].cpu().numpy(), theta[0].cpu().numpy()


def sample_points_to_field(points: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """Displacement field (mm, vector float64 on ``grid``) from normalised moving sample points."""
    size_xyz = np.asarray(grid.GetSize(), float)
    index = (points.astype(np.float64) + 1.0) / 2.0 * (size_xyz - 1.0)  # (D, H, W, 3) xyz
    direction = np.reshape(grid.GetDirection(), (3, 3))
    spacing = np.asarray(grid.GetSpacing())
    origin = np.asarray(grid.GetOrigin())
    physical = origin + (index * spacing) @ direction.T
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in points.shape[:3]], indexing="ij")
    own = origin + (np.stack([xx, yy, zz], -1) * spacing) @ direction.T
    field = sitk.GetImageFromArray(physical - own, isVector=True)
    field.CopyInformation(grid)
    return field
