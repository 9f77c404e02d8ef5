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
from dataclasses import fields
from pathlib import Path

from liverfat.cli_common import non_negative_int
from liverfat.data.manifest import Manifest, is_manifest_path
from liverfat.data.predictions import PredictionsTable
from liverfat.evaluation.agreement import ICC_ALIASES, ICC_FORMS
from liverfat.evaluation.compare import ComparisonSettings, run_comparison
from liverfat.evaluation.layouts import to_markdown
from liverfat.evaluation.report import comparison_figures, write_figures, write_report
from liverfat.evaluation.values import ComparisonError, parse_pair, reference_table

DEFAULTS = ComparisonSettings()


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
    parser.add_argument("--no-report", action="store_true", help="tables only, no figures")
    _add_settings(parser)
    parser.set_defaults(func=main)


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """The :class:`ComparisonSettings` options; each ``dest`` is the setting's field name."""
    parser.add_argument("--by", help="covariate to stratify correlations by (e.g. sex)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULTS.threshold,
        help="steatosis cut-off in the target unit (default %(default)s)",
    )
    parser.add_argument(
        "--grades",
        dest="grade_thresholds",
        type=float,
        nargs="+",
        default=list(DEFAULTS.grade_thresholds),
        metavar="CUT",
        help="increasing cut-offs between steatosis grades (default %(default)s)",
    )
    parser.add_argument(
        "--icc-form",
        default=DEFAULTS.icc_form,
        choices=(*ICC_FORMS, *ICC_ALIASES),
        help="ICC form (default %(default)s)",
    )
    parser.add_argument(
        "--mape-floor",
        type=float,
        default=DEFAULTS.mape_floor,
        help="skip |reference| below this in MAPE (default %(default)s)",
    )
    parser.add_argument(
        "--bootstrap",
        dest="n_boot",
        type=non_negative_int,
        default=DEFAULTS.n_boot,
        help="bootstrap replicates",
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="bootstrap seed")
    parser.add_argument(
        "--top", dest="top_n", type=int, default=DEFAULTS.top_n, help="outliers listed per pair"
    )
    parser.add_argument(
        "--include-flagged", action="store_true", help="also use rows with status 'flagged'"
    )


def _settings(args: argparse.Namespace) -> ComparisonSettings:
    """The settings named on the command line (every field the parser has a ``dest`` for)."""
    given = {
        f.name: getattr(args, f.name) for f in fields(ComparisonSettings) if hasattr(args, f.name)
    }
    return ComparisonSettings(**given)


def _pick_target(tables: list[PredictionsTable], target: str | None) -> str:
    if target is not None:
        return target
    targets = sorted({t for table in tables for t in table.targets})
    if len(targets) != 1:
        raise ComparisonError(
            f"the predictions hold targets {', '.join(targets) or 'none'}; choose one with --target"
        )
    return targets[0]


def main(args: argparse.Namespace) -> int:
    """Run the comparison and write tables, figures and the report under ``--out``."""
    settings = _settings(args)
    tables = [PredictionsTable.read(p) for p in args.predictions]
    target = _pick_target(tables, args.target)
    manifest = Manifest.load(args.manifest) if args.manifest else None
    if is_manifest_path(args.reference):
        reference_manifest = Manifest.load(args.reference)
        reference = reference_table(reference_manifest, target, name=args.reference_name)
        manifest = manifest if manifest is not None else reference_manifest
    else:
        reference = reference_table(args.reference, target, name=args.reference_name)
    name = reference.methods[0]
    if any(name in t.methods for t in tables):
        raise ComparisonError(f"method {name!r} is both the reference and among the predictions")
    if args.subset and manifest is None:
        raise ComparisonError("--subset needs a manifest (as --reference or --manifest)")
    subsets = (
        {s: manifest.select(split=s).subject_ids for s in args.subset} if args.subset else None
    )
    covariates = None
    if manifest is not None and args.covariates != []:
        covariates = manifest.covariates(args.covariates)
    if args.by and (covariates is None or covariates.columns.empty):
        raise ComparisonError("--by needs covariates from a manifest")
    comparison = run_comparison(
        [reference, *tables],
        target,
        pairs=[parse_pair(p) for p in args.pair] if args.pair else None,
        reference=name,
        subsets=subsets,
        covariates=covariates,
        settings=settings,
    )
    out = Path(args.out)
    written = comparison.write_tables(out)
    if not args.no_report:
        sections = comparison_figures(comparison)
        written += write_figures(sections, out / "figures")
        sources = ", ".join([str(args.reference), *map(str, args.predictions)])
        written.append(
            write_report(comparison, out / "report.html", sources=sources, sections=sections)
        )
    print(to_markdown(comparison.published()), end="")
    print(f"wrote {len(written)} files to {out}", file=sys.stderr)
    return 0
