"""The torch backend's optimiser: affine then a diffeomorphic deformation, on any device.

The map from fixed to moving points is ``x -> A (x + u(x)) + t`` in normalised coordinates of
the working grid (``align_corners=True``). ``u`` is the exponential of a stationary velocity
field on a control grid ``control_spacing_voxels`` coarser than each pyramid level (scaling and
squaring, as MONAI's ``DVF2DDF``), upsampled trilinearly, so the map does not fold. The
similarity is local NCC with MONAI's definition (:class:`LocalNCC`, tested equal to
:class:`monai.losses.LocalNormalizedCrossCorrelationLoss`), the regulariser MONAI's
:class:`~monai.losses.DiffusionLoss` on the velocity in control cells.

Where the time goes, and how it is kept short: the affine stage runs on the box of the fixed
body at the coarse level; the deformable stage only in the box around the affine image of the
template liver (the readout needs nothing else); pyramid levels leave thick slices unpooled
and size the LNCC window in millimetres; local sums are running sums. Runs on CUDA when present.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import SimpleITK as sitk


class LocalNCC:
    """Negative mean squared local NCC against a fixed ``target``, as MONAI computes it
    (summed over a batch of moving images, so each gets the gradient it would alone).

    Same value as :class:`monai.losses.LocalNormalizedCrossCorrelationLoss` with a rectangular
    kernel (tested), but the target's local sums are computed once per pyramid level and each
    local sum is a running-sum box filter over the stacked maps instead of three 1D
    convolutions per map: about 3-4x less time per evaluation on a CPU.
    """

    def __init__(
        self,
        target,
        kernel_size: int | tuple[int, int, int],
        smooth_nr: float = 0.0,
        smooth_dr: float = 1e-5,
    ):
        self.kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        self.volume = float(np.prod(self.kernel))
        self.smooth_nr, self.smooth_dr = smooth_nr, smooth_dr
        self.target = target
        t_sum, t2_sum = self._sums(target, target * target)
        self.t_sum = t_sum
        self.t_var = (t2_sum - t_sum * t_sum / self.volume).clamp_min(smooth_dr)

    def _sums(self, *maps):
        import torch

        return box_sum(torch.cat(maps, dim=1), self.kernel).chunk(len(maps), dim=1)

    def __call__(self, pred):
        p_sum, p2_sum, tp_sum = self._sums(pred, pred * pred, self.target * pred)
        cross = tp_sum - p_sum * self.t_sum / self.volume
        p_var = (p2_sum - p_sum * p_sum / self.volume).clamp_min(self.smooth_dr)
        ratio = (cross * cross + self.smooth_nr) / (self.t_var * p_var)
        return -ratio.flatten(1).mean(1).sum()  # a batch of moving images: the sum of theirs


def box_sum(volume, kernel: tuple[int, int, int]):
    """Sum over a ``kernel`` (odd voxels along D, H, W) box around each voxel of (B, C, D, H, W),
    zeros outside.

    Separable running sums (cumsum and a difference per axis): O(1) per voxel whatever the
    kernel, and its gradient is a cumsum too.
    """
    import torch.nn.functional as F

    for dim, size in zip((2, 3, 4), kernel, strict=True):
        if size == 1:
            continue
        pad = [0] * 6
        pad[2 * (4 - dim)], pad[2 * (4 - dim) + 1] = size // 2 + 1, size // 2
        running = F.pad(volume, pad).cumsum(dim)
        n = volume.shape[dim]
        volume = running.narrow(dim, size, n) - running.narrow(dim, 0, n)
    return volume


Box = tuple[tuple[int, int], ...]  # (start, stop) voxels along D, H, W of the working grid


def level_geometry(
    factor: int, spacing_zyx: tuple[float, float, float], kernel: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Pooling factors and LNCC kernel (voxels along D, H, W) of a pyramid level.

    ``factor`` coarsens the finest axis; coarser axes (thick slices) are pooled only as far as
    the level's target spacing, and the kernel spans about the same millimetres on every axis.
    """
    finest = min(spacing_zyx)
    pool = tuple(max(1, round(factor * finest / s)) for s in spacing_zyx)
    level_spacing = [s * p for s, p in zip(spacing_zyx, pool, strict=True)]
    reach_mm = kernel * factor * finest
    sizes = tuple(max(3, 2 * int(reach_mm / s // 2) + 1) for s in level_spacing)
    return pool, sizes


def bounding_box(mask: np.ndarray, margin: tuple[int, ...] = (0, 0, 0)) -> Box:
    """(start, stop) of the non-zero voxels of a (D, H, W) mask grown by ``margin`` voxels."""
    if not mask.any():
        return tuple((0, n) for n in mask.shape)
    box = []
    for axis, (n, grow) in enumerate(zip(mask.shape, margin, strict=True)):
        present = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        box.append((max(0, int(present[0]) - grow), min(n, int(present[-1]) + 1 + grow)))
    return tuple(box)


class Level:
    """One pyramid level of a box of the fixed image.

    Attributes: ``fixed`` (1, C, d, h, w) pooled crop; ``centres`` (1, d, h, w, 3) normalised
    xyz (``align_corners=True`` convention of the whole working grid) of its voxel centres;
    ``similarity`` the local NCC against ``fixed``.
    """

    def __init__(self, fixed_full, box: Box, pool: tuple[int, ...], kernel: tuple[int, ...]):
        crop = _pooled(fixed_full[(..., *(slice(*b) for b in box))], pool)
        self.fixed = crop
        self.shape = tuple(crop.shape[2:])
        self.centres = voxel_centres(box, pool, fixed_full.shape[2:]).to(crop.device)
        # normalised extent of the box along D, H, W (for displacement units)
        self.extent = [
            2.0 * max(hi - lo - 1, 1) / max(n - 1, 1)
            for (lo, hi), n in zip(box, fixed_full.shape[2:], strict=True)
        ]
        self.similarity = LocalNCC(crop, kernel)

    def affine_points(self, theta):
        return affine_points(self.centres, theta)


def voxel_centres(box: Box, pool: tuple[int, ...], full_shape):
    """(1, d, h, w, 3) normalised xyz of the centres of ``pool``-voxel blocks tiling ``box``."""
    import torch

    axes = []
    for (lo, hi), p, n in zip(box, pool, full_shape, strict=True):
        starts = np.arange(lo, hi, p)
        centre = (starts + np.minimum(starts + p, hi) - 1) / 2.0
        axes.append(torch.as_tensor(2.0 * centre / max(n - 1, 1) - 1.0, dtype=torch.float32))
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([xx, yy, zz], -1).unsqueeze(0)


def affine_points(centres, theta):
    """Moving points ``A x + t`` (B, d, h, w, 3) of fixed points ``centres`` (1, d, h, w, 3),
    one set per affine of ``theta`` (B, 3, 4)."""
    import torch

    batch = theta.shape[0]
    moved = torch.einsum(
        "bdhwj,bij->bdhwi", centres.expand(batch, *centres.shape[1:]), theta[..., :3]
    )
    return moved + theta[:, None, None, None, :, 3]


def _displaced(points, theta, displacement, shape):
    """``points + A u`` with ``u`` a control-grid displacement upsampled to ``shape``.

    ``A u`` is computed on the control grid and then upsampled (both are linear, so the order
    does not matter), which spares a 3 x 3 product per voxel.
    """
    import torch
    import torch.nn.functional as F

    moved = torch.einsum("bij,bjdhw->bidhw", theta[..., :3], displacement)
    up = F.interpolate(moved, size=shape, mode="trilinear", align_corners=True)
    return points + up.permute(0, 2, 3, 4, 1)


class ControlGrid:
    """The control grid of a deformable level and the constants its exponential needs.

    Built once per level, not per iteration: on CUDA every tensor made from Python numbers is a
    host-to-device copy that stalls the optimiser's queue of kernels.

    Attributes: ``shape`` (c_z, c_y, c_x); ``cells`` (1, 3, 1, 1, 1) control cells per
    normalised unit of the working grid along z, y, x; ``identity`` (1, c_z, c_y, c_x, 3) the
    grid's own normalised xyz; ``to_grid`` (1, 3, 1, 1, 1) cells -> the grid's normalised units
    (z, y, x); ``to_working`` (1, 3, 1, 1, 1) the grid's normalised units -> the working grid's
    (x, y, z); ``inside`` (1, 1, c_z, c_y, c_x) one inside, zero on the border (which stays put:
    no seam with the affine outside the box).
    """

    def __init__(self, shape, cells):
        import torch

        self.shape = tuple(int(c) for c in shape)
        self.cells = cells
        device = cells.device
        self.identity = voxel_centres(tuple((0, c) for c in self.shape), (1, 1, 1), self.shape)
        self.identity = self.identity.to(device)
        to_grid = [2.0 / max(n - 1, 1) for n in self.shape]
        self.to_grid = torch.tensor(to_grid, dtype=cells.dtype, device=device).view(1, 3, 1, 1, 1)
        self.to_working = (self.to_grid * cells).flip(1)
        self.inside = torch.zeros((1, 1, *self.shape), dtype=cells.dtype, device=device)
        self.inside[..., 1:-1, 1:-1, 1:-1] = 1.0


def _exponential(velocity, grid: ControlGrid, steps: int):
    """Displacement (normalised xyz of the working grid) of a stationary velocity field.

    ``velocity``: (1, 3, c, c, c) in control cells (z, y, x channels) on ``grid``; integrated
    by scaling and squaring (``steps`` compositions, as :class:`monai.networks.blocks.DVF2DDF`),
    so the map is a diffeomorphism up to interpolation error (see :func:`folding_fraction`).
    """
    flow = (velocity * grid.to_grid).flip(1) / 2**steps  # control-grid normalised xyz
    for _ in range(steps):
        flow = flow + _warp(flow, grid.identity + flow.permute(0, 2, 3, 4, 1))
    return flow / grid.to_working  # control-grid normalised -> cells -> working grid


def _warp(moving, points):
    import torch.nn.functional as F

    return F.grid_sample(moving, points, mode="bilinear", padding_mode="zeros", align_corners=True)


def _pooled(volume, pool: tuple[int, ...]):
    import torch.nn.functional as F

    return F.avg_pool3d(volume, pool, ceil_mode=True) if any(p > 1 for p in pool) else volume


class Pooled:
    """The moving image at a pyramid level, sampled at points given on the working grid.

    A pooled voxel's centre lies mid-block, not where ``align_corners=True`` would put it on
    the smaller grid; :meth:`sample` maps working-grid normalised points to the pooled grid's
    own so both images of a level see the same anatomy at the same point.
    """

    def __init__(self, moving, pool: tuple[int, ...]):
        self.volume = _pooled(moving, pool)
        scale, offset = [], []
        for n, m, p in zip(moving.shape[2:], self.volume.shape[2:], pool, strict=True):
            # working index i = (x + 1) (n - 1) / 2; pooled index j = (i - (p - 1) / 2) / p
            a = (n - 1) / (p * max(m - 1, 1))
            scale.append(a)
            offset.append(a - 1.0 - (p - 1) / (p * max(m - 1, 1)))
        self.scale = moving.new_tensor(scale[::-1])  # x, y, z
        self.offset = moving.new_tensor(offset[::-1])

    def sample(self, points):
        return _warp(self.volume, points * self.scale + self.offset)


def _roi_box(roi, theta, spacing_zyx, margin_mm: float, full_shape) -> Box:
    """Box of the working grid holding the affine image of the moving ROI, grown by a margin."""
    import torch

    pool = level_geometry(4, spacing_zyx, 3)[0]
    centres = voxel_centres(tuple((0, n) for n in full_shape), pool, full_shape).to(roi.device)
    with torch.no_grad():
        mapped = _warp(roi, affine_points(centres, theta))
    inside = (mapped[:, 0] > 0.5).any(0).cpu().numpy()  # the union over a batch
    if not inside.any():
        return tuple((0, n) for n in full_shape)
    coarse = bounding_box(inside)
    margin = [int(np.ceil(margin_mm / s)) for s in spacing_zyx]
    return tuple(
        (max(0, lo * p - grow), min(n, hi * p + grow))
        for (lo, hi), p, grow, n in zip(coarse, pool, margin, full_shape, strict=True)
    )


def optimise(
    fixed: np.ndarray,
    moving: np.ndarray,
    options: dict[str, Any],
    device: str,
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0),
    moving_roi: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, Box]:
    """Register ``moving`` to ``fixed`` (both (C, D, H, W) on one grid of ``spacing_zyx`` mm).

    ``fixed`` is zero outside the body: the affine stage sees the box of its non-zero voxels.
    The deformable stage is solved in the box holding the affine image of ``moving_roi``
    (D, H, W; e.g. the template liver) grown by ``options["roi_margin_mm"]``, or in the body box
    without one; outside it the transform is the affine.

    Returns the moving sample points (D, H, W, 3; normalised xyz in [-1, 1]) at full resolution,
    the affine ``theta`` (3 x 4) and the box where the deformation acts.
    """
    rois = None if moving_roi is None else moving_roi[None]
    points, theta, box = optimise_batch(fixed, moving[None], options, device, spacing_zyx, rois)
    return points[0], theta[0], box


def optimise_batch(
    fixed: np.ndarray,
    moving: np.ndarray,
    options: dict[str, Any],
    device: str,
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0),
    moving_roi: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, Box]:
    """:func:`optimise` for a batch of moving images (B, C, D, H, W), with their ROIs
    (B, D, H, W), in one call: on a GPU, B templates cost little more than one.

    Each template has its own affine and velocity field, and the loss is the sum of theirs, so
    each gets the gradient (and, with Adam, nearly the steps) it would alone; the deformation
    box is the union of the templates' boxes. Returns points (B, D, H, W, 3), thetas
    (B, 3, 4) and the box.
    """
    import torch
    import torch.nn.functional as F

    # MONAI's DiffusionLoss indexes with a list on every call; torch warns each time (harmless).
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional")
    fixed_t = torch.as_tensor(fixed, dtype=torch.float32, device=device).unsqueeze(0)
    moving_t = torch.as_tensor(moving, dtype=torch.float32, device=device)
    batch, full_shape = moving_t.shape[0], tuple(fixed_t.shape[2:])
    body_box = bounding_box(fixed.any(axis=0))
    theta = _affine_stage(fixed_t, moving_t, body_box, options, spacing_zyx)
    box = body_box
    if moving_roi is not None:
        roi = torch.as_tensor(moving_roi, dtype=torch.float32, device=device)[:, None]
        box = _roi_box(roi, theta, spacing_zyx, float(options["roi_margin_mm"]), full_shape)
    displacement = _deformable_stage(fixed_t, moving_t, theta, box, options, spacing_zyx)
    with torch.no_grad():
        points = F.affine_grid(theta, (batch, 1, *full_shape), align_corners=True)
        if displacement is not None:
            inner = tuple(slice(*b) for b in box)
            crop_points = points[(slice(None), *inner)]
            crop_shape = tuple(b[1] - b[0] for b in box)
            points[(slice(None), *inner)] = _displaced(crop_points, theta, displacement, crop_shape)
    return points.cpu().numpy(), theta.cpu().numpy(), box


def _affine_stage(fixed_t, moving_t, body_box: Box, options: dict[str, Any], spacing_zyx):
    """The affine ``theta`` (1, 3, 4), fitted level by level on the body box."""
    import torch

    kernel = int(options["lncc_kernel"])
    batch = moving_t.shape[0]
    theta = torch.eye(3, 4, device=fixed_t.device).repeat(batch, 1, 1).requires_grad_(True)
    optimiser = torch.optim.Adam([theta], lr=float(options["affine_lr"]))
    for factor in options["affine_levels"]:
        pool, sizes = level_geometry(factor, spacing_zyx, kernel)
        level, m = Level(fixed_t, body_box, pool, sizes), Pooled(moving_t, pool)
        for _ in range(int(options["affine_iterations"])):
            optimiser.zero_grad()
            loss = level.similarity(m.sample(level.affine_points(theta)))
            loss.backward()
            optimiser.step()
    return theta.detach()


def _deformable_stage(fixed_t, moving_t, theta, box: Box, options: dict[str, Any], spacing_zyx):
    """The displacement (on the finest level's control grid) of the stationary velocity field
    fitted coarse to fine inside ``box``; None without deformable levels."""
    import torch
    import torch.nn.functional as F
    from monai.losses import DiffusionLoss

    device = fixed_t.device
    kernel = int(options["lncc_kernel"])
    smoothness = DiffusionLoss()
    steps = int(options["integration_steps"])
    velocity, displacement, grid = None, None, None
    for factor in options["deformable_levels"]:
        pool, sizes = level_geometry(factor, spacing_zyx, kernel)
        level, m = Level(fixed_t, box, pool, sizes), Pooled(moving_t, pool)
        control = [max(3, s // int(options["control_spacing_voxels"])) for s in level.shape]
        # control cells per normalised unit along z, y, x
        cells = torch.tensor(
            [(c - 1) / e for c, e in zip(control, level.extent, strict=True)],
            device=device,
        ).view(1, 3, 1, 1, 1)
        if velocity is None:
            start = torch.zeros((moving_t.shape[0], 3, *control), device=device)
        else:
            start = F.interpolate(velocity, size=control, mode="trilinear", align_corners=True)
            start = start / grid.cells * cells
        grid = ControlGrid(control, cells)
        velocity = start.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([velocity], lr=float(options["deformable_lr"]))
        points = level.affine_points(theta)
        for _ in range(int(options["deformable_iterations"])):
            optimiser.zero_grad()
            displacement = _exponential(velocity * grid.inside, grid, steps)
            warped = m.sample(_displaced(points, theta, displacement, level.shape))
            # DiffusionLoss averages over the batch: times B, each template's own term
            regulariser = smoothness(velocity) * velocity.shape[0]
            loss = level.similarity(warped) + float(options["diffusion_weight"]) * regulariser
            loss.backward()
            optimiser.step()
        velocity = velocity.detach()
        with torch.no_grad():
            displacement = _exponential(velocity * grid.inside, grid, steps)
    return displacement


def folding_fraction(points: np.ndarray, box: Box | None = None) -> float:
    """Fraction of voxels where the map fixed -> moving folds (Jacobian determinant <= 0).

    ``points``: (D, H, W, 3) moving sample points, normalised xyz, as :func:`optimise` returns.
    With ``box``, the map is taken to be affine outside it (as :func:`optimise` makes it), so
    only the box is differentiated.
    """
    shape = points.shape[:3]
    if box is None:
        box = tuple((0, n) for n in shape)
    inner = points[tuple(slice(lo, hi) for lo, hi in box)]
    index = (inner.astype(np.float64) + 1.0) / 2.0 * (np.asarray(shape[::-1]) - 1.0)
    if min(index.shape[:3]) < 2:
        return 0.0
    jacobian = np.stack(
        [np.stack(np.gradient(index[..., c], axis=(2, 1, 0)), -1) for c in range(3)], -2
    )  # (d, h, w, 3 outputs xyz, 3 inputs xyz)
    folded = int((np.linalg.det(jacobian) <= 0).sum())
    outside = int(np.prod(shape)) - inner[..., 0].size
    if outside:
        corner = index[0, 0, 0]
        step = [index[tuple(int(a == i) for i in range(3))] - corner for a in (2, 1, 0)]
        folded += outside * int(np.linalg.det(np.stack(step, -1)) <= 0)
    return folded / int(np.prod(shape))


def sample_points_to_field(points: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """Displacement field (mm, vector float64 on ``grid``) from normalised moving sample points.

    Worked in place in float32 (index displacement, then mm): at the full neck-to-knee grid
    the float64 arrays of the direct formula cost about 1.5 GB more.
    """
    size_xyz = np.asarray(grid.GetSize(), np.float32)
    shift = np.add(points, 1.0, dtype=np.float32)
    shift *= 0.5 * (size_xyz - 1.0)  # moving index (x, y, z) of every fixed voxel
    for axis, n in enumerate(points.shape[2::-1]):  # minus the fixed voxel's own index
        shape = [1, 1, 1]
        shape[2 - axis] = n
        shift[..., axis] -= np.arange(n, dtype=np.float32).reshape(shape)
    to_mm = np.reshape(grid.GetDirection(), (3, 3)) * np.asarray(grid.GetSpacing())
    field = sitk.GetImageFromArray((shift @ to_mm.T.astype(np.float32)).astype(np.float64), True)
    field.CopyInformation(grid)
    return field
