"""The atlas setting chosen without its scoring target: nested leave-one-out on CHAOS MR.

``bench_atlas_pool`` scores every (templates, fusion) setting on the 10 CHAOS T2-SPIR targets,
and its best cell is picked on those same targets: an optimistic figure. Here the choice is
made blind. For each target ``t``, every candidate setting is scored on the other nine alone,
each of them leave-one-out with templates drawn from the subjects other than ``t`` and itself
(so ``t``'s mask is neither scored nor used as a template while choosing); the setting with the
best median Dice among those whose readout purity (median) is at least ``PURITY_FLOOR`` is then
applied to ``t`` with templates from the other nine, as the pool benchmark does. The median over
``t`` is what a user who chose the setting on their own labelled scans could expect on a new
one. The in-sample best (the pool benchmark's way) is reported beside it.

Candidates: registration options (``LIVERFAT_BENCH_ATLAS_NESTED_OPTIONS``, a JSON list of
torch option dicts over ``TORCH_DEFAULTS``; default the diffusion weights 0.25 and 0.1)
x templates chosen for shape variance (``paper``: 3, ``shape-5``: 5, within twice the paper's
registrations) x the fusions that make the eroded readout (majority, weighted, jlf,
intersection). Every other subject is registered to each target once per option set (torch,
one thread, 2.5 x 2.5 x 7.7 mm); each fusion is read from those warps, cached in
``LIVERFAT_BENCH_ATLAS_NESTED_CACHE`` (default the benchmark's temporary folder; about 0.5 GB
per option set). ``LIVERFAT_BENCH_ATLAS_WORKERS`` (default 2) processes register.
"""

from __future__ import annotations

import json
import os
import statistics
from functools import cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from benchmarks.bench_atlas import CHAOS, IDS, WORKING_SPACING_MM, chaos, dice, load_chaos
from liverfat.atlas import registration
from liverfat.atlas.fusion import erode, fuse, median_pairwise_dice
from liverfat.atlas.images import align_centres
from liverfat.atlas.reliability import AGREEMENT_FLAG_BELOW, readout_truth
from liverfat.atlas.templates import select_templates
from liverfat.data.atomic import atomic_path, write_json_atomic
from liverfat.data.fingerprint import fingerprint
from liverfat.parallel import map_subjects

#: Template counts (shape variance) of the candidates: the paper's 3, and 5 (1.7 times its time).
TEMPLATE_COUNTS = {"paper": 3, "shape-5": 5}
FUSIONS = ("intersection", "majority", "weighted", "jlf")
#: The issue's purity target: a candidate below it on the inner targets is not chosen.
PURITY_FLOOR = 0.97
#: The diffusion weight of the torch defaults until stop 33, and since.
DEFAULT_OPTIONS = [{"diffusion_weight": 0.25}, {"diffusion_weight": 0.1}]


def _option_sets() -> list[dict]:
    raw = os.environ.get("LIVERFAT_BENCH_ATLAS_NESTED_OPTIONS")
    return json.loads(raw) if raw else DEFAULT_OPTIONS


def _key(options: dict) -> str:
    """Cache folder of an option set: its options over the torch defaults of this release."""
    return fingerprint({**registration.backend_defaults("torch"), **options}, length=10)


def _pair_file(cache_dir: Path, options: dict, target: str, template: str) -> Path:
    return cache_dir / _key(options) / f"t{target}_s{template}.npz"


def register_others(job: tuple[str, dict, str]) -> dict:
    """Register every other CHAOS subject to ``target``; save each warped mask and image."""
    cache_dir, options, target = Path(job[0]), job[1], job[2]
    manifest = chaos()
    fixed = load_chaos(target, manifest)
    settings = registration.BackendSettings(working_spacing_mm=WORKING_SPACING_MM, extra=options)
    seconds = {}
    for sid in IDS:
        path = _pair_file(cache_dir, options, target, sid)
        if sid == target or path.exists():
            continue
        template = align_centres(fixed, load_chaos(sid, manifest))
        result = registration.register("torch", fixed, template, settings)
        image = registration.warp_image(result.transform, template.channels[0], fixed.reference)
        with atomic_path(path) as partial:  # a killed run leaves no half-written pair
            np.savez(
                partial,
                mask=sitk.GetArrayFromImage(result.warped_mask) > 0,
                image=sitk.GetArrayFromImage(image).astype(np.float16),
            )
        seconds[sid] = result.seconds
    return {"target": target, "seconds": seconds}


