"""2D formats: fixed-size uint8 images made from a Dixon volume, the network's input.

A format is a registered function ``fn(dixon: DixonImages) -> np.ndarray`` returning a uint8 array
of shape (channels, height, width). Users add their own with :func:`register_format`. Formats may
also provide an ``align`` function that pushes any image of the subject's grid (the liver mask,
the water signal) through the same geometry, giving a float (height, width) map aligned with the
format; saliency overlays and the liver-region check use it.

Built-in formats (both defined on physical millimetres, so half- and quarter-scale scans give
formats of the same size and field of view as the full UK Biobank grid of
224 x 174 x 370 voxels of 2.23 x 2.23 x 3 mm):

``liverfat``
    The liver-fat format of the UK Biobank studies: the coronal fat-fraction slice through the
    body mask's centre of mass beside the sagittal slice through the centre of mass of the right
    body half, both cropped to the upper half of the field of view, 176 rows x 376 columns
    (coronal 224 columns of 2.23 mm, sagittal 152 columns of 2.23 mm; rows of 3 mm running from the
    middle of the field of view 528 mm upwards, superior at the top), fat fraction 0-50 % mapped
    linearly to 0-255. One channel.
``liverfat_masked``
    ``liverfat`` with the fat fraction outside the body mask set to 0.
``projection``
    Mean-intensity projections of water and fat signal, coronal and sagittal side by side, and a
    third channel holding the coronal and sagittal fat-fraction slices of ``liverfat`` (0-50 %),
    each resampled to 256 x 256 over the whole field of view. Water and fat share one intensity
    scale (the 99.5th percentile of the water projection maps to 255), so their ratio is kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from liverfat.data.atomic import atomic_path
from liverfat.data.dixon import body_mask
from liverfat.data.fingerprint import fingerprint, subject_files
from liverfat.data.manifest import DixonImages, Manifest
from liverfat.errors import ImageError, LiverfatError, subject_message
from liverfat.parallel import map_subjects

#: Fat fraction (%) that maps to 255 in the liver-fat format.
FF_MAX_PCT = 50.0
#: Built-in formats whose first channel is the fat fraction (0-50 % as 0-255).
FAT_FRACTION_FORMATS = ("liverfat", "liverfat_masked")
#: Manifest columns a format may read (their file signatures key the format cache).
FORMAT_INPUTS = ("water", "fat", "fat_fraction", "in_phase", "opposed_phase")
#: Output pixel spacing (mm) of the liver-fat format: columns (LR or AP) and rows (SI).
LIVERFAT_COLUMN_MM = 2.23
LIVERFAT_ROW_MM = 3.0
LIVERFAT_CORONAL_COLUMNS = 224
LIVERFAT_SAGITTAL_COLUMNS = 152
LIVERFAT_ROWS = 176
PROJECTION_SIZE = 256

FormatFunction = Callable[[DixonImages], np.ndarray]
AlignFunction = Callable[[DixonImages, sitk.Image], np.ndarray]


@dataclass(frozen=True)
class FormatSpec:
    """A registered format: its function, version (part of the cache key) and output shape."""

    name: str
    function: FormatFunction
    version: str
    shape: tuple[int, int, int]
    align: AlignFunction | None = None


_FORMATS: dict[str, FormatSpec] = {}


def register_format(
    name: str,
    *,
    shape: tuple[int, int, int],
    version: str = "1",
    align: AlignFunction | None = None,
) -> Callable[[FormatFunction], FormatFunction]:
    """Decorator registering ``fn(dixon) -> uint8 (channels, height, width)`` as format ``name``.

    ``version`` enters the cache fingerprint: bump it when the function's output changes.
    """

    def decorate(function: FormatFunction) -> FormatFunction:
        _FORMATS[name] = FormatSpec(name, function, version, tuple(shape), align)
        return function

    return decorate


def get_format(name: str) -> FormatSpec:
    if name not in _FORMATS:
        raise LiverfatError(f"unknown format {name!r}; registered: {', '.join(sorted(_FORMATS))}")
    return _FORMATS[name]


def format_names() -> list[str]:
    return sorted(_FORMATS)


# Geometry --------------------------------------------------------------------------------------
def _centre_of_mass_mm(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """Physical centre (mm, x y z) of the voxels where ``mask`` (z, y, x) is set."""
    index_zyx = np.argwhere(mask).mean(axis=0)
    return np.array(
        image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index_zyx[::-1]])
    )


def _fov_mm(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Physical bounds (mm, x y z) of the field of view: low and high voxel-edge corners."""
    size = np.array(image.GetSize(), float)
    corners = []
    for corner in np.ndindex(2, 2, 2):
        index = [-0.5 + c * s for c, s in zip(corner, size, strict=True)]
        corners.append(image.TransformContinuousIndexToPhysicalPoint(index))
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


