"""A subject at a glance: the coronal fat-fraction slice through the liver (or body) centre, and
the volumes a predicted liver mask is drawn on against its reference.

For reviewing subjects by eye (e.g. probable reference errors): the slice is taken from the
subject's Dixon fat fraction (:meth:`~liverfat.data.manifest.Manifest.dixon`, in %) on its own
voxel grid, without resampling, after turning the volume to LPS axes (x toward the patient's
left, y posterior, z superior), so any stored orientation gives the same picture: superior at
the top and the patient's right on the left of the image (radiological convention).
:func:`mask_overlay_volumes` turns its volumes to the same LPS axes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from liverfat.data.dixon import body_mask
from liverfat.data.geometry import check_same_geometry
from liverfat.data.io import read_volume
from liverfat.data.manifest import Manifest
from liverfat.errors import ImageError


@dataclass(frozen=True)
class FatFractionSlice:
    """A 2-D fat-fraction image of one subject.

    Attributes
    ----------
    subject_id:
        The subject.
    image_pct:
        Fat fraction (%), float32, rows superior to inferior, columns patient right to left.
    pixel_mm:
        Row and column pixel size (mm): the scan's z and x spacing.
    index:
        The slice's anterior-to-posterior voxel index in the LPS-oriented volume.
    centre:
        What the slice passes through the centre of mass of: ``"liver"`` (the manifest's liver
        mask) or ``"body"`` (the UK Biobank body mask, for subjects without a liver mask).
    """

    subject_id: str
    image_pct: np.ndarray
    pixel_mm: tuple[float, float]
    index: int
    centre: str


def _lps(image: sitk.Image) -> sitk.Image:
    return sitk.DICOMOrient(image, "LPS")


def coronal_slice(manifest: Manifest, subject_id: str) -> FatFractionSlice:
    """The coronal fat-fraction slice through the centre of the subject's liver (else body).

    The liver mask is used where the manifest has one for the subject; otherwise the slice goes
    through the centre of mass of the body mask (:func:`~liverfat.data.dixon.body_mask`), the
    plane of the UK Biobank liver-fat format.

    Raises
    ------
    ImageError
        The subject has no Dixon images, an empty liver or body mask, or a liver mask on another
        grid than its fat fraction.
    """
    dixon = manifest.dixon(subject_id)
    ff = _lps(dixon.fat_fraction)
    if manifest.has(subject_id, "liver_mask"):
        liver = manifest.liver_mask(subject_id)
        try:
            check_same_geometry(dixon.fat_fraction, liver, names=("fat fraction", "liver mask"))
        except ImageError as exc:
            raise ImageError(f"subject {subject_id}: {exc}") from exc
        mask, centre = sitk.GetArrayFromImage(_lps(liver)) > 0, "liver"
    else:
        water = sitk.GetArrayFromImage(_lps(dixon.water))
        fat = sitk.GetArrayFromImage(_lps(dixon.fat))
        try:
            mask, centre = body_mask(water, fat) > 0, "body"
        except ValueError as exc:
            raise ImageError(f"subject {subject_id}: {exc}") from exc
    if not mask.any():
        raise ImageError(f"subject {subject_id}: empty {centre} mask")
    index = int(round(float(np.nonzero(mask)[1].mean())))  # arrays are (z, y, x)
    plane = sitk.GetArrayFromImage(ff)[:, index, :]
    spacing = ff.GetSpacing()
    return FatFractionSlice(
        subject_id=str(subject_id),
        image_pct=np.ascontiguousarray(plane[::-1], dtype=np.float32),  # superior at the top
        pixel_mm=(float(spacing[2]), float(spacing[0])),
        index=index,
        centre=centre,
    )


@dataclass(frozen=True)
class OverlayVolumes:
    """A subject's image with its reference and predicted liver masks, as LPS-oriented arrays.

    Attributes
    ----------
    subject_id:
        The subject.
    column:
        The manifest column the image came from (e.g. ``water``).
    image:
        The image, float32, ``(z, y, x)`` with z superior, y posterior, x toward the patient's
        left; intensity in the column's own unit.
    reference, predicted:
        Boolean masks on the image's grid, same axes.
    spacing_mm:
        Voxel size (mm) along ``(z, y, x)``.
    """

    subject_id: str
    column: str
    image: np.ndarray
    reference: np.ndarray
    predicted: np.ndarray
    spacing_mm: tuple[float, float, float]


def overlay_column(manifest: Manifest, subject_id: str, column: str | None = None) -> str:
    """The image column to draw masks on: ``column`` if given, else ``water``, else ``image``.

    Raises
    ------
    ImageError
        The subject has no image in that column (or in neither default).
    """
    candidates = [column] if column else ["water", "image"]
    for name in candidates:
        if manifest.has(subject_id, name):
            return name
    raise ImageError(f"subject {subject_id}: no {' or '.join(candidates)} image to draw masks on")


def mask_overlay_volumes(
    manifest: Manifest,
    subject_id: str,
    predicted: str | os.PathLike[str],
    *,
    column: str | None = None,
) -> OverlayVolumes:
    """Read a subject's image, reference liver mask and a predicted mask file, on one grid.

    Parameters
    ----------
    manifest:
        Gives the image (:func:`overlay_column`) and the reference
        (:meth:`~liverfat.data.manifest.Manifest.liver_mask`).
    subject_id:
        The subject.
    predicted:
        Path of the predicted mask volume (non-zero = liver; an empty mask is allowed).
    column:
        The image column; default ``water``, else ``image``.

    Raises
    ------
    ImageError
        A missing or unreadable image or mask, an empty reference, or masks on another grid
        than the image.
    """
    name = overlay_column(manifest, subject_id, column)
    image = manifest.read_image(subject_id, name)
    reference = manifest.liver_mask(subject_id)
    try:
        mask = read_volume(predicted, allow_empty=True)
    except ImageError as exc:
        raise ImageError(f"subject {subject_id}: predicted mask: {exc}") from exc
    for other, label in ((reference, "reference mask"), (mask, "predicted mask")):
        try:
            check_same_geometry(image, other, names=(name, label))
        except ImageError as exc:
            raise ImageError(f"subject {subject_id}: {exc}") from exc
    image = _lps(image)
    spacing = image.GetSpacing()
    return OverlayVolumes(
        subject_id=str(subject_id),
        column=name,
        image=sitk.GetArrayFromImage(image).astype(np.float32),
        reference=sitk.GetArrayFromImage(_lps(reference)) > 0,
        predicted=sitk.GetArrayFromImage(_lps(mask)) > 0,
        spacing_mm=(float(spacing[2]), float(spacing[1]), float(spacing[0])),
    )
