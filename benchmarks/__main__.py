"""Run every ``benchmarks/bench_*.py`` (or those named) and write one JSON file per benchmark.

Each module provides ``run(work_dir: Path) -> dict``; the dict (medians, ratios, peak memory)
is written to ``<out>/<name>.json`` with the machine description, so figures can be compared run
to run and machine to machine.

    python -m benchmarks --out benchmarks/results [phantom radiomics ...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    import psutil

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    available = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    names = args.names or available
    unknown = set(names) - set(available)
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(sorted(unknown))}; have {', '.join(available)}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"benchmark {name} ...", flush=True)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as work:
            try:
                figures = module.run(Path(work))
            except Exception as exc:  # noqa: BLE001 - report and go on with the next benchmark
                print(f"benchmark {name} failed: {exc}", file=sys.stderr)
                failed.append(name)
                continue
        result = {
            "benchmark": name,
            "machine": machine(),
            "wall_s": round(time.perf_counter() - start, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "figures": figures,
        }
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(figures, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
