"""The demo study: the three-way comparison on the built-in phantom cohort, with the radiomics,
the U-Net segmentation and the covariate baseline beside it.

``quick`` is sized so the whole study (phantom, network cross-validation and final fit, atlas
registration of A and C, radiomics and U-Net cross-validation, comparison and report) finishes
in under 15 minutes on a 2-core CPU. ``paper`` uses the published settings (ResNet50 for 6000
iterations, 10 folds, the full UK Biobank grid, erosion by 7 voxels) and is meant for a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

PAIRS = [
    "reference:network@A",
    "reference:atlas@A",
    "atlas:network@A",
    "atlas:network@C",
    "reference:radiomics@A",
    "reference:baseline@A",
    "reference:unet@A",
    "atlas:unet@A",
]

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "n": 40,
        "scale": "quarter",
        "folds": 4,
        # A small CNN on quarter-size formats learns liver fat from a few dozen subjects on a CPU;
        # the paper profile trains ResNet50 as published. The deep engine's cpu profile is
        # stronger from 50-100 training subjects on (the learning curves), but not on the demo's
        # 18 per fold (reference vs network R² 0.19 against 0.35 here, at 6000 iterations) and
        # takes 8 minutes instead of 1.5 at 6000, twice that at its 12000 (docs/deep.md).
        "network": {
            "profile": "quick",
            "model": "small_cnn",
            "input_scale": 0.25,
            "learning_rate": 2e-3,
            "iterations": 600,
            "batch_size": 16,
        },
        # 7 voxels of 2.23 mm in-plane is about 16 mm: the same physical erosion on a coarser grid.
        "atlas": {
            "backend": "torch",
            "erosion_diameter_voxels": None,
            "erosion_diameter_mm": 16.0,
        },
        # Six ROIs of 4 x 4 pixels: at 8.9 mm pixels about the published 16 x 16 at 2.23 mm.
        "radiomics": {"n_estimators": 100, "augment_copies": 4, "roi_size": 4},
        # The U-Net on 8.9 mm quarter-scale slices (48 x 64 px); a 9 mm margin erodes one voxel
        # in plane before the fat fraction is read. 500 steps: about a minute a fold.
        "unet": {"iterations": 500, "erosion_mm": 9.0},
        "workers": 2,
    },
    "paper": {
        "n": 1000,
        "scale": "full",
        "folds": 10,
        "network": {"profile": "paper"},
        "atlas": {"backend": "elastix", "erosion_diameter_voxels": 7},
        "radiomics": {},
        "unet": {"iterations": 6000, "learning_rate": 1e-4},
        "workers": None,
    },
}


def demo_study(
    profile: str, *, n: int | None = None, seed: int = 0
) -> tuple[int, str, dict[str, Any]]:
    """``(subjects, phantom scale, study mapping)`` for a demo profile; paths relative to the
    study file, which sits beside the ``phantom/`` folder."""
    settings = PROFILES[profile]
    folds = settings["folds"]
    study = {
        "name": f"phantom demo ({profile})",
        "manifest": "phantom/manifest.yaml",
        "truth": "phantom/truth/truth_predictions.csv",
        "target": "liver_pdff_pct",
        "out": "study",
        "seed": seed,
        "splits": {"train": "A"},
        "executor": {"kind": "processes", "workers": settings["workers"]},
        "engines": {
            "network": {
                "engine": "deep",
                "settings": settings["network"],
                "cross_validate": True,
                "folds": folds,
                "predict_on": ["B"],
            },
            "atlas": {"engine": "atlas", "settings": settings["atlas"], "predict_on": ["A", "C"]},
            "radiomics": {
                "engine": "radiomics",
                "settings": settings["radiomics"],
                "cross_validate": True,
                "folds": folds,
            },
            "unet": {
                "engine": "segmentation",
                "settings": settings["unet"],
                "cross_validate": True,
                "folds": folds,
            },
            "baseline": {
                "engine": "linear_baseline",
                "cross_validate": True,
                "folds": folds,
                "predict_on": ["B"],
            },
        },
        "comparison": {"pairs": PAIRS, "review": ["network", "atlas"]},
    }
    return n or settings["n"], settings["scale"], study


def write_demo_study(
    out: str | os.PathLike[str],
    profile: str = "quick",
    *,
    n: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Path:
    """Generate the phantom cohort in ``out/phantom`` and write ``out/study.yaml`` for it.

    Returns the study file, for :func:`liverfat.study.run_study` (``liverfat demo``). The
    phantom resumes when it exists; ``n`` overrides the profile's number of subjects.
    """
    import yaml

    from liverfat.data.atomic import write_text_atomic
    from liverfat.data.phantom import generate_cohort

    out = Path(out).resolve()
    n_subjects, scale, study_mapping = demo_study(profile, n=n, seed=seed)
    log(f"[phantom] {n_subjects} subjects at {scale} scale -> {out / 'phantom'}")
    generate_cohort(n_subjects, out / "phantom", seed=seed, scale=scale, executor="processes")
    study_path = out / "study.yaml"
    write_text_atomic(study_path, yaml.safe_dump(study_mapping, sort_keys=False))
    return study_path
