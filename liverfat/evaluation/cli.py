"""``liverfat compare``: method-comparison tables, figures and an HTML report.

Example::

    liverfat compare --reference cohort/manifest.yaml --target liver_pdff_pct \\
        --predictions atlas.csv network.csv --pair reference:network --pair reference:atlas \\
        --pair atlas:network --subset A --subset C --out results/compare

``--reference`` is either a predictions table (CSV; its method is the reference, e.g.
``reference``) or a manifest (dataset card or its folder), whose target column becomes a method
named ``--reference-name`` (default ``reference``). Subsets are the manifest's splits and
covariates its subject-table columns (a CSV reference takes them from ``--manifest``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from liverfat.data.manifest import COVARIATE_COLUMNS, Manifest
from liverfat.data.predictions import PredictionsTable, prediction_row
from liverfat.evaluation.classification import (
    STEATOSIS_GRADE_THRESHOLDS_PCT,
    STEATOSIS_THRESHOLD_PCT,
)
from liverfat.evaluation.compare import ComparisonError, parse_pair, run_comparison, to_markdown
from liverfat.evaluation.report import comparison_figures, write_figures, write_report


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare methods' predictions tables: tables, figures, HTML report",
        description=__doc__.split("Example::")[0].strip(),
    )
    parser.add_argument(
        "--reference",
        required=True,
        metavar="REF",
        help="reference: a predictions table (CSV) or a manifest (card or folder)",
    )
    parser.add_argument(
        "--predictions", nargs="+", required=True, metavar="CSV", help="predictions tables"
    )
    parser.add_argument(
        "--pair",
        action="append",
        metavar="A:B",
        help="methods to compare, A the truth (repeatable; default reference vs each method, "
        "then each pair of methods)",
    )
    parser.add_argument(
        "--subset",
        action="append",
        metavar="SPLIT",
        help="manifest split to evaluate separately (repeatable; default all subjects)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--target", help="target to compare (default: the only one)")
    parser.add_argument("--manifest", help="manifest for subsets and covariates (CSV reference)")
    parser.add_argument(
        "--reference-name",
        help="method name of the reference (default 'reference' for a manifest, "
        "the table's only method for a CSV)",
    )
    parser.add_argument(
        "--covariates",
        nargs="*",
        metavar="COLUMN",
        help="manifest columns to correlate with (default: those of age, sex, height, weight, "
        "bmi present; give none to skip)",
    )
    parser.add_argument("--by", help="covariate to stratify correlations by (e.g. sex)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=STEATOSIS_THRESHOLD_PCT,
        help="steatosis cut-off in the target unit (default %(default)s)",
    )
    parser.add_argument(
        "--grades",
        type=float,
        nargs="+",
        default=list(STEATOSIS_GRADE_THRESHOLDS_PCT),
        metavar="CUT",
        help="increasing cut-offs between steatosis grades (default %(default)s)",
    )
    parser.add_argument("--icc-form", default="ICC(2,1)", help="ICC form (default %(default)s)")
    parser.add_argument(
        "--mape-floor",
        type=float,
        default=1.0,
        help="skip |reference| below this in MAPE (default %(default)s)",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--top", type=int, default=10, help="outliers listed per pair")
    parser.add_argument(
        "--include-flagged", action="store_true", help="also use rows with status 'flagged'"
    )
    parser.add_argument("--no-report", action="store_true", help="tables only, no figures")
    parser.set_defaults(func=main)


def _is_manifest(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in (".yaml", ".yml")


def _pick_target(tables: list[PredictionsTable], target: str | None) -> str:
    if target is not None:
        return target
    targets = sorted({t for table in tables for t in table.targets})
    if len(targets) != 1:
        raise ComparisonError(
            f"the predictions hold targets {', '.join(targets) or 'none'}; choose one with --target"
        )
    return targets[0]


def _reference_from_manifest(manifest: Manifest, target: str, name: str) -> PredictionsTable:
    values = manifest.target(target).dropna()
    rows = [prediction_row(sid, name, target, float(v)) for sid, v in values.items()]
    if not rows:
        raise ComparisonError(f"{manifest.path}: no subject has a value for target {target}")
    return PredictionsTable.from_rows(rows, {"method": name, "source": str(manifest.path)})


def _covariates(manifest: Manifest, columns: list[str] | None) -> pd.DataFrame | None:
    raw = pd.read_csv(manifest.table_path, dtype=str, keep_default_na=False)
    raw["subject_id"] = raw["subject_id"].str.strip()
    raw = raw.set_index("subject_id")
    if columns is None:
        columns = [c for c in COVARIATE_COLUMNS if c in raw.columns]
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise ComparisonError(f"{manifest.table_path}: no covariate column {', '.join(missing)}")
    return raw[columns] if columns else None


def main(args: argparse.Namespace) -> int:
    """Run the comparison and write tables, figures and the report under ``--out``."""
    tables = [PredictionsTable.read(p) for p in args.predictions]
    reference_path = Path(args.reference)
    manifest = Manifest.load(args.manifest) if args.manifest else None
    if _is_manifest(reference_path):
        manifest = manifest or Manifest.load(reference_path)
        target = _pick_target(tables, args.target)
        name = args.reference_name or "reference"
        reference = _reference_from_manifest(Manifest.load(reference_path), target, name)
    else:
        reference = PredictionsTable.read(reference_path)
        target = _pick_target([reference, *tables] if args.target else tables, args.target)
        if args.reference_name:
            name = args.reference_name
        elif len(reference.methods) == 1:
            name = reference.methods[0]
        else:
            raise ComparisonError(
                f"{reference_path} holds methods {', '.join(reference.methods)}; "
                "name the reference with --reference-name"
            )
        if name not in reference.methods:
            raise ComparisonError(f"{reference_path}: no method {name!r}")
        reference = PredictionsTable(reference.frame[reference.frame["method"] == name])
    if any(name in t.methods for t in tables):
        raise ComparisonError(f"method {name!r} is both the reference and among the predictions")
    subsets = None
    if args.subset:
        if manifest is None:
            raise ComparisonError("--subset needs a manifest (as --reference or --manifest)")
        subsets = {
            s: manifest.subjects.loc[manifest.in_split(s).to_numpy(), "subject_id"].tolist()
            for s in args.subset
        }
    covariates = None
    if manifest is not None and args.covariates != []:
        covariates = _covariates(manifest, args.covariates)
    if args.by and covariates is None:
        raise ComparisonError("--by needs covariates from a manifest")
    pairs = [parse_pair(p) for p in args.pair] if args.pair else None
    comparison = run_comparison(
        [reference, *tables],
        target,
        pairs=pairs,
        reference=name,
        subsets=subsets,
        covariates=covariates,
        by=args.by,
        include_flagged=args.include_flagged,
        threshold=args.threshold,
        grade_thresholds=args.grades,
        icc_form=args.icc_form,
        mape_floor=args.mape_floor,
        n_boot=args.bootstrap,
        seed=args.seed,
        top_n=args.top,
    )
    out = Path(args.out)
    written = comparison.write_tables(out)
    if not args.no_report:
        sections = comparison_figures(comparison)
        written += write_figures(sections, out / "figures")
        sources = ", ".join([str(reference_path), *map(str, args.predictions)])
        written.append(
            write_report(comparison, out / "report.html", sources=sources, sections=sections)
        )
    print(to_markdown(comparison.published()), end="")
    print(f"wrote {len(written)} files to {out}", file=sys.stderr)
    return 0


def run(argv: list[str] | None = None) -> int:
    """``liverfat compare`` as a function (for tests and scripts)."""
    from liverfat.cli import main as liverfat_main

    return liverfat_main(["compare", *(argv or [])])
