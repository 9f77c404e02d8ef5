"""Atlas engine benchmark on real data: leave-one-out multi-atlas segmentation of CHAOS MR.

For each of the 10 CHAOS T2-SPIR subjects in ``../shared/data/chaos_mr_t2spir``, 3 templates are
chosen (shape variance) from the other 9 and registered to it on the single T2-SPIR channel with
each backend (after centring the body masks); the warped liver masks are fused by intersection
and compared with the manual liver mask (Dice). Reported per backend: median / mean Dice of the
fused mask and of the majority vote, their median HD95 and ASSD (mm), median Dice of single
registrations, median seconds per registration, the worker
processes the results ran with (a resumed log may mix runs) and, for torch and fireants, the
largest fraction of voxels where a deformation folds (figures in docs/atlas.md).

Also (``full_grid``): torch and elastix (or the backends named) at the phantom's full
neck-to-knee grid, the grid the "under 2 s per registration on a CUDA GPU" target refers to.
The target is the torch backend's optimiser (``optimise_s_median``:
:func:`~liverfat.atlas.torch_registration.optimise` alone, CUDA synchronised at both ends);
``seconds_warm_median`` is the whole registration, which adds single-threaded ITK work on the
14.4 M-voxel grid (resampling the moving images onto it, warping the mask through the
displacement field). :func:`cuda_figures` gives the optimiser's figures alone, on this
process's device, for a GPU check.

Environment: ``LIVERFAT_BENCH_ATLAS_BACKENDS`` (default ``torch,deform,elastix``; ``fireants``
as well where FireANTs is installed),
``LIVERFAT_BENCH_ATLAS_TARGETS`` (how many subjects to leave out, default all 10),
``LIVERFAT_BENCH_ATLAS_WORKERS`` (worker processes, default 2), ``LIVERFAT_BENCH_ATLAS_LOG``
(a JSON-lines file of finished (backend, target) results: kept across runs, so an interrupted
benchmark resumes; results run with other settings are ignored; default a temporary file),
``LIVERFAT_BENCH_ATLAS_REPEATS`` (timed repeats at the full grid, default 3; medians reported),
``LIVERFAT_BENCH_SKIP_CPU=1`` (leave out the CPU-only backends, elastix and deform: a GPU
machine with only torch, numpy, scipy, SimpleITK and MONAI runs the rest).

Each backend runs with its defaults (``ELASTIX_DEFAULTS``, ``DEFORM_DEFAULTS`` = the published
study's settings, ``TORCH_DEFAULTS`` in :mod:`liverfat.atlas.registration`) on a 2.5 x 2.5 x
7.7 mm working grid, one native thread per registration.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from benchmarks.common import skip_cpu
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
#: Backends that need packages a GPU-only machine lacks (itk-elastix, pydeform).
CPU_ONLY_BACKENDS = ("elastix", "deform")
FULL_GRID = "224 x 174 x 370 @ 2.23 x 2.23 x 3 mm"


def benchmarked_backends(names: str) -> list[str]:
    """The backends named (comma-separated), less the CPU-only ones under
    ``LIVERFAT_BENCH_SKIP_CPU``."""
    backends = [b for b in names.split(",") if b]
    return [b for b in backends if b not in CPU_ONLY_BACKENDS] if skip_cpu() else backends


def _repeats() -> int:
    return max(1, int(os.environ.get("LIVERFAT_BENCH_ATLAS_REPEATS", 3)))


def chaos() -> Manifest:
    """The shipped CHAOS card pointed at the shared data."""
    return Manifest.load(REPO / "data_manifests" / "chaos_mr_t2spir", data_root=CHAOS)


def load_chaos(subject_id: str, manifest: Manifest | None = None) -> AtlasImage:
    """CHAOS subject ``subject_id`` (``"1"``; ``chaos1`` on the card) with its liver mask."""
    return load_subject(manifest or chaos(), f"chaos{subject_id}", with_liver=True)


def dice(a: sitk.Image, b: sitk.Image) -> float:
    return segmentation.dice(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def mask_figures(mask: sitk.Image, reference: sitk.Image) -> dict:
    """Dice, HD95 and ASSD (mm) of ``mask`` against ``reference`` on the reference's grid."""
    figures = segmentation.segmentation_metrics(
        sitk.GetArrayFromImage(reference),
        sitk.GetArrayFromImage(mask),
        spacing=reference.GetSpacing()[::-1],
    )
    return {key: figures[key] for key in ("dice", "hd95_mm", "assd_mm")}


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
    fused = mask_figures(fuse(warped, "intersection"), fixed.liver)
    majority = mask_figures(fuse(warped, "majority"), fixed.liver)
    return {
        "backend": backend,
        "target": target,
        "settings": registration.backend_defaults(backend),
        "dice_fused": fused.pop("dice"),
        "dice_majority": majority.pop("dice"),
        "surface_fused": fused,
        "surface_majority": majority,
        "dice_single": single,
        "seconds": seconds,
        "folding_fraction": folding,
    }


