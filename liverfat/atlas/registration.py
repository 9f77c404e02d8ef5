"""Registration backends behind one interface: fixed, moving (channels + body mask) -> warped mask.

Every backend receives the moving subject already centred on the fixed one (centres of mass of the
body masks, :func:`~liverfat.atlas.images.align_centres`), registers on all channels with a
normalised cross-correlation metric inside the fixed body mask, and returns the moving liver mask
warped (nearest neighbour) onto the fixed subject's grid, plus the transform for quality control.

* ``elastix`` (itk-elastix): affine then B-spline, multi-resolution.
* ``deform`` (pydeform, the graph-cut method the UK Biobank liver-fat study used), after a
  SimpleITK affine.
* ``torch``: affine then a diffeomorphic (stationary velocity) deformation optimised with Adam
  on local NCC (MONAI's definition) and MONAI's diffusion regulariser, around the template
  liver; CUDA when available, CPU otherwise.
* ``fireants`` (FireANTs, installed without its dependencies: see
  :mod:`liverfat.atlas.fireants_registration`): affine then a greedy compositive deformation on
  local cross-correlation, multi-scale; CUDA when available, CPU otherwise.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from liverfat.atlas.fireants_registration import FIREANTS_DEFAULTS
from liverfat.atlas.fireants_registration import run as _fireants
from liverfat.atlas.images import AtlasImage, at_working_resolution
from liverfat.errors import LiverfatError

BACKENDS = ("elastix", "deform", "torch", "fireants")
#: Backends that run in torch, on the device :func:`torch_device` names.
TORCH_BACKENDS = ("torch", "fireants")


@dataclass
class Registration:
    """Result of one registration.

    Attributes
    ----------
    warped_mask:
        Moving liver mask on the fixed grid (uint8).
    transform:
        Backend-specific description for QC (parameter maps, displacement field, matrices).
    seconds:
        Wall time of the registration itself (s).
    """

    warped_mask: sitk.Image
    transform: Any
    seconds: float


@dataclass
class BackendSettings:
    """Settings shared by every backend.

    Attributes
    ----------
    working_spacing_mm:
        Register on a grid no finer than this (x, y, z mm); None registers at native resolution.
        Masks are always warped onto the fixed subject's native grid.
    n_threads:
        Native threads for the registration (ITK's global default, OpenMP, torch).
    """

    working_spacing_mm: tuple[float, float, float] | None = None
    n_threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def register(
    backend: str, fixed: AtlasImage, moving: AtlasImage, settings: BackendSettings
) -> Registration:
    """Register ``moving`` (already centred, with a liver mask) to ``fixed`` with ``backend``."""
    check_pair(backend, fixed, moving)
    work_fixed = at_working_resolution(fixed, settings.working_spacing_mm)
    work_moving = at_working_resolution(moving, settings.working_spacing_mm)
    _import_backend(backend)  # import time (torch + MONAI: seconds) is not registration time
    start = time.perf_counter()
    runner = {"elastix": _elastix, "deform": _deform, "torch": _torch, "fireants": _fireants}[
        backend
    ]
    warped, transform = runner(work_fixed, work_moving, fixed.reference, moving.liver, settings)
    return Registration(
        sitk.Cast(warped > 0, sitk.sitkUInt8), transform, time.perf_counter() - start
    )


def check_pair(backend: str, fixed: AtlasImage, moving: AtlasImage) -> None:
    """One-line errors for a registration that cannot run."""
    if backend not in BACKENDS:
        raise LiverfatError(f"unknown registration backend {backend!r}; choose {BACKENDS}")
    if moving.liver is None:
        raise LiverfatError(f"template {moving.subject_id} has no liver mask")
    if len(fixed.channels) != len(moving.channels):
        raise LiverfatError(
            f"subject {fixed.subject_id} has {len(fixed.channels)} channels but template "
            f"{moving.subject_id} has {len(moving.channels)}"
        )


def _import_backend(backend: str) -> None:
    if backend == "elastix":
        import itk

        # itk loads its wrapped modules lazily (~10 s for elastix, once per process)
        _ = itk.ElastixRegistrationMethod, itk.ParameterObject, itk.TransformixFilter
    elif backend == "deform":
        import pydeform.sitk_api  # noqa: F401
    elif backend == "fireants":
        from liverfat.atlas.fireants_registration import import_fireants

        import_fireants()
    else:
        import monai.losses  # noqa: F401
        import torch  # noqa: F401


def warp_with_field(mask: sitk.Image, reference: sitk.Image, field: sitk.Image) -> sitk.Image:
    """Warp ``mask`` onto ``reference`` with a displacement field (mm, fixed -> moving points)."""
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    return sitk.Resample(mask, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def warp_image(transform: dict[str, Any], image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Warp a moving intensity ``image`` (linear, float32) onto ``reference`` with a
    registration's ``transform``: its displacement field, or elastix's parameter maps."""
    if "displacement_mm" in transform:
        field = sitk.Cast(transform["displacement_mm"], sitk.sitkVectorFloat64)
        return sitk.Resample(
            image,
            reference,
            sitk.DisplacementFieldTransform(field),
            sitk.sitkLinear,
            0.0,
            sitk.sitkFloat32,
        )
    if "elastix_parameter_maps" in transform:
        return _transformix_linear(transform["elastix_parameter_maps"], image, reference)
    raise LiverfatError("this registration kept no transform to warp an image with")


# elastix --------------------------------------------------------------------------------------
#: Fast defaults: 4 levels, 80 affine + 100 B-spline iterations per level, 3000 random
#: samples per iteration, 30 mm final control-point spacing, fast step-size estimation. About
#: 2-5 s per registration on one CPU core at quarter-scale phantom (56 x 44 x 92) and CHAOS at
#: 2.5 x 2.5 x 7.7 mm (128 x 128 x ~35); see ``benchmarks/bench_atlas.py``.
ELASTIX_DEFAULTS = {
    "resolutions": 4,
    "affine_iterations": 80,
    "bspline_iterations": 100,
    "grid_spacing_mm": 30.0,
    "spatial_samples": 3000,
    "parameter_estimation": "DisplacementDistribution",
}


def _to_itk(image: sitk.Image, pixel: str = "F"):
    import itk

    array = sitk.GetArrayFromImage(image).astype(np.float32 if pixel == "F" else np.uint8)
    out = itk.GetImageFromArray(np.ascontiguousarray(array))
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(itk.matrix_from_array(np.reshape(image.GetDirection(), (3, 3))))
    return out


def _elastix_map(parameter_object, kind: str, n_channels: int, options: dict) -> dict:
    levels = int(options["resolutions"])
    pmap = parameter_object.GetDefaultParameterMap(kind, levels)
    pmap["Registration"] = ["MultiMetricMultiResolutionRegistration"]
    pmap["Metric"] = ["AdvancedNormalizedCorrelation"] * n_channels
    pmap["FixedImagePyramid"] = ["FixedSmoothingImagePyramid"] * n_channels
    pmap["MovingImagePyramid"] = ["MovingSmoothingImagePyramid"] * n_channels
    pmap["Interpolator"] = ["BSplineInterpolator"] * n_channels
    pmap["ImageSampler"] = ["RandomCoordinate"] * n_channels
    pmap["NumberOfSpatialSamples"] = [str(options["spatial_samples"])]
    pmap["ErodeMask"] = ["false"]
    pmap["AutomaticTransformInitialization"] = ["false"]
    pmap["WriteResultImage"] = ["false"]
    iterations = options["affine_iterations" if kind == "affine" else "bspline_iterations"]
    pmap["MaximumNumberOfIterations"] = [str(iterations)]
    # elastix's default step-size estimation ("Original") computes Jacobian terms over the whole
    # B-spline grid: ~90% of the run time here; Bai's displacement-distribution method is fast.
    pmap["ASGDParameterEstimationMethod"] = [str(options["parameter_estimation"])]
    if kind == "bspline":
        pmap["FinalGridSpacingInPhysicalUnits"] = [str(options["grid_spacing_mm"])]
    return pmap


def _elastix(fixed, moving, reference, moving_liver, settings):
    import itk

    threads = itk.MultiThreaderBase
    previous = threads.GetGlobalDefaultNumberOfThreads()
    threads.SetGlobalDefaultNumberOfThreads(settings.n_threads)
    try:  # restored after, as torch's: later stages of the process keep their own
        return _elastix_registration(itk, fixed, moving, reference, moving_liver, settings)
    finally:
        threads.SetGlobalDefaultNumberOfThreads(previous)


def _elastix_registration(itk, fixed, moving, reference, moving_liver, settings):
    options = {**ELASTIX_DEFAULTS, **settings.extra}
    n = len(fixed.channels)
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(_elastix_map(parameters, "affine", n, options))
    bspline = _elastix_map(parameters, "bspline", n, options)
    parameters.AddParameterMap(bspline)
    method = itk.ElastixRegistrationMethod.New(
        _to_itk(fixed.channels[0]), _to_itk(moving.channels[0])
    )
    for f_channel, m_channel in zip(fixed.channels[1:], moving.channels[1:], strict=True):
        method.AddFixedImage(_to_itk(f_channel))
        method.AddMovingImage(_to_itk(m_channel))
    method.SetFixedMask(_to_itk(fixed.body, "UC"))
    method.SetParameterObject(parameters)
    method.SetLogToConsole(False)
    method.UpdateLargestPossibleRegion()
    result = method.GetTransformParameterObject()
    maps = []
    for index in range(result.GetNumberOfParameterMaps()):
        pmap = result.GetParameterMap(index)
        pmap["Size"] = [str(s) for s in reference.GetSize()]
        pmap["Spacing"] = [str(s) for s in reference.GetSpacing()]
        pmap["Origin"] = [str(s) for s in reference.GetOrigin()]
        pmap["Direction"] = [str(s) for s in reference.GetDirection()]
        pmap["FinalBSplineInterpolationOrder"] = ["0"]
        pmap["ResultImagePixelType"] = ["float"]
        result.SetParameterMap(index, pmap)
        maps.append({k: list(v) for k, v in pmap.items()})
    warped = itk.transformix_filter(_to_itk(moving_liver), result, log_to_console=False)
    warped_sitk = sitk.GetImageFromArray((itk.GetArrayFromImage(warped) > 0.5).astype(np.uint8))
    warped_sitk.CopyInformation(reference)
    return warped_sitk, {"elastix_parameter_maps": maps}


def _transformix_linear(maps: list[dict], image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    import itk

    parameters = itk.ParameterObject.New()
    for pmap in maps:
        parameters.AddParameterMap({**pmap, "FinalBSplineInterpolationOrder": ["1"]})
    warped = itk.transformix_filter(_to_itk(image), parameters, log_to_console=False)
    out = sitk.GetImageFromArray(itk.GetArrayFromImage(warped).astype(np.float32))
    out.CopyInformation(reference)
    return out


# deform ---------------------------------------------------------------------------------------
#: The published study's settings: 6 pyramid levels, stop at level 1, block size 16, step 0.5,
#: regularisation weight 0.35, NCC on every channel.
DEFORM_DEFAULTS = {
    "pyramid_levels": 6,
    "pyramid_stop_level": 1,
    "block_size": [16, 16, 16],
    "step_size": 0.5,
    "regularization_weight": 0.35,
    "ncc_radius": 2,
    "affine_iterations": 100,
}


#: Seed of the affine metric's random samples. Never 0: SimpleITK reads 0 as
#: ``sitkWallClock`` and seeds from the clock, so every run sampled (and ranked) differently.
AFFINE_SAMPLING_SEED = 1


def affine_shrink_factors(size: tuple[int, ...], fewest_voxels: int = 4) -> list[int]:
    """The affine pyramid's shrink factors (4, 2, 1), leaving out levels that would keep fewer
    than ``fewest_voxels`` along some axis: on a small or coarse image they hold no samples."""
    return [f for f in (4, 2) if min(size) // f >= fewest_voxels] + [1]


def sitk_affine(fixed: AtlasImage, moving: AtlasImage, iterations: int = 100) -> sitk.Transform:
    """Affine (fixed -> moving points) by SimpleITK: correlation in the fixed body, up to 3
    levels (:func:`affine_shrink_factors`)."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricFixedMask(fixed.body)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed=AFFINE_SAMPLING_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, iterations)
    method.SetOptimizerScalesFromPhysicalShift()
    shrink = affine_shrink_factors(fixed.reference.GetSize())
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([f // 2 for f in shrink])
    initial = sitk.AffineTransform(3)
    initial.SetCenter(
        fixed.reference.TransformContinuousIndexToPhysicalPoint(
            [(s - 1) / 2 for s in fixed.reference.GetSize()]
        )
    )
    method.SetInitialTransform(initial, inPlace=True)
    method.Execute(fixed.channels[0], moving.channels[0])
    return initial


def _deform(fixed, moving, reference, moving_liver, settings):
    import pydeform.sitk_api as deform

    options = {**DEFORM_DEFAULTS, **settings.extra}
    affine = sitk_affine(fixed, moving, int(options["affine_iterations"]))
    slot = {
        "resampler": "gaussian",
        "normalize": True,
        "cost_function": [{"function": "ncc", "weight": 1.0, "radius": int(options["ncc_radius"])}],
    }
    deform_settings = {
        "pyramid_levels": int(options["pyramid_levels"]),
        "pyramid_stop_level": int(options["pyramid_stop_level"]),
        "block_size": list(options["block_size"]),
        "step_size": float(options["step_size"]),
        "regularization_weight": float(options["regularization_weight"]),
        "image_slots": [slot] * len(fixed.channels),
    }
    field = deform.register(
        list(fixed.channels),
        list(moving.channels),
        fixed_mask=sitk.Cast(fixed.body, sitk.sitkFloat32),
        affine_transform=affine,
        settings=deform_settings,
        num_threads=settings.n_threads,
    )
    # pydeform's displacement is total (affine included): fixed x -> moving x + d(x).
    warped = warp_with_field(moving_liver, reference, field)
    return warped, {"displacement_mm": field, "affine": list(affine.GetParameters())}


# torch ----------------------------------------------------------------------------------------
#: Affine at the 4x pyramid level, then a stationary velocity field (scaling and squaring, so
#: the map does not fold) at the 4x and 2x levels, solved in a box 30 mm around the affinely
#: mapped template liver. Levels coarsen the finest axis; thick slices are pooled only to the
#: level's spacing. About 1 s per registration on one CPU core for CHAOS at 2.5 x 2.5 x 7.7 mm,
#: over 3x faster than ``ELASTIX_DEFAULTS`` with a higher fused Dice (see
#: ``benchmarks/bench_atlas.py``); 30 deformable iterations per level gain about 0.01 median
#: Dice there for 25 % more time. The diffusion weight is 0.1 since stop 33 (0.25 before): the
#: nested CHAOS leave-one-out (``benchmarks/bench_atlas_nested.py``) chose it in every fold, it
#: lifts the full-grid phantom pair's Dice from 0.844 to 0.860, and the half-scale phantom's
#: readout MAE is unchanged (docs/atlas.md).
TORCH_DEFAULTS = {
    "affine_levels": [4],
    "affine_iterations": 100,
    "affine_lr": 0.01,
    "deformable_levels": [4, 2],
    "deformable_iterations": 20,
    "deformable_lr": 0.1,
    "control_spacing_voxels": 2,
    "lncc_kernel": 7,
    "diffusion_weight": 0.1,
    "integration_steps": 5,
    "roi_margin_mm": 30.0,
    "device": None,
}


def _on_fixed_grid(image: sitk.Image, fixed: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(
        sitk.Resample(image, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )


def torch_device(options: dict[str, Any]) -> str:
    """The device the torch (or fireants) backend runs on with these options (over
    ``TORCH_DEFAULTS``): the ``device`` named, or CUDA when present. Imports torch."""
    from liverfat.nn.device import pick_device

    return str(pick_device({**TORCH_DEFAULTS, **options}["device"] or "auto"))


def torch_inputs(fixed: AtlasImage, moving: AtlasImage, moving_liver: sitk.Image) -> dict[str, Any]:
    """The keyword arguments of :func:`liverfat.atlas.torch_registration.optimise` (less
    ``options`` and ``device``) for working-grid images: the fixed channels (zero outside its
    body), the moving channels and ``moving_liver`` resampled onto the fixed grid, its spacing."""
    grid = fixed.reference
    fixed_array = np.stack([sitk.GetArrayFromImage(c) for c in fixed.channels]) * (
        sitk.GetArrayFromImage(fixed.body) > 0
    )
    return {
        "fixed": fixed_array,
        "moving": np.stack([_on_fixed_grid(c, grid) for c in moving.channels]),
        "spacing_zyx": tuple(reversed(grid.GetSpacing())),
        "moving_roi": _on_fixed_grid(sitk.Cast(moving_liver, sitk.sitkFloat32), grid),
    }


def _torch(fixed, moving, reference, moving_liver, settings):
    return _torch_warps(fixed, [moving], [moving_liver], reference, settings)[0]


def _torch_warps(fixed, movings, livers, reference, settings) -> list[tuple[sitk.Image, dict]]:
    """Working-grid templates registered to ``fixed`` in one optimiser call; each one's liver
    mask warped onto ``reference`` (the fixed native grid), with its transform."""
    from liverfat.atlas.torch_registration import (
        folding_fraction,
        optimise_batch,
        sample_points_to_field,
    )
    from liverfat.nn.device import torch_threads

    options = {**TORCH_DEFAULTS, **settings.extra}
    options.pop("batch_templates", None)
    device = torch_device(options)
    inputs = [torch_inputs(fixed, m, liver) for m, liver in zip(movings, livers, strict=True)]
    with torch_threads(settings.n_threads):  # restored after: later stages keep their own
        points, thetas, box = optimise_batch(
            inputs[0]["fixed"],
            np.stack([i["moving"] for i in inputs]),
            options,
            device,
            inputs[0]["spacing_zyx"],
            np.stack([i["moving_roi"] for i in inputs]),
        )
    out = []
    for one_points, theta, liver in zip(points, thetas, livers, strict=True):
        field = sample_points_to_field(one_points, fixed.reference)
        transform = {
            "displacement_mm": field,
            "affine_theta": theta.tolist(),
            "folding_fraction": folding_fraction(one_points, box),
            "device": device,
        }
        out.append((warp_with_field(liver, reference, field), transform))
    return out


def backend_defaults(backend: str) -> dict[str, Any]:
    """A backend's default options (JSON-ready): part of every cache key and benchmark row."""
    defaults = {
        "elastix": ELASTIX_DEFAULTS,
        "deform": DEFORM_DEFAULTS,
        "torch": TORCH_DEFAULTS,
        "fireants": FIREANTS_DEFAULTS,
    }
    if backend not in defaults:
        raise LiverfatError(f"unknown registration backend {backend!r}; choose {BACKENDS}")
    return json.loads(json.dumps(defaults[backend]))


def settings_dict(settings: BackendSettings) -> dict[str, Any]:
    """JSON-ready settings."""
    return asdict(settings)


# several templates at once ---------------------------------------------------------------------
#: Bytes of GPU memory one template needs per working-grid voxel in a batched torch registration
#: (moving channels, sample points, the optimiser's intermediates), with room to spare.
BATCH_BYTES_PER_VOXEL = 96


def register_many(
    backend: str, fixed: AtlasImage, movings: list[AtlasImage], settings: BackendSettings
) -> list[Registration]:
    """Register several templates (centred, with liver masks) to ``fixed``.

    The torch backend on CUDA registers them in batches, as many per call as half the free GPU
    memory holds (:func:`liverfat.atlas.torch_registration.optimise_batch`); the option
    ``batch_templates`` (true / false) forces it on or off. Everywhere else, one by one. Each
    registration's ``seconds`` is its share of its batch's time.
    """
    for moving in movings:
        check_pair(backend, fixed, moving)
    batch = _batch_size(backend, fixed, len(movings), settings) if movings else 1
    if batch <= 1:
        return [register(backend, fixed, m, settings) for m in movings]
    out: list[Registration] = []
    for start in range(0, len(movings), batch):
        out.extend(_torch_batch(fixed, movings[start : start + batch], settings))
    return out


def _batch_size(backend: str, fixed: AtlasImage, n: int, settings: BackendSettings) -> int:
    """Templates per batched call: 1 off the torch backend or when batching is off."""
    if backend != "torch" or n < 2:
        return 1
    wanted = settings.extra.get("batch_templates")
    device = torch_device(settings.extra)
    if wanted is False or (wanted is None and not device.startswith("cuda")):
        return 1
    if not device.startswith("cuda"):
        return n
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    grid = at_working_resolution(fixed, settings.working_spacing_mm).reference
    need = int(np.prod(grid.GetSize())) * BATCH_BYTES_PER_VOXEL
    return max(1, min(n, int(0.5 * free // max(need, 1))))


def _torch_batch(
    fixed: AtlasImage, movings: list[AtlasImage], settings: BackendSettings
) -> list[Registration]:
    _import_backend("torch")
    spacing = settings.working_spacing_mm
    start = time.perf_counter()
    warps = _torch_warps(
        at_working_resolution(fixed, spacing),
        [at_working_resolution(m, spacing) for m in movings],
        [m.liver for m in movings],
        fixed.reference,
        settings,
    )
    share = (time.perf_counter() - start) / len(movings)
    return [
        Registration(sitk.Cast(warped > 0, sitk.sitkUInt8), {**t, "batch": len(movings)}, share)
        for warped, t in warps
    ]
