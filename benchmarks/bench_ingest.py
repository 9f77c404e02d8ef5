"""UK Biobank ingestion speed: subjects per second from six-station Dixon zips to fused NIfTI.

Zips are written from phantom subjects (:mod:`liverfat.data.ukbiobank.synthetic`): quarter-scale
stations for the batch figure (both cores, process pool), and one full-scale zip (UK Biobank's
224 x 174 in-plane matrix, about 1,600 DICOM slices) for seconds per subject and peak memory.
Every subject is fused onto UK Biobank's native grid, 2.2321 x 2.2321 x 3 mm (``spacing_mm`` given,
so quarter-scale zips too give full-size volumes); phantom subjects are flagged for spanning
fewer than 370 fused slices and still count as ingested.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchmarks.common import skip_cpu, skipped_cpu_only, time_and_peak_memory
from liverfat.data.ukbiobank import OUTPUT_SPACING_MM, ingest_ukb
from liverfat.data.ukbiobank.synthetic import write_phantom_zip


def _ingest_one(zip_path: str, out: str) -> None:
    result = ingest_ukb(
        [zip_path], out, spacing_mm=OUTPUT_SPACING_MM, executor="serial", progress=False
    )
    if result.n_ingested != 1:
        raise RuntimeError(result.status["message"].iloc[0])


def run(work: Path) -> dict:
    if skip_cpu():
        return skipped_cpu_only()
    n_batch = 6
    zips = [write_phantom_zip(work / "zips", i, seed=5, scale="quarter") for i in range(n_batch)]
    start = time.perf_counter()
    settings = {"spacing_mm": OUTPUT_SPACING_MM, "executor": "processes", "n_workers": 2}
    result = ingest_ukb(zips, work / "batch", **settings, progress=False)
    batch_s = time.perf_counter() - start
    if result.n_ingested != n_batch:
        raise RuntimeError(f"batch ingestion failed: {result.status['message'].tolist()}")
    start = time.perf_counter()
    ingest_ukb(zips, work / "batch", **settings, progress=False)
    resume_s = time.perf_counter() - start

    full_zip = write_phantom_zip(work / "full", 0, seed=5, scale="full")
    runs = [
        time_and_peak_memory(_ingest_one, str(full_zip), str(work / f"full_out{repeat}"))
        for repeat in range(3)
    ]
    return {
        "batch_subjects": n_batch,
        "batch_subjects_per_s_2_workers": round(n_batch / batch_s, 3),
        "resume_all_done_s": round(resume_s, 2),
        "full_scale_zip_mib": round(full_zip.stat().st_size / 2**20, 1),
        "full_scale_s_per_subject_median": round(statistics.median(t for t, _ in runs), 2),
        "full_scale_peak_memory_mib_max": round(max(m for _, m in runs), 1),
        "targets": {
            "batch_subjects_per_s_2_workers": ">= 0.1",
            "full_scale_s_per_subject": "< 30",
            "full_scale_peak_memory_mib": "< 3072",
        },
    }