def finished_rows(
    log: Path, backends: list[str], targets: tuple[str, ...], options: dict | None = None
) -> list[dict]:
    """Results already in ``log`` for these backends and targets, run with today's settings
    (each backend's defaults and its ``options`` over them)."""
    if not log.is_file():
        return []
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]
    return [
        r
        for r in rows
        if r["backend"] in backends
        and r["target"] in targets
        and r.get("settings") == registration.backend_defaults(r["backend"])
        and r.get("options", {}) == (options or {}).get(r["backend"], {})
    ]


def run_resumable(
    job: Callable[[tuple[str, str]], dict],
    backends: list[str],
    targets: tuple[str, ...],
    log: Path,
    *,
    workers: int,
    progress: str,
    options: dict | None = None,
) -> tuple[list[dict], list[str]]:
    """``job((backend, target))`` for every pair not finished in ``log`` (one JSON line each,
    appended as they finish, so an interrupted benchmark resumes), in worker processes (capped
    on a shared GPU when every backend runs in torch); all rows and the errors."""
    rows = finished_rows(log, backends, targets, options)
    done = {(r["backend"], r["target"]) for r in rows}
    jobs = [(b, t) for b in backends for t in targets if (b, t) not in done]
    errors = []
    only_torch = set(backends) <= set(registration.TORCH_BACKENDS)
    for outcome in map_subjects(
        job,
        jobs,
        executor="processes",
        n_workers=workers,
        progress=progress,
        device=registration.torch_device({}) if only_torch and jobs else None,
    ):
        if outcome.ok:
            outcome.value["workers"] = workers
            rows.append(outcome.value)
            with log.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(outcome.value) + "\n")
        else:
            errors.append(f"{outcome.item}: {outcome.error}")
    return rows, errors


def run(work_dir: Path) -> dict:
    figures = chaos_leave_one_out(work_dir)
    full_grid_backends = os.environ.get("LIVERFAT_BENCH_ATLAS_FULL_GRID", "torch,elastix")
    backends = benchmarked_backends(full_grid_backends)
    if backends:
        figures["full_grid"] = full_grid(work_dir, backends)
    if skip_cpu():
        figures["skipped_cpu_only"] = list(CPU_ONLY_BACKENDS)
    return figures


def phantom_pair(card: str | Path) -> tuple[AtlasImage, AtlasImage]:
    """The first phantom subject of ``card`` (fixed) and the second centred on it (moving),
    both with liver masks."""
    manifest = Manifest.load(card)
    fixed_id, moving_id = manifest.subject_ids[:2]
    fixed = load_subject(manifest, fixed_id, with_liver=True)
    return fixed, align_centres(fixed, load_subject(manifest, moving_id, with_liver=True))


