"""Geometry checks: images that describe one scan must share their voxel grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from liverfat.errors import GeometryError

#: Tolerances: spacing and direction relative/absolute, origin in mm.
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-2
DIRECTION_ATOL = 1e-4


def geometry_of(image: sitk.Image | sitk.ImageFileReader) -> dict[str, tuple]:
    """Size, spacing (mm), origin (mm) and direction of an image or a header-only reader."""
    return {
        "size": tuple(int(s) for s in image.GetSize()),
        "spacing": tuple(image.GetSpacing()),
        "origin": tuple(image.GetOrigin()),
        "direction": tuple(image.GetDirection()),
    }


def geometry_mismatch(a: dict[str, tuple], b: dict[str, tuple]) -> str | None:
    """A short description of how two geometries differ, or None if they agree within tolerance."""
    if a["size"] != b["size"]:
        return f"size {a['size']} vs {b['size']}"
    if not np.allclose(a["spacing"], b["spacing"], rtol=SPACING_RTOL, atol=0):
        return f"spacing {_fmt(a['spacing'])} vs {_fmt(b['spacing'])} mm"
    if not np.allclose(a["origin"], b["origin"], rtol=0, atol=ORIGIN_ATOL_MM):
        return f"origin {_fmt(a['origin'])} vs {_fmt(b['origin'])} mm"
    if not np.allclose(a["direction"], b["direction"], rtol=0, atol=DIRECTION_ATOL):
        return f"direction {_fmt(a['direction'])} vs {_fmt(b['direction'])}"
    return None


def check_same_geometry(
    a: sitk.Image | sitk.ImageFileReader,
    b: sitk.Image | sitk.ImageFileReader,
    *,
    names: Sequence[str] = ("first image", "second image"),
) -> None:
    """Raise :class:`GeometryError` naming both images if their grids differ."""
    problem = geometry_mismatch(geometry_of(a), geometry_of(b))
    if problem:
        raise GeometryError(f"{names[0]} and {names[1]} differ in geometry: {problem}")


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
