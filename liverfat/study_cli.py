"""``liverfat run STUDY.yaml`` and ``liverfat demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from liverfat.cli_common import positive_int
from liverfat.demo import PROFILES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run (or resume) a study from its YAML file")
    run.add_argument("study", help="study file (YAML)")
    run.add_argument("--out", help="output folder (default: the study's 'out')")
    run.add_argument("--scheduler", help="Dask scheduler address (tcp://HOST:PORT) for the engines")
    run.set_defaults(func=run_main)

    demo = subparsers.add_parser(
        "demo", help="generate the phantom cohort and run the three-way comparison on it"
    )
    demo.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    demo.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        default="quick",
        help="quick: 2-core CPU in minutes; paper: the published settings (GPU)",
    )
    demo.add_argument("--n", type=positive_int, default=None, help="subjects (default: by profile)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--scheduler", help="Dask scheduler address for the engines")
    demo.set_defaults(func=demo_main)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(study_path: str | Path, out: str | None, scheduler: str | None) -> int:
    from liverfat.study import Study, run_study

    study = Study.load(study_path, out=out)
    if scheduler:
        study.executor.update(kind="dask", scheduler=scheduler)
    report = run_study(study, log=_log)
    print(f"report: {report}")
    return 0


def run_main(args: argparse.Namespace) -> int:
    return _run(args.study, args.out, args.scheduler)


def demo_main(args: argparse.Namespace) -> int:
    from liverfat.demo import write_demo_study

    study_path = write_demo_study(args.out, args.profile, n=args.n, seed=args.seed, log=_log)
    return _run(study_path, None, args.scheduler)