def _synchronise(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def optimise_figures(
    fixed: AtlasImage, moving: AtlasImage, repeats: int, n_threads: int = 1
) -> dict:
    """The torch backend's optimiser alone on these (native-grid) images, with the backend's
    defaults on its default device and ``n_threads`` torch threads (as
    :class:`~liverfat.atlas.registration.BackendSettings` gives it): seconds of a first and of
    ``repeats`` more calls (CUDA synchronised before and after each), peak GPU memory of those
    calls (MiB; None off CUDA), the fraction of voxels where the map folds.

    The inputs are prepared once, outside the timing (as the backend does before optimising).
    """
    import torch

    from liverfat.atlas.torch_registration import folding_fraction, optimise
    from liverfat.nn.device import torch_threads

    options = registration.backend_defaults("torch")
    device = torch.device(registration.torch_device(options))
    inputs = registration.torch_inputs(fixed, moving, moving.liver)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    with torch_threads(n_threads):
        for _ in range(repeats + 1):  # the first call also pays for kernels' and allocator warm-up
            _synchronise(device)
            start = time.perf_counter()
            points, _theta, box = optimise(options=options, device=str(device), **inputs)
            _synchronise(device)
            seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "device": str(device),
        "grid_zyx": list(inputs["fixed"].shape[1:]),
        "optimise_s_first": round(seconds[0], 3),
        "optimise_s_median": round(statistics.median(seconds[1:]), 3),
        "optimise_s": [round(t, 3) for t in seconds[1:]],
        "peak_gpu_mib": None if peak is None else round(peak),
        "folding_fraction": folding_fraction(points, box),
    }


def cuda_figures(work: Path, *, scale: str = "full", repeats: int = 3) -> dict:
    """The torch backend's optimiser on this process's device (CUDA when present), at the
    ``scale`` phantom grid (``full``: the neck-to-knee grid of the 2 s target; ``quarter`` for a
    quick check on a CPU): see :func:`optimise_figures`. Needs only torch, numpy, scipy,
    SimpleITK and MONAI; under a minute on a GPU (phantom generation included) at the full grid.
    """
    card = generate_cohort(
        2, Path(work) / f"cuda_{scale}", seed=5, scale=scale, executor="serial", progress=False
    )
    fixed, moving = phantom_pair(card)
    return {
        "scale": scale,
        **optimise_figures(fixed, moving, repeats),
        "batch": batch_figures(fixed, moving),
        "fireants": fireants_figures(fixed, moving),
    }


def fireants_figures(fixed: AtlasImage, moving: AtlasImage) -> dict:
    """One fireants registration end to end (first, then warm) on the default device; skipped
    with the reason where FireANTs is not installed (``make gpu-wheels`` carries it)."""
    from liverfat.errors import LiverfatError

    settings = registration.BackendSettings()
    try:
        first = registration.register("fireants", fixed, moving, settings)
    except LiverfatError as error:
        return {"skipped": str(error)}
    warm = registration.register("fireants", fixed, moving, settings)
    return {
        "device": warm.transform.get("device"),
        "seconds_first": round(first.seconds, 2),
        "seconds_warm": round(warm.seconds, 2),
        "dice_single": round(dice(warm.warped_mask, fixed.liver), 4),
        "folding_fraction": warm.transform.get("folding_fraction"),
    }


def batch_figures(fixed: AtlasImage, moving: AtlasImage, n: int = 3) -> dict:
    """The optimiser on ``n`` templates in one batched call
    (:func:`~liverfat.atlas.torch_registration.optimise_batch`; here ``n`` copies of one),
    on the default device: seconds of the call after a warm-up one, and per template, to set
    against ``optimise_s_median`` of one template alone."""
    import torch

    from liverfat.atlas.torch_registration import optimise_batch

    options = registration.backend_defaults("torch")
    device = torch.device(registration.torch_device(options))
    inputs = registration.torch_inputs(fixed, moving, moving.liver)
    stacked = np.stack([inputs["moving"]] * n)
    rois = np.stack([inputs["moving_roi"]] * n)
    seconds = []
    for _ in range(2):
        _synchronise(device)
        start = time.perf_counter()
        optimise_batch(inputs["fixed"], stacked, options, str(device), inputs["spacing_zyx"], rois)
        _synchronise(device)
        seconds.append(time.perf_counter() - start)
    return {
        "templates": n,
        "optimise_batch_s": round(seconds[-1], 3),
        "per_template_s": round(seconds[-1] / n, 3),
    }


