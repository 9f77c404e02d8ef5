"""Atlas engine benchmark on real data: leave-one-out multi-atlas segmentation of CHAOS MR.

For each of the 10 CHAOS T2-SPIR subjects in ``../shared/data/chaos_mr_t2spir``, 3 templates are
chosen (shape variance) from the other 9 and registered to it on the single T2-SPIR channel with
each backend (after centring the body masks); the warped liver masks are fused by intersection
and compared with the manual liver mask (Dice). Reported per backend: median / mean Dice of the
fused mask, median Dice of single registrations, median seconds per registration, the worker
processes the results ran with (a resumed log may mix runs) and, for torch, the largest fraction
of voxels where a deformation folds.

Also (``full_grid``): torch and elastix at the full neck-to-knee grid of the phantom, the
grid the "under 2 s per registration on a CUDA GPU" target refers to.

Environment: ``LIVERFAT_BENCH_ATLAS_BACKENDS`` (default ``torch,deform,elastix``),
``LIVERFAT_BENCH_ATLAS_TARGETS`` (how many subjects to leave out, default all 10),
``LIVERFAT_BENCH_ATLAS_WORKERS`` (worker processes, default 2), ``LIVERFAT_BENCH_ATLAS_LOG``
(a JSON-lines file of finished (backend, target) results: kept across runs, so an interrupted
benchmark resumes; results run with other settings are ignored; default a temporary file).

Each backend runs with its defaults (``ELASTIX_DEFAULTS``, ``DEFORM_DEFAULTS`` = the published
study's settings, ``TORCH_DEFAULTS`` in :mod:`liverfat.atlas.registration`) on a 2.5 x 2.5 x
7.7 mm working grid, one native thread per registration.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from liverfat.atlas import registration
from liverfat.atlas.fusion import fuse
from liverfat.atlas.images import AtlasImage, align_centres, load_subject
from liverfat.atlas.templates import select_templates
from liverfat.data.manifest import Manifest
from liverfat.data.phantom import generate_cohort
from liverfat.evaluation import segmentation
from liverfat.parallel import map_subjects

REPO = Path(__file__).resolve().parents[1]
CHAOS = (
    Path(os.environ.get("LIVERFAT_SHARED_DATA", REPO.parent / "shared" / "data"))
    / "chaos_mr_t2spir"
)
IDS = ("1", "2", "3", "5", "8", "10", "13", "15", "19", "20")
WORKING_SPACING_MM = (2.5, 2.5, 7.7)


def chaos() -> Manifest:
    """The shipped CHAOS card pointed at the shared data."""
    return Manifest.load(REPO / "data_manifests" / "chaos_mr_t2spir", data_root=CHAOS)


def load_chaos(subject_id: str, manifest: Manifest | None = None) -> AtlasImage:
    """CHAOS subject ``subject_id`` (``"1"``; ``chaos1`` on the card) with its liver mask."""
    return load_subject(manifest or chaos(), f"chaos{subject_id}", with_liver=True)


def dice(a: sitk.Image, b: sitk.Image) -> float:
    return segmentation.dice(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def chaos_templates(target: str, n: int = 3) -> dict[str, AtlasImage]:
    """The ``n`` templates (shape variance) among the CHAOS subjects other than ``target``."""
    manifest = chaos()
    others = {sid: load_chaos(sid, manifest) for sid in IDS if sid != target}
    chosen = select_templates(
        {s: a.liver for s, a in others.items()}, n, bodies={s: a.body for s, a in others.items()}
    )
    return {sid: others[sid] for sid in chosen}


def leave_one_out(job: tuple[str, str]) -> dict:
    """Register 3 templates to one CHAOS target with one backend; Dice and seconds."""
    backend, target = job
    fixed = load_chaos(target)
    settings = registration.BackendSettings(working_spacing_mm=WORKING_SPACING_MM)
    warped, seconds, single, folding = [], [], [], []
    for template in chaos_templates(target).values():
        result = registration.register(backend, fixed, align_centres(fixed, template), settings)
        warped.append(result.warped_mask)
        seconds.append(result.seconds)
        single.append(dice(result.warped_mask, fixed.liver))
        if "folding_fraction" in result.transform:
            folding.append(result.transform["folding_fraction"])
    fused = fuse(warped, "intersection")
    return {
        "backend": backend,
        "target": target,
        "settings": registration.backend_defaults(backend),
        "dice_fused": dice(fused, fixed.liver),
        "dice_majority": dice(fuse(warped, "majority"), fixed.liver),
        "dice_single": single,
        "seconds": seconds,
        "folding_fraction": folding,
    }


def _finished(log: Path, backends: list[str], targets: tuple[str, ...]) -> list[dict]:
    """Results already in ``log`` for these backends and targets, run with today's settings."""
    if not log.is_file():
        return []
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]
    return [
        r
        for r in rows
        if r["backend"] in backends
        and r["target"] in targets
        and r.get("settings") == registration.backend_defaults(r["backend"])
    ]


