"""``liverfat atlas templates | register | calibrate | predict``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from liverfat.atlas.fusion import FUSIONS
from liverfat.atlas.registration import BACKENDS
from liverfat.atlas.reliability import AGREEMENT_FLAG_BELOW
from liverfat.atlas.selection import SELECTIONS
from liverfat.cli_common import (
    add_executor_args,
    add_manifest_args,
    executor_settings,
    load_manifest,
    positive_float,
    positive_int,
)
from liverfat.data.atomic import write_json_atomic, write_text_atomic
from liverfat.data.manifest import Manifest


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--fusion", choices=FUSIONS, default="intersection")
    parser.add_argument(
        "--erosion-voxels",
        type=float,
        default=7,
        help="erosion ball diameter in voxels (default 7)",
    )
    parser.add_argument("--erosion-mm", type=float, help="erosion ball diameter in mm (wins)")
    parser.add_argument(
        "--n-templates",
        type=positive_int,
        default=3,
        help="templates registered to each subject (default 3)",
    )
    parser.add_argument(
        "--template-selection",
        choices=SELECTIONS,
        default="shape",
        help="shape: one fixed set (the published setting); similarity: per subject the "
        "--n-templates most similar of a pool after an affine stage",
    )
    parser.add_argument(
        "--pool-size",
        type=positive_int,
        default=15,
        help="with similarity: pool of this many subjects with masks (default 15)",
    )
    parser.add_argument(
        "--agreement-flag-below",
        type=float,
        default=AGREEMENT_FLAG_BELOW,
        help="flag readouts whose warped templates agree less (median pairwise Dice; default "
        f"{AGREEMENT_FLAG_BELOW}; 0 never flags)",
    )
    parser.add_argument(
        "--working-spacing",
        type=positive_float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="register on a grid no finer than this (mm)",
    )
    parser.add_argument(
        "--options",
        type=json.loads,
        default=None,
        help="backend options as JSON, e.g. '{\"affine_iterations\": 50}'",
    )
    add_executor_args(parser, scheduler=True)
    parser.add_argument("--threads", type=int, default=1, help="native threads per worker")
    parser.add_argument("--work-dir", help="per-subject results (resumable); default OUT/work")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    atlas = subparsers.add_parser("atlas", help="multi-atlas liver segmentation and fat readout")
    sub = atlas.add_subparsers(dest="atlas_command", metavar="ACTION", required=True)

    templates = sub.add_parser("templates", help="choose templates for shape variance")
    add_manifest_args(templates)
    templates.add_argument("--n", type=positive_int, default=3)
    templates.add_argument("--out", required=True, help="JSON file listing the template ids")
    templates.set_defaults(func=templates_main, out_is_file=True)

    calibrate = sub.add_parser("calibrate", help="fit templates + calibration; save the engine")
    add_manifest_args(calibrate, help="validation cohort (subjects with a reference)", split=True)
    calibrate.add_argument("--templates", help="JSON from `atlas templates` (else chosen here)")
    calibrate.add_argument("--target", default="liver_pdff_pct")
    calibrate.add_argument("--out", required=True, help="engine folder")
    _common(calibrate)
    calibrate.set_defaults(func=calibrate_main)

    predict = sub.add_parser("predict", help="calibrated liver fat per subject (CSV)")
    add_manifest_args(predict, split=True)
    predict.add_argument("--engine", required=True, help="folder from `atlas calibrate`")
    predict.add_argument("--out", required=True, help="predictions CSV")
    predict.add_argument("--raw", action="store_true", help="uncalibrated readout")
    add_executor_args(predict, default=None, scheduler=True)
    predict.add_argument("--work-dir", help="per-subject results (default: work beside --out)")
    predict.set_defaults(func=predict_main, out_is_file=True)

    register = sub.add_parser(
        "register", help="warp template liver masks to each subject; write a manifest with them"
    )
    add_manifest_args(register, split=True)
    register.add_argument("--templates", required=True, help="JSON from `atlas templates`")
    register.add_argument("--template-manifest", help="manifest holding the templates")
    register.add_argument(
        "--out", required=True, help="folder: masks/SUBJECT_liver_mask.nii.gz and manifest.yaml"
    )
    _common(register)
    register.set_defaults(func=register_main)


def _template_ids(path: str | None) -> list[str] | None:
    if not path:
        return None
    return [str(t) for t in json.loads(Path(path).read_text(encoding="utf-8"))["templates"]]


def _engine_settings(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """:class:`~liverfat.atlas.engine.AtlasEngine` keyword arguments of :func:`_common`'s."""
    return {
        "backend": args.backend,
        "fusion": args.fusion,
        "erosion_diameter_voxels": args.erosion_voxels,
        "erosion_diameter_mm": args.erosion_mm,
        "n_templates": args.n_templates,
        "template_selection": args.template_selection,
        "pool_size": args.pool_size,
        "agreement_flag_below": args.agreement_flag_below or None,
        "working_spacing_mm": args.working_spacing,
        "backend_options": args.options,
        **executor_settings(args),
        "threads_per_worker": args.threads,
        "work_dir": args.work_dir or str(out / "work"),
    }


