"""The floors of the house (docs/design.md): imports only go down, engines never import each
other, and the study reaches engines only by name. Every import counts, lazy ones included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "liverfat"

#: Floor of each top-level part of liverfat; a module may import its own part or lower floors.
FLOORS = {
    "__init__": 0,
    "errors": 0,
    "data": 1,
    "parallel": 1,
    "engine": 1,
    "nn": 1,
    "cli_common": 1,
    "evaluation": 2,
    "grading": 2,  # the grading protocol, beside evaluation: graders are objects, not engines
    "radiomics": 3,
    "atlas": 3,
    "deep": 3,
    "baseline": 3,
    "segmentation": 3,
    "study": 4,
    "learning_curve": 4,
    "graders": 4,
    "grade_cli": 4,
    "demo": 4,
    "testing": 4,
    "study_cli": 4,
    "study_schema": 4,
    "study_qc": 4,
    "study_repeatability": 4,
    "study_outputs": 4,
    "serve_cli": 4,
    "cli": 4,
}
ENGINES = {part for part, floor in FLOORS.items() if floor == 3}


def _part(module: str) -> str:
    """``liverfat.deep.engine`` -> ``deep``; ``liverfat`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("liverfat")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.module, node.lineno)] if node.module.startswith("liverfat") else []
    return found


def _arrows() -> list[tuple[str, str, str]]:
    """(importing part, imported part, where) for every import between two parts."""
    arrows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        source = _part(".".join(relative.parts).removesuffix(".__init__"))
        for module, line in _imports(path):
            target = _part(module)
            if target != source:
                arrows.append((source, target, f"{path.relative_to(PACKAGE.parent)}:{line}"))
    return arrows


def test_every_part_has_a_floor():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    unknown = (modules | packages) - set(FLOORS)
    assert not unknown, f"give these a floor in FLOORS and docs/design.md: {sorted(unknown)}"


def test_imports_only_go_down():
    upward = [a for a in _arrows() if FLOORS[a[1]] > FLOORS[a[0]]]
    assert not upward, "imports of a higher floor:\n" + "\n".join(map(str, upward))


def test_engines_never_import_each_other():
    sideways = [a for a in _arrows() if a[0] in ENGINES and a[1] in ENGINES]
    assert not sideways, "engine imports another engine:\n" + "\n".join(map(str, sideways))


def test_the_study_reaches_engines_only_by_name():
    direct = [a for a in _arrows() if a[0] == "study" and a[1] in ENGINES]
    assert not direct, "study imports an engine module:\n" + "\n".join(map(str, direct))
