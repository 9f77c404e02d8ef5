"""The phantom cohort: subject draws, splits, and writing images, manifest and truth (resumable).

Each subject is drawn from a seeded generator (:func:`draw_subject`), painted
(:mod:`~liverfat.data.phantom.anatomy`) and imaged (:mod:`~liverfat.data.phantom.imaging`) by
:func:`build_subject`; :func:`generate_cohort` writes every subject (skipping those already
written), the dataset card and subject table, and the truth table (``truth/truth.csv``), which
no engine reads. With :attr:`PhantomConfig.pdff_bins` set, liver fat is drawn in fixed bins with
exact counts (:func:`assign_pdff_bins` says which subject falls in which bin). With
:attr:`PhantomConfig.repeat_fraction` set, some participants also get a repeat scan (visit 3,
:mod:`~liverfat.data.phantom.visits`), a row of its own in the subject table, whose
``participant_id`` and ``visit`` columns then say which scans belong together.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from liverfat.data.atomic import write_json_atomic, write_text_atomic
from liverfat.data.io import array_to_image, write_volume
from liverfat.data.manifest import (
    COVARIATE_COLUMNS,
    covariate_entries,
    split_entries,
    target_entry,
    visit_entries,
    write_subject_table,
)
from liverfat.data.phantom.anatomy import (
    LIVER_LABELS,
    Landmarks,
    measure_volumes,
    paint_body,
    paint_liver,
    paint_organs,
)
from liverfat.data.phantom.grid import Grid
from liverfat.data.phantom.imaging import (
    PhantomConfig,
    apply_motion,
    apply_swap,
    simulate_reference,
    synthesise_signal,
)
from liverfat.data.phantom.realistic_scan import RealisticScan
from liverfat.data.phantom.visits import (
    FIRST_VISIT,
    assign_repeats,
    changed_pdff,
    repeat_streams,
    reposition,
    scan_id,
)
from liverfat.data.predictions import PredictionsTable, prediction_row, run_info
from liverfat.errors import LiverfatError
from liverfat.parallel import map_subjects

TARGETS = {
    "liver_pdff_pct": target_entry(
        "liver proton density fat fraction from the (simulated) dedicated liver MRI", "%", 100
    ),
    "liver_volume_ml": target_entry("liver volume from the liver label", "mL", 5000),
    "vat_volume_ml": target_entry("visceral adipose tissue volume from the labels", "mL", 20000),
    "asat_volume_ml": target_entry(
        "abdominal subcutaneous adipose tissue volume (diaphragm to pelvic floor)", "mL", 30000
    ),
}
#: Volume targets (mL), counted on the label map.
VOLUMES = ("liver_volume_ml", "vat_volume_ml", "asat_volume_ml")


# Subject parameters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """Covariates and latent anatomy parameters of one phantom subject."""

    subject_id: str
    sex: int  # 0 female, 1 male (UK Biobank field 31 coding)
    age: float
    height_cm: float
    weight_kg: float
    bmi: float
    pdff_pct: float
    vat_fraction: float  # fraction of the abdominal cavity that is fat
    sat_thickness_mm: float
    liver_volume_target_ml: float


def draw_subject(
    rng: np.random.Generator, subject_id: str, *, pdff_bin: tuple[float, float] | None = None
) -> Subject:
    """Covariates and liver fat, correlated through a shared metabolic latent variable.

    Liver fat rises with BMI and with visceral fat through ``z = 0.6 * metabolic + 0.8 * e_fat``
    (standard normal). With ``pdff_bin`` None it is log-normal, ``2 * exp(1.177 z)`` clipped at
    45 %: median 2 % and mean about 4 % (about 20 % of subjects above 5.5 %), as in UK Biobank.
    With ``pdff_bin = (low, high)`` (%) it is ``low + (high - low) * Phi(z)`` (``Phi`` the standard
    normal distribution function), uniform over the bin and kept inside ``[low, high)`` after
    rounding to 0.001 %. Every other quantity, and every draw from ``rng``, is the same either way.
    """
    metabolic, e_bmi, e_vat, e_fat, e_sat, e_liver = rng.standard_normal(6)
    sex = int(rng.random() < 0.5)
    age = float(rng.uniform(45, 82))
    height = float(rng.normal(176.0, 7.0) if sex else rng.normal(163.0, 6.5))
    bmi = float(np.clip(26.5 * math.exp(0.15 * (0.8 * metabolic + 0.6 * e_bmi)), 17, 50))
    weight = bmi * (height / 100) ** 2
    vat_logit = -0.7 + 0.7 * sex + 0.9 * (0.7 * metabolic + 0.7 * e_vat)
    z = 0.6 * metabolic + 0.8 * e_fat  # unit variance
    if pdff_bin is None:
        pdff = round(float(np.clip(2.0 * math.exp(1.177 * z), 0.0, 45.0)), 3)
    else:
        pdff = _in_bin(float(z), *pdff_bin)
    sat = (6.0 + 2.6 * (bmi - 18.0)) * (1.35 if sex == 0 else 1.0) * math.exp(0.15 * e_sat)
    liver_volume = float(
        np.clip(1600 * math.exp(0.15 * e_liver + 0.01 * (weight - 78)), 1000, 2500)
    )
    return Subject(
        subject_id=subject_id,
        sex=sex,
        age=round(age, 1),
        height_cm=round(height, 1),
        weight_kg=round(weight, 1),
        bmi=round(bmi, 2),
        pdff_pct=pdff,
        vat_fraction=float(1 / (1 + math.exp(-vat_logit))),
        sat_thickness_mm=float(np.clip(sat, 4, 70)),
        liver_volume_target_ml=liver_volume,
    )


def _in_bin(z: float, low: float, high: float) -> float:
    """``low + (high - low) * Phi(z)`` rounded to 0.001 %, kept inside ``[low, high)`` (%)."""
    value = round(low + (high - low) * 0.5 * math.erfc(-z / math.sqrt(2.0)), 3)
    if value >= high:  # only for z beyond about 4 in a bin tens of % wide
        value = math.nextafter(high, low)
    return max(value, low)


@functools.lru_cache(maxsize=8)
def assign_pdff_bins(seed: int, config: PhantomConfig) -> tuple[tuple[float, float], ...] | None:
    """The PDFF bin ``(low, high)`` (%) of each subject index, or None without ``pdff_bins``.

    A seeded permutation of the ``n`` subject indices (``n`` the sum of the bins' counts) is cut
    into consecutive runs, one per bin in increasing order, as long as the bins' counts: so every
    bin holds exactly its count, and the assignment depends only on the seed and the bins (not
    on the executor or the order workers finish in). Its stream is the seed's own, apart from
    those of the splits and of each subject, so bins and splits are independent.
    """
    if config.pdff_bins is None:
        return None
    n = sum(count for _, _, count in config.pdff_bins)
    order = np.random.default_rng([seed, 2**31 - 2]).permutation(n)
    bins: list[tuple[float, float]] = [(0.0, 0.0)] * n
    start = 0
    for low, high, count in config.pdff_bins:
        for index in order[start : start + count]:
            bins[int(index)] = (low, high)
        start += count
    return tuple(bins)


def _pdff_bin_of(index: int, seed: int, config: PhantomConfig) -> tuple[float, float] | None:
    bins = assign_pdff_bins(seed, config)
    if bins is None:
        return None
    if not 0 <= index < len(bins):
        raise LiverfatError(
            f"subject index {index} is outside the {len(bins)} subjects of the PDFF bins"
        )
    return bins[index]


def _check_bin_counts(n: int, config: PhantomConfig) -> None:
    if config.pdff_bins is not None:
        total = sum(count for _, _, count in config.pdff_bins)
        if total != n:
            raise LiverfatError(f"the PDFF bins' counts add up to {total}, not to --n {n}")


# One subject ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubjectJob:
    index: int
    seed: int
    scale: str
    out: str
    config: PhantomConfig
    split: str
    visit: int = FIRST_VISIT


def subject_id_for(index: int, visit: int = FIRST_VISIT) -> str:
    """The subject id of participant ``index``'s scan at ``visit`` (see :func:`scan_id`)."""
    return scan_id(index, visit)


def image_paths(subject_id: str) -> dict[str, str]:
    """Image paths of a subject relative to the cohort folder."""
    return {
        "water": f"images/{subject_id}_water.nii.gz",
        "fat": f"images/{subject_id}_fat.nii.gz",
        "liver_mask": f"images/{subject_id}_liver_mask.nii.gz",
        "labels": f"truth/labels/{subject_id}_labels.nii.gz",
    }


def generate_subject(job: SubjectJob) -> dict[str, Any]:
    """Generate and write one subject; return its truth record. Idempotent (skips if written)."""
    sid = subject_id_for(job.index, job.visit)
    out = Path(job.out)
    record_path = out / "truth" / "subjects" / f"{sid}.json"
    if record_path.is_file():
        return json.loads(record_path.read_text(encoding="utf-8"))
    arrays, record = build_subject(
        job.index, job.seed, job.scale, job.config, job.split, visit=job.visit
    )
    grid = Grid.at_scale(job.scale)
    paths = image_paths(sid)
    volumes = {
        "water": np.round(arrays["water"] * 10).clip(0, 65535).astype(np.uint16),
        "fat": np.round(arrays["fat"] * 10).clip(0, 65535).astype(np.uint16),
        "liver_mask": np.isin(arrays["labels"], LIVER_LABELS).astype(np.uint8),
        "labels": arrays["labels"],
    }
    for key, array in volumes.items():
        image = array_to_image(array, spacing=grid.spacing, origin=grid.origin)
        write_volume(image, out / paths[key])
    write_json_atomic(record_path, record)  # written last: its presence marks the subject done
    return record


def build_subject(
    index: int,
    seed: int,
    scale: str,
    config: PhantomConfig,
    split: str,
    *,
    visit: int = FIRST_VISIT,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays (water, fat signal x1; labels) and the truth record of subject ``index``'s scan.

    Deterministic per ``index``, ``seed``, ``scale``, ``config`` and ``visit``; with
    ``config.pdff_bins`` the subject's bin comes from :func:`assign_pdff_bins` (``index`` must be
    below the bins' total count). A repeat visit (``visit`` 3) replays the first visit's anatomy
    stream, so the body is the same, then moves it to a new table position and draws its own
    true-fat change, station motion, noise, coil field, swap and reference
    (:mod:`~liverfat.data.phantom.visits`). With ``config.repeat_fraction`` set, the record
    also holds ``participant_id``, ``visit``, ``reposition_mm`` and ``true_change_pp``.
    """
    # Independent streams, so anatomy, reference and swaps do not depend on the grid's noise draws.
    rng, rng_noise, rng_reference = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(3)
    )
    rng_scan = rng  # the first visit's positioning, motion and swap continue the anatomy stream
    if visit != FIRST_VISIT:
        rng_scan, rng_noise, rng_reference = repeat_streams(seed, index, visit)
    subject = draw_subject(rng, subject_id_for(index), pdff_bin=_pdff_bin_of(index, seed, config))
    grid = Grid.at_scale(scale)
    shift_mm = float(rng.normal(0, 15))
    marks = Landmarks.for_height(subject.height_cm, shift_mm=shift_mm)
    labels = np.zeros(grid.shape, np.uint8)
    body = paint_body(grid, subject, marks, labels, rng)
    paint_organs(grid, subject, marks, labels, body)
    liver = paint_liver(grid, subject, marks, labels, rng)
    real = RealisticScan.start(seed, index, visit, config.realism)
    if real is not None:
        real.paint_anatomy(grid, subject, marks, labels, liver)
    first_pdff, moved_mm = subject.pdff_pct, 0.0
    if visit != FIRST_VISIT:
        moved_mm = reposition(grid, labels, shift_mm, rng_scan)
        marks = Landmarks.for_height(subject.height_cm, shift_mm=shift_mm + moved_mm)
        pdff = changed_pdff(subject.pdff_pct, config.repeat_change_pp, rng_scan)
        subject = replace(subject, subject_id=subject_id_for(index, visit), pdff_pct=pdff)
    if real is not None:
        real.before_motion(grid, labels)
    motion = apply_motion(grid, labels, rng_scan, config.motion_sd_mm)
    liver_fat = None
    if real is not None:
        real.deform(grid, labels)
        liver_fat = real.liver_fat(grid, labels, liver, subject.pdff_pct, moved_mm)
    water, fat = synthesise_signal(grid, labels, subject, config, rng_noise, liver_fat=liver_fat)
    swap, swap_station = apply_swap(grid, labels, water, fat, rng_scan, config.swap_fraction)
    measured = subject.pdff_pct
    if real is not None:
        real.after_signal(grid, labels, water, fat, config.noise_sd)
        measured = real.reference_base(liver, subject.pdff_pct)
        swap, swap_station = real.swap_state(swap, swap_station)
    reference, outlier = simulate_reference(measured, config, rng_reference)
    volumes = measure_volumes(labels, grid, marks)
    visits = {}
    if config.repeat_fraction > 0:
        visits = {
            "participant_id": subject_id_for(index),
            "visit": visit,
            "reposition_mm": round(moved_mm, 4),
            "true_change_pp": round(subject.pdff_pct - first_pdff, 3),
        }
    record = {
        "subject_id": subject.subject_id,
        **visits,
        "split": split,
        "sex": subject.sex,
        "age": subject.age,
        "height": subject.height_cm,
        "weight": subject.weight_kg,
        "bmi": subject.bmi,
        "liver_pdff_pct": subject.pdff_pct,
        "liver_body_ff_expected_pct": round(float(config.body_ff(subject.pdff_pct)), 4),
        **volumes,
        "reference_pdff_pct": reference,
        "reference_outlier": int(outlier),
        "water_fat_swap": int(swap),
        "swap_station": swap_station,
        "motion_offsets_mm": motion,
        "diaphragm_z_mm": round(marks.diaphragm, 2),
        **(real.record() if real is not None else {}),
    }
    return {"water": water, "fat": fat, "labels": labels}, record


# The cohort ----------------------------------------------------------------------------------


def assign_splits(n: int, seed: int, config: PhantomConfig) -> list[str]:
    """Split A (reference), B (none) and C (a random subset of B), fixed by the seed."""
    rng = np.random.default_rng([seed, 2**31 - 1])
    order = rng.permutation(n)
    n_a = int(round(config.fraction_a * n))
    splits = np.array(["B"] * n, dtype=object)
    splits[order[:n_a]] = "A"
    rest = order[n_a:]
    n_c = int(round(config.fraction_c_of_b * rest.size))
    splits[rest[:n_c]] = "C"
    return splits.tolist()


def generate_cohort(
    n: int,
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    scale: str = "quarter",
    config: PhantomConfig | None = None,
    executor: str = "processes",
    n_workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate (or finish generating) a phantom cohort; return the dataset card path.

    Subjects already written are kept (the command resumes). Output for one seed, scale and
    configuration is byte-identical across runs. With ``config.pdff_bins`` the bins' counts must
    add up to ``n``. ``n`` counts participants: with ``config.repeat_fraction`` the cohort holds
    ``n + round(repeat_fraction * n)`` scans.
    """
    if n < 1:
        raise LiverfatError(f"--n must be at least 1, got {n}")
    Grid.at_scale(scale)  # validates the scale
    config = config or PhantomConfig()
    _check_bin_counts(n, config)
    out = Path(out)
    card_path = out / "manifest.yaml"
    _check_existing(card_path, n, seed, scale, config)
    splits = assign_splits(n, seed, config)
    jobs = [SubjectJob(i, seed, scale, str(out), config, splits[i]) for i in range(n)]
    repeats = assign_repeats(n, seed, config.repeat_fraction)
    jobs += [SubjectJob(i, seed, scale, str(out), config, splits[i], visit=3) for i in repeats]
    if executor == "processes" and (n_workers == 1 or len(jobs) == 1):
        executor = "serial"
    records: dict[int, dict] = {}
    errors = []
    for outcome in map_subjects(
        generate_subject,
        jobs,
        executor=executor,
        n_workers=n_workers,
        progress="phantom" if progress else None,
    ):
        if outcome.ok:
            records[outcome.index] = outcome.value
        else:
            job = jobs[outcome.index]
            errors.append(f"{subject_id_for(job.index, job.visit)}: {outcome.error}")
    if errors:
        raise LiverfatError(
            f"phantom generation failed for {len(errors)} subject(s): {'; '.join(errors[:3])}"
        )
    # Each participant's scans together, first visit first (with no repeats: the job order).
    order = sorted(range(len(jobs)), key=lambda j: (jobs[j].index, jobs[j].visit))
    ordered = [records[j] for j in order]
    _write_tables(out, ordered, seed, scale, config)
    return card_path


def _check_existing(card_path: Path, n: int, seed: int, scale: str, config: PhantomConfig) -> None:
    """Refuse to mix subjects of different settings in one folder.

    The settings are recorded with :meth:`PhantomConfig.as_record`, so a folder written before
    ``pdff_bins`` existed (no such key) still matches the default settings.
    """
    settings_path = card_path.parent / "truth" / "settings.json"
    settings = json.loads(json.dumps({"seed": seed, "scale": scale, "config": config.as_record()}))
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text(encoding="utf-8"))
        if previous != settings:
            before = previous.get("config") if isinstance(previous.get("config"), dict) else {}
            differ = sorted(
                {k for k in ("seed", "scale") if previous.get(k) != settings[k]}
                | {
                    k
                    for k in before.keys() | settings["config"].keys()
                    if before.get(k) != settings["config"].get(k)
                }
            )
            raise LiverfatError(
                f"{card_path.parent}: holds a phantom cohort with other settings "
                f"(seed {previous.get('seed')}, scale {previous.get('scale')}; differs in "
                f"{', '.join(differ) or 'layout'}); choose another --out"
            )
    else:
        write_json_atomic(settings_path, settings)


def _write_tables(
    out: Path, records: list[dict], seed: int, scale: str, config: PhantomConfig
) -> None:
    """The subject table, the truth tables and, last, the dataset card."""
    write_subject_table(_subject_table(records), out / "subjects.csv")
    _write_truth(out, records, seed, scale, config)
    write_text_atomic(
        out / "manifest.yaml", yaml.safe_dump(dataset_card(seed, scale, config), sort_keys=False)
    )


def _subject_table(records: list[dict]) -> pd.DataFrame:
    """One row per scan: image paths, split, covariates, and references in split A only; with
    repeat visits also ``participant_id`` and ``visit``."""
    rows = []
    for r in records:
        paths = image_paths(r["subject_id"])
        has_reference = r["split"] == "A"
        visits = {k: r[k] for k in ("participant_id", "visit") if k in r}
        rows.append(
            {
                "subject_id": r["subject_id"],
                **visits,
                "water": paths["water"],
                "fat": paths["fat"],
                "liver_mask": paths["liver_mask"],
                "split": r["split"],
                **{c: r[c] for c in COVARIATE_COLUMNS},
                "liver_pdff_pct": r["reference_pdff_pct"] if has_reference else np.nan,
                **{v: r[v] if has_reference else np.nan for v in VOLUMES},
            }
        )
    return pd.DataFrame(rows)


def _write_truth(
    out: Path, records: list[dict], seed: int, scale: str, config: PhantomConfig
) -> None:
    """``truth/truth.csv`` (every record) and the true targets as a predictions table."""
    truth = pd.DataFrame(records)
    truth["motion_offsets_mm"] = truth["motion_offsets_mm"].map(json.dumps)
    truth["labels"] = [image_paths(r["subject_id"])["labels"] for r in records]
    write_subject_table(truth, out / "truth" / "truth.csv")
    truth_rows = [
        prediction_row(r["subject_id"], "truth", target, r[target])
        for r in records
        for target in ("liver_pdff_pct", *VOLUMES)
    ]
    PredictionsTable.from_rows(
        truth_rows,
        run_info(
            "truth",
            configuration={"seed": seed, "scale": scale, **config.as_record()},
            seed=seed,
            timestamp=False,
        ),
    ).write(out / "truth" / "truth_predictions.csv")


def dataset_card(seed: int, scale: str, config: PhantomConfig) -> dict[str, Any]:
    """The dataset card of a phantom cohort (see ``data_manifests/phantom.yaml``)."""
    grid = Grid.at_scale(scale)
    return {
        "name": "liverfat-phantom",
        "description": (
            "Synthetic two-point Dixon neck-to-knee body MRI with known liver fat, made by "
            "`liverfat phantom`. Ground truth (true PDFF, label maps, swaps, reference outliers) "
            "is in truth/, which no engine reads."
        ),
        "source": f"liverfat phantom, seed {seed}, scale {scale}",
        "licence": "CC0-1.0",
        "subjects": "subjects.csv",
        "units": {
            "fat_fraction": "%",
            "signal": "arbitrary (x10 in the stored uint16)",
            "length": "mm",
            "volume": "mL",
        },
        "grid": {"size_xyz": list(grid.size), "spacing_mm": [round(s, 4) for s in grid.spacing]},
        "targets": TARGETS,
        "covariates": covariate_entries(
            {"sex": {"coding": "0 female, 1 male (UK Biobank field 31)"}}
        ),
        "splits": split_entries(
            "subjects with reference values (training and validation)",
            "subjects without reference values",
            "a random subset of B (the atlas-versus-network comparison set)",
        ),
        **(
            {
                "visits": visit_entries(
                    "same anatomy and liver fat (plus a true change of SD "
                    f"{config.repeat_change_pp:g} pp), new positioning, noise, coil field, "
                    "station motion, swap draw and reference measurement"
                )
            }
            if config.repeat_fraction > 0
            else {}
        ),
        "phantom": {"seed": seed, "scale": scale, **config.as_record()},
    }
