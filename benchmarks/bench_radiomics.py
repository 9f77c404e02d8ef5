"""Radiomics feature-extraction throughput: 16 x 16 pixel ROIs per second on both cores, through
the engine's own extraction path (the shipped parameter file, fat-fraction channel)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import skip_cpu, skipped_cpu_only
from liverfat.parallel import map_subjects

N_PATCHES_PER_JOB = 200
N_JOBS = 4


def _extract_batch(seed: int) -> int:
    from liverfat.radiomics.features import load_parameters, make_extractor, patch_features

    params = load_parameters()
    extractor = make_extractor(params["pyradiomics"], binWidth=params["bin_width"]["fat_fraction"])
    rng = np.random.default_rng(seed)
    for _ in range(N_PATCHES_PER_JOB):
        patch = rng.uniform(5, 25) + rng.normal(0, 1.5, (16, 16))  # liver-like fat fraction (%)
        patch_features(patch, (2.23, 2.23), extractor)
    return N_PATCHES_PER_JOB


def _throughput(n_workers: int) -> float:
    start = time.perf_counter()
    done = sum(
        o.value
        for o in map_subjects(
            _extract_batch, range(N_JOBS), executor="processes", n_workers=n_workers
        )
    )
    return done / (time.perf_counter() - start)


def run(work: Path) -> dict:
    if skip_cpu():
        return skipped_cpu_only()
    both = sorted(_throughput(2) for _ in range(3))
    one = sorted(_throughput(1) for _ in range(3))
    return {
        "rois_16x16_per_s_2_cores_median": round(both[1], 1),
        "rois_16x16_per_s_1_core_median": round(one[1], 1),
        "rois_per_run": N_JOBS * N_PATCHES_PER_JOB,
        "note": "includes process start-up and extractor construction per job",
        "targets": {"rois_16x16_per_s_2_cores": ">= 60"},
    }


if __name__ == "__main__":
    import json
    import tempfile

    print(json.dumps(run(Path(tempfile.mkdtemp())), indent=1))
