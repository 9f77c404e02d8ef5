"""``liverfat atlas templates | register | calibrate | predict``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from liverfat.data.atomic import write_json_atomic
from liverfat.data.manifest import Manifest
from liverfat.parallel import EXECUTORS


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("elastix", "deform", "torch"), default="elastix")
    parser.add_argument(
        "--fusion", choices=("intersection", "majority", "staple"), default="intersection"
    )
    parser.add_argument(
        "--erosion-voxels",
        type=float,
        default=7,
        help="erosion ball diameter in voxels (default 7)",
    )
    parser.add_argument("--erosion-mm", type=float, help="erosion ball diameter in mm (wins)")
    parser.add_argument(
        "--working-spacing",
        type=float,
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
    parser.add_argument("--executor", choices=EXECUTORS, default="processes")
    parser.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    parser.add_argument("--threads", type=int, default=1, help="native threads per worker")
    parser.add_argument("--scheduler", help="Dask scheduler address (with --executor dask)")
    parser.add_argument("--work-dir", help="per-subject results (resumable); default OUT/work")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    atlas = subparsers.add_parser("atlas", help="multi-atlas liver segmentation and fat readout")
    sub = atlas.add_subparsers(dest="atlas_command", metavar="ACTION", required=True)

    templates = sub.add_parser("templates", help="choose templates for shape variance")
    templates.add_argument("manifest")
    templates.add_argument("--n", type=int, default=3)
    templates.add_argument("--out", required=True, help="JSON file listing the template ids")
    templates.set_defaults(func=templates_main)

    calibrate = sub.add_parser("calibrate", help="fit templates + calibration; save the engine")
    calibrate.add_argument("manifest", help="validation cohort (subjects with a reference)")
    calibrate.add_argument("--split", help="use only this split of the manifest")
    calibrate.add_argument("--templates", help="JSON from `atlas templates` (else chosen here)")
    calibrate.add_argument("--n-templates", type=int, default=3)
    calibrate.add_argument("--target", default="liver_pdff_pct")
    calibrate.add_argument("--out", required=True, help="engine folder")
    _common(calibrate)
    calibrate.set_defaults(func=calibrate_main)

    predict = sub.add_parser("predict", help="calibrated liver fat per subject (CSV)")
    predict.add_argument("manifest")
    predict.add_argument("--engine", required=True, help="folder from `atlas calibrate`")
    predict.add_argument("--split")
    predict.add_argument("--out", required=True, help="predictions CSV")
    predict.add_argument("--raw", action="store_true", help="uncalibrated readout")
    predict.add_argument("--executor", choices=EXECUTORS)
    predict.add_argument("--workers", type=int)
    predict.add_argument("--scheduler")
    predict.add_argument("--work-dir")
    predict.set_defaults(func=predict_main)

    register = sub.add_parser(
        "register", help="warp template liver masks to each subject; write a manifest with them"
    )
    register.add_argument("manifest")
    register.add_argument("--templates", required=True, help="JSON from `atlas templates`")
    register.add_argument("--template-manifest", help="manifest holding the templates")
    register.add_argument("--split")
    register.add_argument("--out", required=True, help="folder for masks and the new manifest")
    _common(register)
    register.set_defaults(func=register_main)


def _load(path: str, split: str | None) -> Manifest:
    return Manifest.load(path).select(split=split)


def _template_ids(path: str | None) -> list[str] | None:
    if not path:
        return None
    return [str(t) for t in json.loads(Path(path).read_text(encoding="utf-8"))["templates"]]


def _engine(args: argparse.Namespace, out: Path, **extra):
    from liverfat.atlas.engine import AtlasEngine

    return AtlasEngine(
        backend=args.backend,
        fusion=args.fusion,
        erosion_diameter_voxels=args.erosion_voxels,
        erosion_diameter_mm=args.erosion_mm,
        working_spacing_mm=args.working_spacing,
        backend_options=args.options,
        executor=args.executor,
        n_workers=args.workers,
        threads_per_worker=args.threads,
        scheduler=args.scheduler,
        work_dir=args.work_dir or str(out / "work"),
        **extra,
    )


def templates_main(args: argparse.Namespace) -> int:
    from liverfat.atlas.templates import choose_templates

    manifest = Manifest.load(args.manifest)
    chosen = choose_templates(manifest, args.n)
    write_json_atomic(
        args.out, {"manifest": str(Path(args.manifest).resolve()), "templates": chosen}
    )
    print(f"templates: {' '.join(chosen)} -> {args.out}")
    return 0


def calibrate_main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    engine = _engine(
        args,
        out,
        templates=_template_ids(args.templates),
        n_templates=args.n_templates,
        target=args.target,
    )
    engine.fit(_load(args.manifest, args.split))
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

    engine = AtlasEngine.load(args.engine)
    for name in ("executor", "scheduler", "work_dir"):
        if getattr(args, name):
            setattr(engine, name, getattr(args, name))
    if args.workers:
        engine.n_workers = args.workers
    table = engine.predict(_load(args.manifest, args.split), raw=args.raw)
    table.write(args.out)
    counts = table.frame["status"].value_counts().to_dict()
    print(f"{len(table.frame)} rows ({counts}) -> {args.out}")
    return 0


def register_main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    manifest = _load(args.manifest, args.split)
    template_source = Manifest.load(args.template_manifest or args.manifest)
    templates = _template_ids(args.templates)
    engine = _engine(args, out, templates=templates, calibrate=False, save_masks=True)
    engine.fit(template_source.select(subject_ids=templates))
    readout = engine.raw_readout(manifest, progress="atlas register")
    table = manifest.subjects.copy()
    masks = (
        readout["mask"].reindex(table["subject_id"]).fillna("").tolist()
        if "mask" in readout
        else [""] * len(table)
    )
    table["liver_mask"] = [str(Path(m).resolve()) if m else "" for m in masks]
    derived = Manifest(
        card=dict(manifest.card), subjects=table, path=out / "manifest.yaml", root=manifest.root
    )
    card = derived.write(out / "manifest.yaml")
    failed = readout[readout["status"] == "failed"]
    for sid, row in failed.iterrows():
        print(f"{sid}: {row['message']}")
    print(
        f"{len(readout) - len(failed)} of {len(readout)} subjects have atlas liver masks; "
        f"manifest {card}"
    )
    return 0
