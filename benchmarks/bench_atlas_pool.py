"""Atlas template pool and label fusion on real data: CHAOS MR leave-one-out per setting.

For each of the 10 CHAOS T2-SPIR targets, every other subject (the pool of 9) is registered to it
once per backend; every setting is then read from the same registrations:

* ``paper``: the 3 templates chosen for shape variance (:func:`bench_atlas.chaos_templates`);
* ``shape-5``: 5 chosen the same way (more templates, no selection cost);
* ``similar-K``: the K of the pool most similar to the target after an affine stage
  (:func:`liverfat.atlas.selection.most_similar`);
* ``all``: the whole pool;

each fused by intersection, majority, STAPLE and the locally weighted vote. Per setting: fused
Dice (median, mean), the **purity** of the eroded readout mask (7-voxel ball, the engine's
default: the share of its voxels inside the manual liver), the templates' agreement (median pairwise
Dice), seconds per target (the selection's affine stages plus K registrations) and per
registration; ``selection_rho_median``: how well the affine similarity ranks the templates by
their later Dice. ``flag`` gives, for the agreement threshold of the engine
(:data:`~liverfat.atlas.reliability.AGREEMENT_FLAG_BELOW`), which targets it marks and their Dice.

Environment: ``LIVERFAT_BENCH_ATLAS_POOL_BACKENDS`` (default ``torch``),
``LIVERFAT_BENCH_ATLAS_TARGETS`` (how many targets, default all 10),
``LIVERFAT_BENCH_ATLAS_WORKERS`` (default 2), ``LIVERFAT_BENCH_ATLAS_POOL_LOG`` (JSON lines of
finished (backend, target) results, resumable; default a temporary file; use a new one when the
options change), ``LIVERFAT_BENCH_ATLAS_POOL_OPTIONS`` (JSON, backend -> options over its
defaults, e.g. ``{"torch": {"deformable_iterations": 30}}``).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_atlas import (
    CHAOS,
    IDS,
    WORKING_SPACING_MM,
    chaos,
    chaos_templates,
    dice,
    load_chaos,
    run_resumable,
)
from liverfat.atlas import registration
from liverfat.atlas.fusion import FUSIONS, erode, fuse, median_pairwise_dice
from liverfat.atlas.images import align_centres
from liverfat.atlas.reliability import AGREEMENT_FLAG_BELOW, readout_truth
from liverfat.atlas.selection import affine_similarity

#: Template counts of the similarity settings.
SIMILAR_K = (3, 5)


def _settings(target: str, similarity: dict[str, float]) -> dict[str, list[str]]:
    """Setting name -> template ids for one target."""
    ranked = sorted(similarity, key=lambda s: (-similarity[s], s))
    settings = {"paper": list(chaos_templates(target))}
    settings["shape-5"] = list(chaos_templates(target, 5))
    settings.update({f"similar-{k}": ranked[:k] for k in SIMILAR_K})
    settings["all"] = ranked
    return settings


def _options() -> dict:
    """``$LIVERFAT_BENCH_ATLAS_POOL_OPTIONS``: backend -> options over its defaults."""
    return json.loads(os.environ.get("LIVERFAT_BENCH_ATLAS_POOL_OPTIONS", "{}"))


def pool_leave_one_out(job: tuple[str, str]) -> dict:
    """Register the 9 others to one CHAOS target with one backend; every setting's figures."""
    backend, target = job
    manifest = chaos()
    fixed = load_chaos(target, manifest)
    extra = _options().get(backend, {})
    options = registration.BackendSettings(working_spacing_mm=WORKING_SPACING_MM, extra=extra)
    warped, images, seconds, similarity, select_s = {}, {}, {}, {}, {}
    for sid in IDS:
        if sid == target:
            continue
        template = align_centres(fixed, load_chaos(sid, manifest))
        start = time.perf_counter()
        similarity[sid] = affine_similarity(fixed, template)
        select_s[sid] = time.perf_counter() - start
        result = registration.register(backend, fixed, template, options)
        warped[sid], seconds[sid] = result.warped_mask, result.seconds
        images[sid] = registration.warp_image(
            result.transform, template.channels[0], fixed.reference
        )
    rows = {}
    for name, ids in _settings(target, similarity).items():
        masks = [warped[s] for s in ids]
        for fusion in FUSIONS:
            fused = fuse(masks, fusion, target=fixed.reference, warped=[images[s] for s in ids])
            truth = readout_truth(erode(fused), fixed.liver, None)
            rows[f"{name}/{fusion}"] = {
                "dice": dice(fused, fixed.liver),
                "purity": truth["purity"],
                "agreement": median_pairwise_dice(masks),
                "seconds": sum(seconds[s] for s in ids)
                + (sum(select_s.values()) if name.startswith("similar") else 0.0),
                "registrations": len(ids),
            }
    return {
        "backend": backend,
        "target": target,
        "settings": registration.backend_defaults(backend),
        "options": extra,
        "similarity": similarity,
        "dice_single": {s: dice(m, fixed.liver) for s, m in warped.items()},
        "seconds_per_registration": seconds,
        "rows": rows,
    }