@dataclass(frozen=True)
class SlicePlanes:
    """Where the liver-fat format samples: the coronal plane's y and the sagittal plane's x (mm)."""

    coronal_y_mm: float
    sagittal_x_mm: float
    centre_x_mm: float
    centre_y_mm: float
    middle_z_mm: float


def subject_body_mask(dixon: DixonImages) -> np.ndarray:
    """The UK Biobank body mask (bool, z y x) of a subject; one-line error if it is empty."""
    water = sitk.GetArrayViewFromImage(dixon.water)
    fat = sitk.GetArrayViewFromImage(dixon.fat)
    try:
        body = body_mask(water, fat).astype(bool)
    except ValueError as exc:
        raise ImageError(f"subject {dixon.subject_id}: {exc}") from exc
    if not body.any():
        raise ImageError(f"subject {dixon.subject_id}: empty body mask")
    return body


def slice_planes(dixon: DixonImages, body: np.ndarray | None = None) -> SlicePlanes:
    """Body mask centre of mass (coronal plane) and right-half centre of mass (sagittal plane)."""
    if body is None:
        body = subject_body_mask(dixon)
    com = _centre_of_mass_mm(dixon.water, body)
    # Patient right is -x (LPS): the right half holds body voxels left of the centre in x.
    x_mm = np.array(
        [dixon.water.TransformIndexToPhysicalPoint([i, 0, 0])[0] for i in range(body.shape[2])]
    )
    right = body & (x_mm < com[0])[None, None, :]
    right_com = _centre_of_mass_mm(dixon.water, right if right.any() else body)
    low, high = _fov_mm(dixon.water)
    centre = (low + high) / 2
    return SlicePlanes(com[1], right_com[0], centre[0], centre[1], centre[2])


def _plane_reference(
    columns: int, column_axis: int, fixed_axis: int, fixed_mm: float, centre_mm: float, z0: float
) -> sitk.Image:
    """A one-voxel-thick 3D grid: ``columns`` along ``column_axis`` and the format's rows in z."""
    size = [1, 1, LIVERFAT_ROWS]
    spacing = [1.0, 1.0, LIVERFAT_ROW_MM]
    origin = [0.0, 0.0, z0 + LIVERFAT_ROW_MM / 2]
    size[column_axis] = columns
    spacing[column_axis] = LIVERFAT_COLUMN_MM
    origin[column_axis] = centre_mm - (columns - 1) / 2 * LIVERFAT_COLUMN_MM
    origin[fixed_axis] = fixed_mm
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    reference.SetOrigin(origin)
    return reference


def _sample_plane(image: sitk.Image, reference: sitk.Image, nearest: bool) -> np.ndarray:
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    resampled = sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(), interpolator, 0.0
    )
    array = sitk.GetArrayFromImage(resampled)  # (rows, y, x) with one of y/x of size 1
    return array.reshape(LIVERFAT_ROWS, -1)[::-1]  # superior at the top


def liverfat_planes(image: sitk.Image, planes: SlicePlanes, *, nearest: bool = False) -> np.ndarray:
    """Sample ``image`` on the liver-fat format's coronal + sagittal planes, (176, 376) float32."""
    coronal = _plane_reference(
        LIVERFAT_CORONAL_COLUMNS, 0, 1, planes.coronal_y_mm, planes.centre_x_mm, planes.middle_z_mm
    )
    sagittal = _plane_reference(
        LIVERFAT_SAGITTAL_COLUMNS,
        1,
        0,
        planes.sagittal_x_mm,
        planes.centre_y_mm,
        planes.middle_z_mm,
    )
    return np.concatenate(
        [_sample_plane(image, coronal, nearest), _sample_plane(image, sagittal, nearest)], axis=1
    )


def encode_ff(ff_pct: np.ndarray) -> np.ndarray:
    """Fat fraction (%) 0-50 linearly to uint8 0-255 (clipped)."""
    return np.clip(np.round(np.asarray(ff_pct) * (255.0 / FF_MAX_PCT)), 0, 255).astype(np.uint8)