def templates_main(args: argparse.Namespace) -> int:
    from liverfat.atlas.templates import choose_templates

    chosen = choose_templates(load_manifest(args), args.n)
    write_json_atomic(
        args.out, {"manifest": str(Path(args.manifest).resolve()), "templates": chosen}
    )
    print(f"templates: {' '.join(chosen)} -> {args.out}")
    return 0


def calibrate_main(args: argparse.Namespace) -> int:
    from liverfat.atlas.engine import AtlasEngine

    out = Path(args.out)
    engine = AtlasEngine(
        **_engine_settings(args, out),
        templates=_template_ids(args.templates),
        target=args.target,
    )
    engine.fit(load_manifest(args))
    engine.save(out)
    c = engine.calibration_
    print(
        f"templates {' '.join(engine.templates_)}; calibration {args.target} = "
        f"{c.slope:.4f} x raw + {c.intercept:.4f} (n={c.n}) {c.note}"
    )
    for name, stats in (("before", c.before), ("after", c.after)):
        if stats:
            print(
                f"  {name}: MAE {stats['mae']:.3f}, r {stats['r']:.3f}, bias {stats['bias']:.3f}, "
                f"LoA [{stats['loa_lower']:.3f}, {stats['loa_upper']:.3f}]"
            )
    print(f"engine saved to {out}")
    return 0


def predict_main(args: argparse.Namespace) -> int:
    from liverfat.atlas.engine import AtlasEngine

    # never the saved engine's own work_dir: the engine folder is an input
    work_dir = args.work_dir or str(Path(args.out).parent / "work")
    engine = AtlasEngine.load(args.engine).set_params(work_dir=work_dir)
    given = executor_settings(args)
    engine.set_params(**{name: value for name, value in given.items() if value})  # else as saved
    manifest = load_manifest(args)
    table = engine.predict(manifest, raw=args.raw)
    table.write(args.out)
    details = Path(args.out).with_name(Path(args.out).stem + "_readout.csv")
    write_text_atomic(details, engine.readout_details(manifest).to_csv(index=False))
    counts = table.frame["status"].value_counts().to_dict()
    print(f"{len(table.frame)} rows ({counts}) -> {args.out}; readout details -> {details}")
    return 0


def register_main(args: argparse.Namespace) -> int:
    from liverfat.atlas.engine import AtlasEngine
    from liverfat.atlas.masks import MASK_FOLDER, manifest_with_atlas_masks

    out = Path(args.out)
    templates = _template_ids(args.templates)
    engine = AtlasEngine(
        **_engine_settings(args, out), templates=templates, calibrate=False, save_masks=True
    )
    engine.fit(Manifest.load(args.template_manifest or args.manifest).select(subject_ids=templates))
    result = manifest_with_atlas_masks(engine, load_manifest(args), out)
    for sid, message in result.failures.items():
        print(f"{sid}: {message}")
    print(
        f"{len(result.written)} of {len(result.readout)} subjects have atlas liver masks in "
        f"{out / MASK_FOLDER}; manifest {result.manifest.path}"
    )
    if result.without_readout:
        print(f"{len(result.without_readout)} without a fat fraction: masks only, no fat readout")
    return 0
