"""Atlas images: registration channels, body mask and (optionally) liver mask and fat fraction.

Dixon subjects register on two channels, water and fat fraction, as in the UK Biobank liver-fat
study; single-image scans (e.g. CHAOS T2-SPIR) register on their one image. Every channel is
scaled to a robust unit range inside the body so metrics see comparable intensities.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from liverfat.data.dixon import body_mask, body_mask_threshold
from liverfat.data.manifest import Manifest
from liverfat.errors import ImageError


@dataclass(frozen=True)
class AtlasImage:
    """One subject as the atlas engine sees it.

    Attributes
    ----------
    subject_id:
        The subject.
    channels:
        Registration channels (float32 SimpleITK images on one grid, scaled to ~0-1).
    body:
        Body mask (uint8) on the same grid.
    liver:
        Liver mask (uint8) or None.
    fat_fraction:
        Fat fraction (%) or None (single-image scans).
    """

    subject_id: str
    channels: tuple[sitk.Image, ...]
    body: sitk.Image
    liver: sitk.Image | None = None
    fat_fraction: sitk.Image | None = None

    @property
    def reference(self) -> sitk.Image:
        """The image whose grid everything else shares."""
        return self.channels[0]

    def shifted(self, offset_mm: np.ndarray) -> AtlasImage:
        """The same subject with every image's origin moved by ``offset_mm`` (x, y, z)."""

        def move(image: sitk.Image | None) -> sitk.Image | None:
            if image is None:
                return None
            out = sitk.Image(image)
            out.SetOrigin(tuple(np.asarray(image.GetOrigin()) + offset_mm))
            return out

        return replace(
            self,
            channels=tuple(move(c) for c in self.channels),
            body=move(self.body),
            liver=move(self.liver),
            fat_fraction=move(self.fat_fraction),
        )


def scale_to_body(image: sitk.Image, body: np.ndarray, *, percentile: float = 99.0) -> sitk.Image:
    """``image`` as float32 divided by its ``percentile`` inside ``body`` (0 stays 0)."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    inside = array[body > 0]
    top = float(np.percentile(inside, percentile)) if inside.size else float(array.max())
    out = sitk.GetImageFromArray(np.clip(array / max(top, 1e-6), 0.0, 2.0))
    out.CopyInformation(image)
    return out


def single_image_body_mask(array: np.ndarray) -> np.ndarray:
    """Body mask of a single scan: above the mean coronal Otsu threshold, largest component."""
    mask = array > body_mask_threshold(array)
    return largest_component(mask)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a binary array (uint8)."""
    labels = sitk.GetArrayFromImage(
        sitk.RelabelComponent(
            sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)))
        )
    )
    return (labels == 1).astype(np.uint8)


def _as_mask(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(array, np.uint8))
    image.CopyInformation(like)
    return image


def from_dixon(manifest: Manifest, subject_id: str, *, with_liver: bool = False) -> AtlasImage:
    """Water and fat-fraction channels, body mask and fat fraction of a Dixon subject."""
    dixon = manifest.dixon(subject_id)
    water = sitk.GetArrayFromImage(dixon.water)
    body = body_mask(water, sitk.GetArrayFromImage(dixon.fat))
    ff = sitk.Cast(dixon.fat_fraction, sitk.sitkFloat32)
    ff_channel = sitk.GetImageFromArray(
        np.clip(sitk.GetArrayFromImage(ff), 0, 100).astype(np.float32) / 100.0 * body
    )
    ff_channel.CopyInformation(dixon.water)
    liver = manifest.liver_mask(subject_id) if with_liver else None
    return AtlasImage(
        subject_id,
        (scale_to_body(dixon.water, body), ff_channel),
        _as_mask(body, dixon.water),
        liver,
        ff,
    )


def from_single_image(
    image: sitk.Image, subject_id: str, *, liver: sitk.Image | None = None
) -> AtlasImage:
    """One-channel atlas image (no fat fraction) of a non-Dixon scan such as CHAOS T2-SPIR."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    if not np.any(array > array.min()):
        raise ImageError(f"subject {subject_id}: image is constant")
    body = single_image_body_mask(array)
    if liver is not None:
        liver = sitk.Cast(liver > 0, sitk.sitkUInt8)
        liver.CopyInformation(image)
    return AtlasImage(subject_id, (scale_to_body(image, body),), _as_mask(body, image), liver)


def load_subject(manifest: Manifest, subject_id: str, *, with_liver: bool = False) -> AtlasImage:
    """Dixon channels when the subject has them, otherwise its single ``image``."""
    if manifest.has(subject_id, "image") and not manifest.has(subject_id, "water"):
        liver = manifest.liver_mask(subject_id) if with_liver else None
        return from_single_image(manifest.read_image(subject_id, "image"), subject_id, liver=liver)
    return from_dixon(manifest, subject_id, with_liver=with_liver)


def centre_of_mass_mm(mask: sitk.Image) -> np.ndarray:
    """Physical centre (mm, x y z) of the non-zero voxels of ``mask``."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise ImageError("empty body mask: cannot initialise the registration")
    return np.asarray(stats.GetCentroid(1))


def align_centres(fixed: AtlasImage, moving: AtlasImage) -> AtlasImage:
    """``moving`` with its origin shifted so its body centre of mass meets the fixed one's.

    The initial alignment every backend starts from (CHAOS origins differ by up to 240 mm).
    """
    return moving.shifted(centre_of_mass_mm(fixed.body) - centre_of_mass_mm(moving.body))


def resample_to_spacing(
    image: sitk.Image, spacing_mm: tuple[float, float, float] | None, *, nearest: bool = False
) -> sitk.Image:
    """``image`` on a grid no finer than ``spacing_mm`` (x, y, z) covering the same extent."""
    if spacing_mm is None:
        return image
    old_spacing = np.asarray(image.GetSpacing())
    new_spacing = np.maximum(old_spacing, np.asarray(spacing_mm, float))
    if np.allclose(new_spacing, old_spacing):
        return image
    size = np.maximum(
        np.round(np.asarray(image.GetSize()) * old_spacing / new_spacing).astype(int), 1
    )
    if not nearest:
        sigma = np.sqrt(np.maximum((new_spacing / 2) ** 2 - (old_spacing / 2) ** 2, 0))
        image = sitk.SmoothingRecursiveGaussian(image, sigma.tolist())
    return sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
        image.GetOrigin(),
        new_spacing.tolist(),
        image.GetDirection(),
        0.0,
        image.GetPixelID(),
    )


def at_working_resolution(
    subject: AtlasImage, spacing_mm: tuple[float, float, float] | None
) -> AtlasImage:
    """Channels and body mask resampled to ``spacing_mm`` (liver and fat fraction untouched)."""
    if spacing_mm is None:
        return subject
    return replace(
        subject,
        channels=tuple(resample_to_spacing(c, spacing_mm) for c in subject.channels),
        body=resample_to_spacing(subject.body, spacing_mm, nearest=True),
    )