def decode_ff(values: np.ndarray) -> np.ndarray:
    """uint8 0-255 back to fat fraction (%), within half a step (0.098 %)."""
    return np.asarray(values, np.float32) * (FF_MAX_PCT / 255.0)


def liverfat_align(dixon: DixonImages, image: sitk.Image) -> np.ndarray:
    """Any image of the subject's grid (a mask, the water signal) in the liver-fat format's
    geometry, (176, 376) float32, nearest-neighbour sampled so mask values stay exact."""
    return liverfat_planes(image, slice_planes(dixon), nearest=True).astype(np.float32)


@register_format(
    "liverfat",
    shape=(1, LIVERFAT_ROWS, LIVERFAT_CORONAL_COLUMNS + LIVERFAT_SAGITTAL_COLUMNS),
    align=liverfat_align,
)
def liverfat_format(dixon: DixonImages) -> np.ndarray:
    """The liver-fat format (module docstring), uint8 (1, 176, 376)."""
    return encode_ff(liverfat_planes(dixon.fat_fraction, slice_planes(dixon)))[None]


@register_format(
    "liverfat_masked",
    shape=(1, LIVERFAT_ROWS, LIVERFAT_CORONAL_COLUMNS + LIVERFAT_SAGITTAL_COLUMNS),
    align=liverfat_align,
)
def liverfat_masked_format(dixon: DixonImages) -> np.ndarray:
    """The liver-fat format with fat fraction set to 0 outside the body mask (background noise
    of a magnitude fat-fraction map is random and carries no information), uint8 (1, 176, 376)."""
    body = subject_body_mask(dixon)
    planes = slice_planes(dixon, body)
    body_image = sitk.GetImageFromArray(body.astype(np.uint8))
    body_image.CopyInformation(dixon.water)
    inside = liverfat_planes(body_image, planes, nearest=True) > 0.5
    return encode_ff(liverfat_planes(dixon.fat_fraction, planes) * inside)[None]


# Projection format ------------------------------------------------------------------------------
def _resize(array: np.ndarray, rows: int, columns: int) -> np.ndarray:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, np.float32))
    reference = sitk.Image([columns, rows], sitk.sitkFloat32)
    reference.SetSpacing([array.shape[1] / columns, array.shape[0] / rows])
    reference.SetOrigin([(array.shape[1] / columns - 1) / 2, (array.shape[0] / rows - 1) / 2])
    return sitk.GetArrayFromImage(
        sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    )


def _projection_columns(image: sitk.Image) -> tuple[int, int]:
    low, high = _fov_mm(image)
    width_x, width_y = high[0] - low[0], high[1] - low[1]
    coronal = int(round(PROJECTION_SIZE * width_x / (width_x + width_y)))
    return coronal, PROJECTION_SIZE - coronal


def _side_by_side(
    coronal: np.ndarray, sagittal: np.ndarray, columns: tuple[int, int]
) -> np.ndarray:
    """(z, x) and (z, y) images to one (256, 256) canvas, superior at the top."""
    left = _resize(coronal[::-1], PROJECTION_SIZE, columns[0])
    right = _resize(sagittal[::-1], PROJECTION_SIZE, columns[1])
    return np.concatenate([left, right], axis=1)


def _projection_ff_channel(dixon: DixonImages, columns: tuple[int, int]) -> np.ndarray:
    planes = liverfat_planes(dixon.fat_fraction, slice_planes(dixon))
    coronal = planes[:, :LIVERFAT_CORONAL_COLUMNS]
    sagittal = planes[:, LIVERFAT_CORONAL_COLUMNS:]
    return np.concatenate(
        [
            _resize(coronal, PROJECTION_SIZE, columns[0]),
            _resize(sagittal, PROJECTION_SIZE, columns[1]),
        ],
        axis=1,
    )


def projection_align(dixon: DixonImages, image: sitk.Image) -> np.ndarray:
    """Any image of the subject's grid projected like the projection format (mean along the
    ray, coronal beside sagittal), (256, 256) float32; a mask's projection is > 0 where it lies."""
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)
    columns = _projection_columns(dixon.water)
    return _side_by_side(array.mean(axis=1), array.mean(axis=2), columns)