def full_grid_registration(job: tuple[str, str, int]) -> dict:
    """Register the second phantom subject to the first at the native full grid; fresh process.

    End to end (:func:`registration.register`): a first and ``repeats`` warm registrations (as
    in a batch); for torch also the optimiser alone (:func:`optimise_figures`).
    """
    import resource

    backend, card, repeats = job
    fixed, moving = phantom_pair(card)
    settings = registration.BackendSettings()
    first = registration.register(backend, fixed, moving, settings)
    warm = [registration.register(backend, fixed, moving, settings) for _ in range(repeats)]
    out: dict = {
        "backend": backend,
        "seconds_first": round(first.seconds, 2),
        "seconds_warm_median": round(statistics.median(r.seconds for r in warm), 2),
        "seconds_warm": [round(r.seconds, 2) for r in warm],
        "dice_single": round(dice(warm[-1].warped_mask, fixed.liver), 4),
        "device": warm[-1].transform.get("device", "cpu"),
        "folding_fraction": warm[-1].transform.get("folding_fraction"),
    }
    if backend == "torch":
        optimiser = optimise_figures(fixed, moving, repeats)
        out.update({k: optimiser[k] for k in ("optimise_s_median", "optimise_s", "peak_gpu_mib")})
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def full_grid(work_dir: Path, backends: list[str]) -> dict:
    """Registrations per backend at the full neck-to-knee grid (224 x 174 x 370 voxels of
    2.23 x 2.23 x 3 mm; two phantom subjects, seed 5), in a fresh single-thread process: end-to-end
    seconds of the first and the median of ``LIVERFAT_BENCH_ATLAS_REPEATS`` warm registrations,
    for torch the optimiser's median seconds alone and its peak GPU memory, Dice of the warped
    mask, peak resident memory, device (CUDA when present).
    ``LIVERFAT_BENCH_ATLAS_FULL_GRID`` names the backends (default ``torch,elastix``; empty
    skips)."""
    card = generate_cohort(2, work_dir / "full_grid", seed=5, scale="full", progress=False)
    out: dict = {"grid": FULL_GRID, "templates": 1, "repeats": _repeats()}
    for backend in backends:
        device = registration.torch_device({}) if backend in registration.TORCH_BACKENDS else None
        (outcome,) = map_subjects(
            full_grid_registration,
            [(backend, str(card), _repeats())],
            executor="processes",
            n_workers=1,
            device=device,
        )
        out[backend] = outcome.value if outcome.ok else {"error": outcome.error}
    return out


def surface_medians(rows: list[dict]) -> dict:
    """Median HD95 and ASSD (mm) of the intersection and the majority over the targets (rows
    logged before these figures existed are left out)."""
    figures = {}
    for fusion in ("fused", "majority"):
        for metric in ("hd95_mm", "assd_mm"):
            values = [r[f"surface_{fusion}"][metric] for r in rows if f"surface_{fusion}" in r]
            if values:
                figures[f"{metric.removesuffix('_mm')}_{fusion}_median_mm"] = round(
                    float(np.nanmedian(values)), 2
                )
    return figures


def chaos_leave_one_out(work_dir: Path) -> dict:
    """The CHAOS leave-one-out figures per backend (see the module docstring)."""
    if not CHAOS.is_dir():
        return {"skipped": f"CHAOS data not found at {CHAOS}"}
    backends = benchmarked_backends(
        os.environ.get("LIVERFAT_BENCH_ATLAS_BACKENDS", "torch,deform,elastix")
    )
    if not backends:
        return {"skipped": "no backend left to run"}
    targets = IDS[: int(os.environ.get("LIVERFAT_BENCH_ATLAS_TARGETS", len(IDS)))]
    workers = int(os.environ.get("LIVERFAT_BENCH_ATLAS_WORKERS", 2))
    log = Path(os.environ.get("LIVERFAT_BENCH_ATLAS_LOG", work_dir / "chaos_loo.jsonl"))
    rows, errors = run_resumable(
        leave_one_out, backends, targets, log, workers=workers, progress="atlas CHAOS LOO"
    )
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
            "dice_majority_mean": round(float(np.mean([r["dice_majority"] for r in mine])), 4),
            **surface_medians(mine),
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
