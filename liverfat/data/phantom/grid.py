"""Where the phantom lives: the UK Biobank body-MRI voxel grid in mm, and smooth random fields.

Full scale is 224 left-right x 174 anterior-posterior x 370 head-feet voxels of
2.23 x 2.23 x 3 mm; ``half`` and ``quarter`` halve and quarter the voxel counts over the same
field of view. Array order is (z, y, x) with an identity direction: +x is the patient's left, +y
posterior and +z superior (LPS), and z = 0 is the knee end of the scan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from liverfat.errors import LiverfatError

#: Voxel counts (x, y, z) and spacing (mm) of the UK Biobank neck-to-knee Dixon grid.
FULL_SIZE = (224, 174, 370)
FULL_SPACING_MM = (2.23, 2.23, 3.0)
SCALES = {"full": 1, "half": 2, "quarter": 4}


@dataclass(frozen=True)
class Grid:
    """A voxel grid: size (x, y, z), spacing (mm), origin (mm) and 1-D voxel-centre coordinates."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    z: np.ndarray = field(repr=False)

    @classmethod
    def at_scale(cls, scale: str) -> Grid:
        if scale not in SCALES:
            raise LiverfatError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
        factor = SCALES[scale]
        size = tuple(int(round(n / factor)) for n in FULL_SIZE)
        extent = [n * s for n, s in zip(FULL_SIZE, FULL_SPACING_MM, strict=True)]
        spacing = tuple(e / n for e, n in zip(extent, size, strict=True))
        # x, y centred on the body axis; z from the knee end (0 mm) upwards.
        x = (np.arange(size[0]) - (size[0] - 1) / 2) * spacing[0]
        y = (np.arange(size[1]) - (size[1] - 1) / 2) * spacing[1]
        z = (np.arange(size[2]) + 0.5) * spacing[2]
        return cls(size, spacing, x.astype(np.float32), y.astype(np.float32), z.astype(np.float32))

    @property
    def origin(self) -> tuple[float, float, float]:
        return (float(self.x[0]), float(self.y[0]), float(self.z[0]))

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return (self.size[2], self.size[1], self.size[0])

    def index_range(self, axis: str, low_mm: float, high_mm: float) -> slice:
        """Voxel slice along ``axis`` covering ``[low_mm, high_mm]`` (clipped to the grid)."""
        coords = getattr(self, axis)
        lo = int(np.searchsorted(coords, low_mm, side="left"))
        hi = int(np.searchsorted(coords, high_mm, side="right"))
        return slice(max(lo, 0), min(hi, coords.size))

    def box(self, centre: np.ndarray, half_mm: np.ndarray) -> tuple[slice, slice, slice]:
        """(z, y, x) slices of the box ``centre +- half_mm`` (mm, in x, y, z order)."""
        return (
            self.index_range("z", centre[2] - half_mm[2], centre[2] + half_mm[2]),
            self.index_range("y", centre[1] - half_mm[1], centre[1] + half_mm[1]),
            self.index_range("x", centre[0] - half_mm[0], centre[0] + half_mm[0]),
        )

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) coordinate arrays (mm) of a box."""
        return (
            self.z[box[0]][:, None, None],
            self.y[box[1]][None, :, None],
            self.x[box[2]][None, None, :],
        )


class Waves:
    """A smooth random field in mm coordinates: a sum of plane waves with random directions."""

    def __init__(self, rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float]):
        directions = rng.standard_normal((n, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(*wavelength_mm, size=n)
        self.k = (2 * np.pi * directions / wavelengths[:, None]).astype(np.float32)  # (n, xyz)
        self.phase = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)
        self.norm = np.float32(math.sqrt(2.0 / n))  # unit standard deviation

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        total = None
        for (kx, ky, kz), phase in zip(self.k, self.phase, strict=True):
            term = np.sin(kx * x + ky * y + kz * z + phase)
            total = term if total is None else total + term
        return total * self.norm
