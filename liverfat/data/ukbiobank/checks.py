"""Is a subject's scan complete? Station count and numbering, series, z-gaps, slice count.

A complete UK Biobank zip holds :data:`EXPECTED_STATIONS` stations of the four
:data:`SERIES_KINDS` (24 series). Stations are numbered from the head (1 = neck). When some are
missing, :func:`number_stations` works out which: a missing station between two others leaves a
z-gap, and UK Biobank's breath-hold pattern (:data:`UKB_BREATH_HOLD`, read from the series
descriptions) tells which end a missing end station was at. Each check returns one-line flags;
ingestion records them and marks the subject ``flagged`` (the images are still written, gaps
zero-filled).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from liverfat.data.ukbiobank.stations import SAME_STATION_MM, Series

#: Stations in a complete UK Biobank Dixon zip.
EXPECTED_STATIONS = 6
#: Series kinds every station must have.
SERIES_KINDS = ("water", "fat", "in_phase", "opposed_phase")
#: Fused volumes with fewer slices than this are flagged (public UK Biobank pipelines do).
MIN_FUSED_SLICES = 370
#: UK Biobank's stations from the head: breath-hold (``Dixon_BH_17s_*``) or not.
UKB_BREATH_HOLD = (False, True, True, True, False, False)
#: Neighbouring stations further apart than this (slice edge to slice edge, mm) leave a z-gap.
GAP_TOLERANCE_MM = 1.0

_BREATH_HOLD = re.compile(r"_bh(_|$)", re.IGNORECASE)


def is_breath_hold(description: str) -> bool:
    """Whether a Dixon series description names a breath-hold acquisition (``Dixon_BH_17s_W``)."""
    return bool(_BREATH_HOLD.search(description))


@dataclass(frozen=True)
class Numbering:
    """Station numbers from the head (one per found station, head first) and the missing ones.

    ``certain`` is False when the missing stations could not be told apart (then ``missing`` is
    the first of the equally good answers).
    """

    numbers: tuple[int, ...]
    missing: tuple[int, ...]
    certain: bool = True


def _edges_mm(series: Series) -> tuple[float, float]:
    """Lowest and highest slice edge (mm along z) of a series."""
    z = np.sort(series.positions_mm)
    half = (z[-1] - z[0]) / max(len(z) - 1, 1) / 2
    return float(z[0] - half), float(z[-1] + half)


def gaps_between(water: Sequence[Series]) -> list[bool]:
    """For stations ordered head first: whether a z-gap separates each from the next."""
    edges = [_edges_mm(s) for s in water]
    return [upper[0] - lower[1] > GAP_TOLERANCE_MM for upper, lower in itertools.pairwise(edges)]


def number_stations(
    breath_hold: Sequence[bool], gaps: Sequence[bool], expected: int = EXPECTED_STATIONS
) -> Numbering:
    """Number the found stations (head first) 1..``expected``, naming the missing ones.

    Every choice of missing stations is scored by how many observations it contradicts: a
    station whose breath-hold differs from :data:`UKB_BREATH_HOLD` (used when ``expected`` is
    6), a gap with no missing station behind it, or a missing station with no gap. The best
    choice wins; a tie leaves the answer uncertain.
    """
    found = len(breath_hold)
    if found >= expected:
        return Numbering(tuple(range(1, found + 1)), ())
    pattern = UKB_BREATH_HOLD if expected == len(UKB_BREATH_HOLD) else None
    scored = []
    for missing in itertools.combinations(range(1, expected + 1), expected - found):
        numbers = [n for n in range(1, expected + 1) if n not in missing]
        pairs = zip(itertools.pairwise(numbers), gaps, strict=True)
        cost = sum((b - a > 1) != gap for (a, b), gap in pairs)
        if pattern is not None:
            cost += sum(pattern[n - 1] != bh for n, bh in zip(numbers, breath_hold, strict=True))
        scored.append((cost, tuple(numbers), missing))
    scored.sort()
    best = scored[0]
    certain = len(scored) == 1 or scored[1][0] > best[0]
    return Numbering(best[1], best[2], certain)


def missing_station_flags(
    numbering: Numbering, expected: int = EXPECTED_STATIONS, *, named: Sequence[int] = ()
) -> list[str]:
    """One flag per missing station not already ``named`` by a gap flag (or one flag when the
    missing stations cannot be told apart, or when there are more stations than expected)."""
    if len(numbering.numbers) > expected:
        return [f"{len(numbering.numbers)} stations, more than the {expected} expected"]
    if not numbering.missing:
        return []
    if not numbering.certain:
        return [
            f"{len(numbering.numbers)} of {expected} stations found: {len(numbering.missing)} "
            "missing, which cannot be told (neither z-gaps nor the breath-hold pattern decide)"
        ]
    flags = []
    for n in numbering.missing:
        if n in named:
            continue
        where = "head end" if n == 1 else "knee end" if n == expected else "inside the scan"
        flags.append(f"station {n} of {expected} (from the head, {where}) missing")
    return flags


def missing_series_flags(
    stations: dict[str, list[Series]], numbers: Sequence[int], expected: int = EXPECTED_STATIONS
) -> tuple[int, list[str]]:
    """The number of series found at the water stations, and a flag per station lacking a kind.

    ``numbers`` are the water stations' numbers, head first.
    """
    water = sorted(stations["water"], key=lambda s: -s.centre_mm)
    n_series, flags = 0, []
    for number, station in zip(numbers, water, strict=True):
        lacking = []
        for kind in SERIES_KINDS:
            centres = [s.centre_mm for s in stations.get(kind, [])]
            if any(abs(c - station.centre_mm) < SAME_STATION_MM for c in centres):
                n_series += 1
            else:
                lacking.append(kind)
        if lacking:
            flags.append(f"station {number} of {expected}: no {' or '.join(lacking)} series")
    wanted = expected * len(SERIES_KINDS)
    if n_series < wanted:
        flags.insert(0, f"{n_series} of {wanted} series")
    return n_series, flags


def gap_flag(
    z_mm: tuple[float, float],
    n_slices: int,
    neighbours: tuple[int, int],
    missing: Sequence[int],
    expected: int = EXPECTED_STATIONS,
) -> str:
    """The flag of one run of uncovered, zero-filled output slices.

    ``z_mm`` is the run's first and last slice position (mm), ``neighbours`` the numbers of the
    stations above and below it, ``missing`` the missing stations between them.
    """
    slices = f"{n_slices} slice{'s' if n_slices != 1 else ''}"
    where = f"z-gap {z_mm[0]:.1f}-{z_mm[1]:.1f} mm ({slices}) zero-filled"
    if missing:
        names = " and ".join(str(n) for n in missing)
        plural = "s" if len(missing) > 1 else ""
        return f"station{plural} {names} of {expected} (from the head) missing: {where}"
    return f"{where} between stations {neighbours[0]} and {neighbours[1]}"


def slice_count_flag(n_slices: int, min_slices: int = MIN_FUSED_SLICES) -> list[str]:
    """A flag when the fused volume has fewer than ``min_slices`` slices (0 turns it off)."""
    if n_slices < min_slices:
        return [f"fused volume has {n_slices} slices, fewer than {min_slices}"]
    return []