@register_format("projection", shape=(3, PROJECTION_SIZE, PROJECTION_SIZE), align=projection_align)
def projection_format(dixon: DixonImages) -> np.ndarray:
    """The projection format (module docstring), uint8 (3, 256, 256)."""
    water = sitk.GetArrayViewFromImage(dixon.water).astype(np.float32)
    fat = sitk.GetArrayViewFromImage(dixon.fat).astype(np.float32)
    columns = _projection_columns(dixon.water)
    channels = [_side_by_side(v.mean(axis=1), v.mean(axis=2), columns) for v in (water, fat)]
    scale = float(np.percentile(channels[0], 99.5)) or 1.0
    signal = [np.clip(np.round(c * (255.0 / scale)), 0, 255).astype(np.uint8) for c in channels]
    ff = encode_ff(_projection_ff_channel(dixon, columns))
    return np.stack([*signal, ff])


# Per-subject computation and caching -------------------------------------------------------
def format_key(manifest: Manifest, subject_id: str, format_name: str) -> str:
    """A key over the subject's input files (path, size, mtime) and the format (name, version)."""
    spec = get_format(format_name)
    files = subject_files(manifest, subject_id, FORMAT_INPUTS)
    key = {"format": spec.name, "version": spec.version, "shape": spec.shape, "files": files}
    return fingerprint(key, length=20)


@contextmanager
def single_threaded_itk() -> Iterator[None]:
    """Run SimpleITK filters on one thread, restoring the previous default afterwards.

    Formats run many filters on single slices (the body mask's Otsu threshold of every coronal
    slice, the plane resampling), where spawning threads costs more than it gains: at half scale
    the body mask takes about 3 times longer with 2 threads than with 1 on a 2-core machine.
    """
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def compute_format(manifest: Manifest, subject_id: str, format_name: str) -> np.ndarray:
    """Read a subject's Dixon images and compute one format (uint8, checked shape)."""
    spec = get_format(format_name)
    with single_threaded_itk():
        dixon = manifest.dixon(subject_id)
        array = np.asarray(spec.function(dixon))
    if array.dtype != np.uint8 or array.shape != spec.shape:
        raise LiverfatError(
            f"format {format_name} gave {array.dtype} {array.shape} for subject {subject_id}, "
            f"expected uint8 {spec.shape}"
        )
    return array


def cache_path(cache_dir: str | os.PathLike[str], subject_id: str, key: str) -> Path:
    return Path(cache_dir) / f"{subject_id}.{key}.npy"


def write_format_pngs(
    arrays: dict[str, np.ndarray], folder: str | os.PathLike[str], format_name: str
) -> list[Path]:
    """One greyscale PNG of each subject's last format channel, ``<subject>.<format>.png``."""
    import matplotlib.pyplot as plt

    paths = []
    for sid, array in arrays.items():
        paths.append(Path(folder) / f"{sid}.{format_name}.png")
        plt.imsave(paths[-1], array[-1], cmap="gray")
    return paths


def load_or_compute(
    manifest: Manifest, subject_id: str, format_name: str, cache_dir: str | os.PathLike[str] | None
) -> np.ndarray:
    """The format of one subject, from the cache when its fingerprint matches, else computed.

    New formats are written to the cache atomically, so interrupted runs never leave a torn file.
    """
    if cache_dir is None:
        return compute_format(manifest, subject_id, format_name)
    path = cache_path(cache_dir, subject_id, format_key(manifest, subject_id, format_name))
    if path.is_file():
        return np.load(path, allow_pickle=False)
    array = compute_format(manifest, subject_id, format_name)
    with atomic_path(path) as tmp:
        np.save(tmp, array, allow_pickle=False)
    return array


def _format_item(item: tuple) -> np.ndarray:
    manifest, subject_id, format_name, cache_dir = item
    return load_or_compute(manifest, subject_id, format_name, cache_dir)


def load_formats(
    manifest: Manifest,
    subject_ids: Sequence[str],
    format_name: str,
    cache_dir: str | os.PathLike[str] | None,
    *,
    executor: str = "serial",
    n_workers: int | None = None,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The formats of ``subject_ids`` (:func:`load_or_compute`, mapped by
    :func:`liverfat.parallel.map_subjects`) and a one-line error per subject that has none."""
    # one subject's manifest per item: a process pool or Dask ships each item separately
    cache = None if cache_dir is None else str(cache_dir)
    items = [(manifest.select(subject_ids=[s]), s, format_name, cache) for s in subject_ids]
    arrays, errors = {}, {}
    bar = "formats" if progress else None
    for outcome in map_subjects(
        _format_item, items, executor=executor, n_workers=n_workers, progress=bar
    ):
        sid = outcome.item[1]
        if outcome.ok:
            arrays[sid] = outcome.value
        else:
            errors[sid] = subject_message(sid, outcome.error)
    return arrays, errors