class Warps:
    """The cached warps of one option set, and fused Dice and purity read from them."""

    def __init__(self, cache_dir: Path, options: dict):
        self.cache_dir, self.options = cache_dir, options
        # fusions read back from a file beside the warps: a rerun of the analysis costs little
        self._file = cache_dir / _key(options) / "scores.json"
        saved = json.loads(self._file.read_text()) if self._file.exists() else []
        self._scores = {(t, tuple(tpl), f): (d, p) for t, tpl, f, d, p, _ in saved}
        self.agreement = {(t, tuple(tpl)): a for t, tpl, _, _, _, a in saved}

    def _as_image(self, array: np.ndarray, target: str) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(_subject(target).reference)
        return image

    def score(self, target: str, templates: tuple[str, ...], fusion: str) -> tuple[float, float]:
        """(Dice of the fused mask, purity of its eroded readout; 0 when the readout is empty)
        of ``templates`` on ``target``."""
        key = (target, templates, fusion)
        if key not in self._scores:
            files = [_pair_file(self.cache_dir, self.options, target, s) for s in templates]
            pairs = [np.load(f) for f in files]
            masks = [self._as_image(p["mask"].astype(np.uint8), target) for p in pairs]
            images = [self._as_image(p["image"].astype(np.float32), target) for p in pairs]
            subject = _subject(target)
            fused = fuse(masks, fusion, target=subject.reference, warped=images)
            if (target, templates) not in self.agreement:
                self.agreement[(target, templates)] = median_pairwise_dice(masks)
            purity = readout_truth(erode(fused), subject.liver, None)["purity"]
            self._scores[key] = (dice(fused, subject.liver), 0.0 if purity is None else purity)
            self._save()
        return self._scores[key]

    def _save(self) -> None:
        rows = [[*k, *v, self.agreement[k[:2]]] for k, v in self._scores.items()]
        write_json_atomic(self._file, rows)


@cache
def _subject(sid: str):
    return load_chaos(sid)


@cache
def _shape_templates(pool: frozenset[str], n: int) -> tuple[str, ...]:
    livers = {sid: _subject(sid).liver for sid in pool}
    chosen = select_templates(livers, n, bodies={sid: _subject(sid).body for sid in pool})
    return tuple(sorted(chosen))


def candidates(n_option_sets: int) -> list[tuple[int, str, str]]:
    """(option set index, template setting, fusion) of every candidate."""
    return [
        (o, name, fusion)
        for o in range(n_option_sets)
        for name in TEMPLATE_COUNTS
        for fusion in FUSIONS
    ]


def _templates(candidate, target: str, excluded: frozenset[str] = frozenset()) -> tuple[str, ...]:
    pool = frozenset(IDS) - excluded - {target}
    return _shape_templates(pool, TEMPLATE_COUNTS[candidate[1]])


def loo_score(warps: list[Warps], candidate, target: str, excluded: frozenset[str]):
    """One candidate's (Dice, purity) on ``target``, templates from the subjects not excluded."""
    templates = _templates(candidate, target, excluded)
    return warps[candidate[0]].score(target, templates, candidate[2])


def choose(warps: list[Warps], pool_targets: list[str], excluded: frozenset[str]):
    """The candidate with the best median Dice on ``pool_targets`` (ties: the higher mean, then
    the fewer templates) among those with median purity at least ``PURITY_FLOOR`` there."""
    best, best_rank = None, None
    for candidate in candidates(len(warps)):
        scores = [loo_score(warps, candidate, u, excluded) for u in pool_targets]
        dices = [d for d, _ in scores]
        pure = statistics.median(p for _, p in scores) >= PURITY_FLOOR
        rank = (
            pure,
            statistics.median(dices),
            float(np.mean(dices)),
            -TEMPLATE_COUNTS[candidate[1]],
        )
        if best_rank is None or rank > best_rank:
            best, best_rank = candidate, rank
    return best


