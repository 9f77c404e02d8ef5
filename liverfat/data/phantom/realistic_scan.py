"""One realistic scan's steps, in the order :func:`~liverfat.data.phantom.cohort.build_subject`
calls them: extra anatomy, the artefact draw and unusual positioning (on the label map), the
station-border deformation, the liver's fat pattern, the arm and artefact corruption of the
signal, the ROI reference, and the truth record (:mod:`~liverfat.data.phantom.realism` says what
each item is).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from liverfat.data.phantom import artefacts
from liverfat.data.phantom.anatomy import Landmarks, LiverShape
from liverfat.data.phantom.grid import Grid
from liverfat.data.phantom.imaging import _station_slices
from liverfat.data.phantom.realism import (
    FatPattern,
    Realism,
    anatomy_stream,
    arm_artefacts,
    deform_seams,
    liver_fat_map,
    reference_stream,
    roi_reference,
    scan_stream,
)
from liverfat.data.phantom.realistic_anatomy import paint_arms, paint_gallbladder, paint_stomach

if TYPE_CHECKING:
    from liverfat.data.phantom.cohort import Subject

# One stream per item (realism.anatomy_stream / scan_stream), numbered once and for all.
_GALLBLADDER, _STOMACH, _FAT = 1, 2, 3
_ARTEFACT, _SEAMS, _ARMS, _ARTEFACT_DETAIL = 1, 2, 3, 4


@dataclass
class RealisticScan:
    """The realism of one scan of participant ``index`` at ``visit``, and what it drew."""

    realism: Realism
    seed: int
    index: int
    visit: int
    artefact: str = "none"
    detail: dict[str, Any] = field(default_factory=dict)
    pattern: FatPattern | None = None
    log_mean: float = 0.0
    liver_sd_pp: float = 0.0
    seams_mm: list = field(default_factory=list)
    arm_swaps: list = field(default_factory=list)
    roi_mean_pct: float = float("nan")
    roi_slice_z_mm: float = float("nan")

    @classmethod
    def start(cls, seed: int, index: int, visit: int, realism: Realism | None):
        """The scan's realism, or None when the cohort has none; draws the artefact class."""
        if realism is None:
            return None
        scan = cls(realism, seed, index, visit)
        rates = dict(realism.artefact_rates)
        if rates:
            scan.artefact = artefacts.draw_artefact(rates, scan._scan(_ARTEFACT))
        return scan

    def _anatomy(self, item: int) -> np.random.Generator:
        return anatomy_stream(self.seed, self.index, item)

    def _scan(self, item: int) -> np.random.Generator:
        return scan_stream(self.seed, self.index, self.visit, item)

    def paint_anatomy(
        self, grid: Grid, subject: Subject, marks: Landmarks, labels: np.ndarray, liver: LiverShape
    ) -> None:
        """Gallbladder, stomach and arms (the same at every visit); the liver's fat pattern."""
        r = self.realism
        if r.gallbladder:
            paint_gallbladder(grid, labels, liver, self._anatomy(_GALLBLADDER))
        if r.stomach:
            paint_stomach(grid, subject, marks, labels, self._anatomy(_STOMACH))
        if r.arms:
            paint_arms(grid, subject, marks, labels)
        if r.fat_field_sd > 0 or r.fat_segment_sd > 0:
            self.pattern = FatPattern.draw(r, self._anatomy(_FAT))

    def before_motion(self, grid: Grid, labels: np.ndarray) -> None:
        """Unusual positioning, when that is the scan's artefact (label map, in place)."""
        if self.artefact == "positioning":
            self.detail = artefacts.apply_positioning(grid, labels, self._scan(_ARTEFACT_DETAIL))

    def deform(self, grid: Grid, labels: np.ndarray) -> None:
        """The station-border deformation (label map, in place)."""
        if self.realism.seam_deformation_mm > 0:
            stations = _station_slices(labels.shape[0])
            sd = self.realism.seam_deformation_mm
            self.seams_mm = deform_seams(grid, labels, stations, sd, self._scan(_SEAMS))

    def liver_fat(
        self,
        grid: Grid,
        labels: np.ndarray,
        liver: LiverShape,
        pdff_pct: float,
        moved_mm: float,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The liver parenchyma's local PDFF, or None when it is one value."""
        if self.pattern is None:
            return None
        flat, values, self.log_mean = liver_fat_map(
            grid, labels, liver, self.pattern, pdff_pct, shift_z_mm=moved_mm
        )
        self.liver_sd_pp = float(values.std()) if values.size else 0.0
        return flat, values

    def after_signal(
        self, grid: Grid, labels: np.ndarray, water: np.ndarray, fat: np.ndarray, noise_sd: float
    ) -> None:
        """Arm artefacts, then the scan's signal artefact (swap, metal or noise), in place."""
        if self.realism.arms and self.realism.arm_artefacts:
            swap = self.realism.arm_swap_fraction
            self.arm_swaps = arm_artefacts(grid, labels, water, fat, swap, self._scan(_ARMS))
        rng = self._scan(_ARTEFACT_DETAIL)
        if self.artefact == "swap":
            self.detail = artefacts.apply_swap_region(grid, labels, water, fat, rng)
        elif self.artefact == "metal":
            self.detail = artefacts.apply_metal(grid, labels, water, fat, rng, noise_sd)
        elif self.artefact == "noise":
            self.detail = artefacts.apply_severe_noise(water, fat, rng, noise_sd)

    def reference_base(self, liver: LiverShape, pdff_pct: float) -> float:
        """What the reference measures before its noise: the ROI mean, or the true PDFF."""
        if self.realism.reference_rois == 0:
            return pdff_pct
        rng = reference_stream(self.seed, self.index, self.visit)
        self.roi_mean_pct, self.roi_slice_z_mm = roi_reference(
            liver, self.pattern, pdff_pct, self.log_mean, self.realism, rng
        )
        return self.roi_mean_pct

    def swap_state(self, swap: bool, station: int) -> tuple[bool, int]:
        """``(water_fat_swap, swap_station)`` of the truth record, the artefact's swap included."""
        if self.artefact == "swap":
            return True, int(self.detail.get("station", -1))
        return swap, station

    def record(self) -> dict[str, Any]:
        """The truth record's realism columns."""
        return {
            "artefact": self.artefact,
            "artefact_detail": json.dumps(self.detail, sort_keys=True),
            "liver_pdff_sd_pp": round(self.liver_sd_pp, 4),
            "reference_roi_mean_pct": round(self.roi_mean_pct, 4),
            "reference_roi_slice_z_mm": round(self.roi_slice_z_mm, 2),
            "arm_swap": ",".join(self.arm_swaps),
            "seam_shift_mm": json.dumps(self.seams_mm),
        }