def run(work_dir: Path) -> dict:
    figures = chaos_leave_one_out(work_dir)
    full_grid_backends = os.environ.get("LIVERFAT_BENCH_ATLAS_FULL_GRID", "torch,elastix")
    if full_grid_backends:
        figures["full_grid"] = full_grid(work_dir, full_grid_backends.split(","))
    return figures


def full_grid_registration(job: tuple[str, str]) -> dict:
    """Register the second phantom subject to the first at the native full grid; fresh process."""
    import resource

    backend, card = job
    manifest = Manifest.load(card)
    fixed_id, moving_id = manifest.subject_ids[:2]
    fixed = load_subject(manifest, fixed_id, with_liver=True)
    moving = align_centres(fixed, load_subject(manifest, moving_id, with_liver=True))
    settings = registration.BackendSettings()
    first = registration.register(backend, fixed, moving, settings)
    result = registration.register(backend, fixed, moving, settings)  # warm: as in a batch
    return {
        "backend": backend,
        "seconds_first": round(first.seconds, 2),
        "seconds_warm": round(result.seconds, 2),
        "dice_single": round(dice(result.warped_mask, fixed.liver), 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "device": result.transform.get("device", "cpu"),
        "folding_fraction": result.transform.get("folding_fraction"),
    }


def full_grid(work_dir: Path, backends: list[str]) -> dict:
    """Registrations per backend at the full neck-to-knee grid (224 x 174 x 370 voxels of
    2.23 x 2.23 x 3 mm; two phantom subjects, seed 5), in a fresh single-thread process: seconds
    of the first and of a second (warm) registration, Dice of the warped mask, peak resident
    memory, device (CUDA when present).
    ``LIVERFAT_BENCH_ATLAS_FULL_GRID`` names the backends (default ``torch,elastix``; empty
    skips)."""
    card = generate_cohort(2, work_dir / "full_grid", seed=5, scale="full", progress=False)
    out: dict = {"grid": "224 x 174 x 370 @ 2.23 x 2.23 x 3 mm", "templates": 1}
    for backend in backends:
        (outcome,) = map_subjects(
            full_grid_registration, [(backend, str(card))], executor="processes", n_workers=1
        )
        out[backend] = outcome.value if outcome.ok else {"error": outcome.error}
    return out


def chaos_leave_one_out(work_dir: Path) -> dict:
    """The CHAOS leave-one-out figures per backend (see the module docstring)."""
    if not CHAOS.is_dir():
        return {"skipped": f"CHAOS data not found at {CHAOS}"}
    backends = os.environ.get("LIVERFAT_BENCH_ATLAS_BACKENDS", "torch,deform,elastix").split(",")
    targets = IDS[: int(os.environ.get("LIVERFAT_BENCH_ATLAS_TARGETS", len(IDS)))]
    workers = int(os.environ.get("LIVERFAT_BENCH_ATLAS_WORKERS", 2))
    log = Path(os.environ.get("LIVERFAT_BENCH_ATLAS_LOG", work_dir / "chaos_loo.jsonl"))
    rows = _finished(log, backends, targets)
    done = {(r["backend"], r["target"]) for r in rows}
    jobs = [(b, t) for b in backends for t in targets if (b, t) not in done]
    errors = []
    for outcome in map_subjects(
        leave_one_out, jobs, executor="processes", n_workers=workers, progress="atlas CHAOS LOO"
    ):
        if outcome.ok:
            outcome.value["workers"] = workers
            rows.append(outcome.value)
            with log.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(outcome.value) + "\n")
        else:
            errors.append(f"{outcome.item}: {outcome.error}")
    figures: dict = {
        "working_spacing_mm": WORKING_SPACING_MM,
        "targets": list(targets),
        "workers": workers,
        "errors": errors,
    }
    for backend in backends:
        mine = [r for r in rows if r["backend"] == backend]
        if not mine:
            continue
        fused = [r["dice_fused"] for r in mine]
        figures[backend] = {
            "n_targets": len(mine),
            "workers": sorted({r.get("workers") for r in mine}, key=str),
            "dice_fused_median": round(statistics.median(fused), 4),
            "dice_fused_mean": round(float(np.mean(fused)), 4),
            "dice_majority_median": round(statistics.median(r["dice_majority"] for r in mine), 4),
            "dice_single_median": round(
                statistics.median(d for r in mine for d in r["dice_single"]), 4
            ),
            "seconds_per_registration_median": round(
                statistics.median(s for r in mine for s in r["seconds"]), 2
            ),
            "folding_percent_max": (
                round(100 * max(f for r in mine for f in r.get("folding_fraction", [])), 4)
                if any(r.get("folding_fraction") for r in mine)
                else None
            ),
            "per_target_dice": {r["target"]: round(r["dice_fused"], 4) for r in mine},
        }
    if "torch" in figures and "elastix" in figures:
        figures["torch_speedup_vs_elastix"] = round(
            figures["elastix"]["seconds_per_registration_median"]
            / figures["torch"]["seconds_per_registration_median"],
            2,
        )
        figures["targets_note"] = "torch >= elastix Dice and >= 3x faster on the same CPU"
    return figures