def _label(candidate, option_sets: list[dict]) -> str:
    option, name, fusion = candidate
    return f"{json.dumps(option_sets[option], sort_keys=True)} {name}/{fusion}"


def nested(warps: list[Warps], option_sets: list[dict]) -> dict:
    """Per target the candidate chosen on the other nine and its Dice and purity there; the
    in-sample best candidate (chosen and scored on all ten) beside it."""
    per_target = {}
    for t in IDS:
        chosen = choose(warps, [u for u in IDS if u != t], frozenset({t}))
        dice_t, purity_t = loo_score(warps, chosen, t, frozenset())
        per_target[t] = {
            "chosen": _label(chosen, option_sets),
            "dice": round(dice_t, 4),
            "purity": round(purity_t, 4),
        }
    in_sample = choose(warps, list(IDS), frozenset())
    in_scores = [loo_score(warps, in_sample, t, frozenset()) for t in IDS]
    table = {}
    for candidate in candidates(len(warps)):
        scores = [loo_score(warps, candidate, t, frozenset()) for t in IDS]
        agreement = {t: warps[candidate[0]].agreement[(t, _templates(candidate, t))] for t in IDS}
        flagged = sorted(t for t, a in agreement.items() if a < AGREEMENT_FLAG_BELOW)
        table[_label(candidate, option_sets)] = {
            "flagged": flagged,
            "agreement_min_unflagged": min(
                (round(a, 4) for a in agreement.values() if a >= AGREEMENT_FLAG_BELOW), default=None
            ),
            "dice_median": round(statistics.median(d for d, _ in scores), 4),
            "dice_mean": round(float(np.mean([d for d, _ in scores])), 4),
            "purity_median": round(statistics.median(p for _, p in scores), 4),
            "purity_min": round(min(p for _, p in scores), 4),
            "purity_min_unflagged": min(
                (round(p, 4) for t, (_, p) in zip(IDS, scores, strict=True) if t not in flagged),
                default=None,
            ),
        }
    return {
        "in_sample_table": table,
        "nested_dice_median": round(statistics.median(r["dice"] for r in per_target.values()), 4),
        "nested_dice_mean": round(float(np.mean([r["dice"] for r in per_target.values()])), 4),
        "nested_purity_median": round(
            statistics.median(r["purity"] for r in per_target.values()), 4
        ),
        "per_target": per_target,
        "in_sample_best": _label(in_sample, option_sets),
        "in_sample_dice_median": round(statistics.median(d for d, _ in in_scores), 4),
        "in_sample_purity_median": round(statistics.median(p for _, p in in_scores), 4),
    }


def run(work_dir: Path) -> dict:
    if not CHAOS.is_dir():
        return {"skipped": f"CHAOS data not found at {CHAOS}"}
    cache_dir = Path(os.environ.get("LIVERFAT_BENCH_ATLAS_NESTED_CACHE", work_dir / "warps"))
    option_sets = _option_sets()
    jobs = [(str(cache_dir), options, t) for options in option_sets for t in IDS]
    errors, seconds = [], []
    for outcome in map_subjects(
        register_others,
        jobs,
        executor="processes",
        n_workers=int(os.environ.get("LIVERFAT_BENCH_ATLAS_WORKERS", 2)),
        progress="CHAOS nested",
        device=registration.torch_device({}),
    ):
        if outcome.ok:
            seconds.extend(outcome.value["seconds"].values())
        else:
            errors.append(f"{outcome.item[2]}: {outcome.error}")
    if errors:
        return {"errors": errors}
    figures = nested([Warps(cache_dir, o) for o in option_sets], option_sets)
    figures["option_sets"] = option_sets
    figures["candidates"] = len(candidates(len(option_sets)))
    figures["purity_floor"] = PURITY_FLOOR
    if seconds:
        figures["seconds_per_registration_median"] = round(statistics.median(seconds), 2)
    return figures
