"""Repeat visits of the phantom: who gets a second scan, its id, its positioning and fat change.

With :attr:`~liverfat.data.phantom.imaging.PhantomConfig.repeat_fraction` above 0, a seeded
``round(fraction * n)`` of the participants (:func:`assign_repeats`) get a second imaging visit,
numbered as UK Biobank's instances: visit 2 is the first imaging visit (subject id ``P0007``),
visit 3 the repeat (``P0007_v3``). The repeat is the same body (the anatomy stream is replayed)
moved head-feet by a new table position (:func:`reposition`), with its own noise, coil field,
station motion, water-fat swap draw and reference measurement; its true liver fat is the first
visit's plus an optional true change (:func:`changed_pdff`).
"""

from __future__ import annotations

import functools

import numpy as np

from liverfat.data.phantom.grid import Grid

#: The visits, as UK Biobank instances: 2 the first imaging visit, 3 the repeat imaging visit.
FIRST_VISIT, REPEAT_VISIT = 2, 3
#: SD of the head-feet table position of a scan (mm), as the first visit's landmarks draw it.
POSITION_SD_MM = 15.0


def scan_id(index: int, visit: int = FIRST_VISIT) -> str:
    """The subject id of participant ``index``'s scan at ``visit``: ``P0007``, ``P0007_v3``."""
    participant = f"P{index + 1:04d}"
    return participant if visit == FIRST_VISIT else f"{participant}_v{visit}"


@functools.lru_cache(maxsize=8)
def assign_repeats(n: int, seed: int, fraction: float) -> tuple[int, ...]:
    """The sorted indices of the ``round(fraction * n)`` participants with a repeat visit.

    Drawn from the seed's own stream, apart from the splits', the PDFF bins' and each
    subject's, so adding repeats changes no first-visit scan.
    """
    k = int(round(fraction * n))
    if k == 0:
        return ()
    chosen = np.random.default_rng([seed, 2**31 - 3]).choice(n, size=k, replace=False)
    return tuple(sorted(int(i) for i in chosen))


def repeat_streams(seed: int, index: int, visit: int) -> tuple[np.random.Generator, ...]:
    """The scan (positioning, motion, swap, true change), noise and reference streams of a repeat
    visit: independent of the first visit's and of each other."""
    return tuple(
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, index, visit]).spawn(3)
    )


def reposition(
    grid: Grid, labels: np.ndarray, first_shift_mm: float, rng: np.random.Generator
) -> float:
    """Move the painted body head-feet to a new table position, in place; return the move (mm).

    The new position is drawn like the first visit's (``N(0, 15 mm)``) and the label map moved by
    the whole number of slices nearest the difference, so the anatomy is the same voxels; what
    leaves the field of view is lost, what enters is background.
    """
    new_shift_mm = float(rng.normal(0, POSITION_SD_MM))
    spacing_z = grid.spacing[2]
    slices = int(round((new_shift_mm - first_shift_mm) / spacing_z))
    if slices > 0:
        labels[slices:] = labels[:-slices].copy()
        labels[:slices] = 0
    elif slices < 0:
        labels[:slices] = labels[-slices:].copy()
        labels[slices:] = 0
    return slices * spacing_z


def changed_pdff(pdff_pct: float, change_sd_pp: float, rng: np.random.Generator) -> float:
    """The repeat visit's true liver PDFF (%): the first visit's plus ``N(0, change_sd_pp)``,
    kept within 0-100 % and rounded to 0.001 %. The draw is made even for an SD of 0, so the
    other draws of a repeat do not depend on the change."""
    change = change_sd_pp * float(rng.standard_normal())
    if change == 0.0:
        return pdff_pct
    return round(min(max(pdff_pct + change, 0.0), 100.0), 3)
