"""From a probability map to a liver mask and its readout: volume (mL) and fat fraction (%).

The mask is the probability thresholded at 0.5, reduced to its largest 3D connected component
(face connectivity). The fat fraction is read as the median (and mean) inside the mask eroded
by a margin in mm, the Uppsala thesis' conservative fat-fraction mask that keeps partial-volume
voxels at the liver's edge out; with too few voxels left after erosion, the un-eroded mask is
used and the row flagged. Masks that are empty, implausibly small or large are flagged, and so is
a fat fraction that suggests a water-fat swap (its volume stays usable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from liverfat.data.dixon import swap_suspicion

#: Plausible adult liver volumes (mL); outside them the readout is flagged.
MIN_LIVER_ML = 300.0
MAX_LIVER_ML = 4500.0
#: Fewest eroded voxels the fat fraction is read from before falling back to the whole mask.
MIN_ERODED_VOXELS = 20


@dataclass(frozen=True)
class LiverReadout:
    """What one segmented volume gives (volume in mL, fat fractions in %)."""

    liver_volume_ml: float
    liver_pdff_pct: float | None
    mean_ff_pct: float | None
    mask_voxels: int
    eroded_voxels: int
    status: str  # ok or flagged (message says why)
    message: str
    volume_status: str  # the mask's own notes only: a water-fat swap leaves the volume usable
    volume_message: str

    def as_dict(self) -> dict:
        return asdict(self)


def largest_component(mask: sitk.Image) -> sitk.Image:
    """The largest face-connected component of a binary mask (uint8; empty stays empty)."""
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask > 0, False), sortByObjectSize=True)
    return sitk.Cast(labels == 1, sitk.sitkUInt8)


def mask_from_probability(probability: sitk.Image, threshold: float = 0.5) -> sitk.Image:
    """Probability >= ``threshold``, largest component only (uint8, the probability's grid)."""
    return largest_component(sitk.Cast(probability >= threshold, sitk.sitkUInt8))


def erode_mm(mask: sitk.Image, margin_mm: float) -> sitk.Image:
    """Binary erosion by a ball of radius ``margin_mm`` (voxels per axis from the spacing;
    an axis whose spacing exceeds the margin is not eroded)."""
    radius = [int(margin_mm // s) for s in mask.GetSpacing()]
    if margin_mm <= 0 or not any(radius):
        return mask
    return sitk.BinaryErode(mask, radius, sitk.sitkBall, 0, 1)


def read_liver(
    mask: sitk.Image,
    fat_fraction: sitk.Image | None,
    *,
    erosion_mm: float = 5.0,
    min_volume_ml: float = MIN_LIVER_ML,
    max_volume_ml: float = MAX_LIVER_ML,
) -> LiverReadout:
    """Volume of ``mask`` and the fat fraction (%) inside it eroded by ``erosion_mm``."""
    array = sitk.GetArrayViewFromImage(mask) > 0
    voxels = int(array.sum())
    volume_ml = voxels * float(np.prod(mask.GetSpacing())) / 1000.0
    if voxels == 0:
        empty = "the predicted liver mask is empty"
        return LiverReadout(0.0, None, None, 0, 0, "flagged", empty, "flagged", empty)
    notes = []
    if volume_ml < min_volume_ml:
        notes.append(f"liver volume {volume_ml:.0f} mL < {min_volume_ml:g} mL: implausibly small")
    if volume_ml > max_volume_ml:
        notes.append(f"liver volume {volume_ml:.0f} mL > {max_volume_ml:g} mL: implausibly large")
    median = mean = None
    eroded_voxels = 0
    if fat_fraction is not None:
        eroded = sitk.GetArrayFromImage(erode_mm(mask, erosion_mm)) > 0  # a copy: temporary
        eroded_voxels = int(eroded.sum())
        inside = eroded
        if eroded_voxels < MIN_ERODED_VOXELS:
            inside = array
            notes.append(
                f"{eroded_voxels} voxels left after a {erosion_mm:g} mm erosion; fat fraction "
                "read over the whole mask"
            )
        values = sitk.GetArrayViewFromImage(fat_fraction)[inside]
        median, mean = float(np.median(values)), float(np.mean(values))
    volume_notes = list(notes)
    if median is not None and swap_suspicion(median):
        notes.append(swap_suspicion(median))
    return LiverReadout(
        volume_ml, median, mean, voxels, eroded_voxels, *_status(notes), *_status(volume_notes)
    )


def _status(notes: list[str]) -> tuple[str, str]:
    return ("flagged" if notes else "ok"), "; ".join(notes)