def summarise(results: list[dict]) -> dict:
    """Per setting/fusion: Dice median and mean, purity median and minimum, agreement median,
    seconds per target and per registration (medians); the flag's targets."""
    settings = sorted({k for r in results for k in r["rows"]})
    table = {}
    for key in settings:
        cells = [r["rows"][key] for r in results]
        purity = [c["purity"] for c in cells if c["purity"] is not None]
        table[key] = {
            "dice_median": round(statistics.median(c["dice"] for c in cells), 4),
            "dice_mean": round(float(np.mean([c["dice"] for c in cells])), 4),
            "purity_median": round(statistics.median(purity), 4) if purity else None,
            "purity_min": round(min(purity), 4) if purity else None,
            "empty_readouts": len(cells) - len(purity),
            "agreement_median": round(statistics.median(c["agreement"] for c in cells), 4),
            "seconds_per_target": round(statistics.median(c["seconds"] for c in cells), 2),
            "seconds_per_registration": round(
                statistics.median(c["seconds"] / c["registrations"] for c in cells), 2
            ),
        }
    return table


def selection_rho(results: list[dict]) -> float:
    """Median over targets of the Spearman correlation between the pool templates' affine
    similarity and their Dice after the deformable registration: how well the selection's score
    foresees which templates will register well."""
    from scipy.stats import spearmanr

    rhos = []
    for r in results:
        ids = sorted(r["similarity"])
        rho = spearmanr([r["similarity"][i] for i in ids], [r["dice_single"][i] for i in ids])[0]
        rhos.append(float(rho))
    return round(statistics.median(rhos), 3)


def flag_figures(results: list[dict], setting: str) -> dict:
    """Targets the agreement threshold marks under ``setting`` (e.g. ``paper/intersection``),
    with each target's agreement and Dice."""
    per_target = {
        r["target"]: (
            round(r["rows"][setting]["agreement"], 3),
            round(r["rows"][setting]["dice"], 3),
        )
        for r in results
    }
    flagged = sorted(t for t, (a, _) in per_target.items() if a < AGREEMENT_FLAG_BELOW)
    return {
        "threshold": AGREEMENT_FLAG_BELOW,
        "setting": setting,
        "agreement_dice": per_target,
        "flagged": flagged,
    }


def run(work_dir: Path) -> dict:
    if not CHAOS.is_dir():
        return {"skipped": f"CHAOS data not found at {CHAOS}"}
    backends = [
        b for b in os.environ.get("LIVERFAT_BENCH_ATLAS_POOL_BACKENDS", "torch").split(",") if b
    ]
    targets = IDS[: int(os.environ.get("LIVERFAT_BENCH_ATLAS_TARGETS", len(IDS)))]
    workers = int(os.environ.get("LIVERFAT_BENCH_ATLAS_WORKERS", 2))
    log = Path(os.environ.get("LIVERFAT_BENCH_ATLAS_POOL_LOG", work_dir / "chaos_pool.jsonl"))
    results, errors = run_resumable(
        pool_leave_one_out,
        backends,
        targets,
        log,
        workers=workers,
        progress="CHAOS pool",
        options=_options(),
    )
    figures: dict = {"targets": list(targets), "workers": workers, "errors": errors}
    for backend in backends:
        mine = [r for r in results if r["backend"] == backend]
        if mine:
            figures[backend] = {
                "settings": summarise(mine),
                "selection_rho_median": selection_rho(mine),
                "flag": {
                    s: flag_figures(mine, s) for s in ("paper/intersection", "similar-5/weighted")
                },
            }
    return figures
