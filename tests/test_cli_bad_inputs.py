"""One set of bad inputs, run against every ``liverfat`` subcommand.

The commands are discovered from :func:`liverfat.cli.build_parser` (nested actions too), and a
case applies to a command when its parser has the input the case damages: a manifest, an
``--out``, a saved engine, a numeric option. For each (command, case) pair:

* a refused input exits 2 with one line ``liverfat CMD: error: ...`` (argparse's usage block
  plus its one ``error:`` line for a value the parser refuses; ``manifest check`` exits 1 with
  one line per problem and a count), never a traceback;
* a subject at fault in a batch costs that subject only: the command finishes (exit 0, or 1
  where it documents 1 for "some failed") and names the subject, as a ``failed`` row of the
  predictions table where it writes one;
* nothing is written outside the ``--out`` given: the inputs (files and mtimes) and the working
  folder are the same afterwards.

Every case is refused before any heavy work, or runs on tiny settings; the (command, case) pairs
that would train or register for long are listed in :data:`NOT_APPLICABLE` with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from liverfat.cli import build_parser, main
from liverfat.data.phantom.cohort import generate_cohort

#: The subject the subject-level cases damage (split A: it has a reference, so engines train on
#: it and predict it), and the subjects those cases keep (the batch must go on with the others).
SUBJECT = "P0003"
BATCH = ("P0002", "P0003", "P0004")


# The commands, from the parser ------------------------------------------------------------------
def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaves(sub, (*path, name))


COMMANDS: dict[str, argparse.ArgumentParser] = dict(_leaves(build_parser()))


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[-1]: a for a in parser._actions if a.option_strings}


def _positionals(parser: argparse.ArgumentParser) -> list[str]:
    return [a.dest for a in parser._actions if not a.option_strings]


def _engine_option(parser: argparse.ArgumentParser) -> str | None:
    """``--engine`` or ``--model`` where it names a saved engine folder (not a model choice)."""
    options = _options(parser)
    for name in ("--engine", "--model"):
        action = options.get(name)
        if action is not None and action.required and action.choices is None:
            return name
    return None


def _out_is_file(parser: argparse.ArgumentParser) -> bool:
    """Whether ``--out`` names a file (a CSV or JSON) rather than a folder, by its help."""
    help_text = (_options(parser)["--out"].help or "").lower()
    return ("csv" in help_text or "json" in help_text) and "folder" not in help_text


def _takes_manifest(parser: argparse.ArgumentParser) -> bool:
    positionals = set(_positionals(parser))
    return bool(positionals & {"manifest", "source", "study"}) or "--reference" in _options(parser)


# The cohort and saved engines, built once -----------------------------------------------------
@dataclass
class Kit:
    root: Path
    cohort: Path
    engines: dict[str, Path] = field(default_factory=dict)
    predictions: Path | None = None
    templates: Path | None = None


ATLAS_FAST = {
    "affine_levels": [2],
    "affine_iterations": 2,
    "deformable_levels": [2],
    "deformable_iterations": 1,
}


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Kit:
    """A 6-subject quarter-scale phantom, a tiny saved engine of each kind (about 10 s on 2
    cores), a predictions table and a templates file."""
    from liverfat.atlas.engine import AtlasEngine
    from liverfat.baseline import LinearBaseline
    from liverfat.data.manifest import Manifest
    from liverfat.deep.engine import DeepEngine
    from liverfat.radiomics.engine import RadiomicsEngine
    from liverfat.segmentation.engine import SegmentationEngine

    root = tmp_path_factory.mktemp("bad_inputs")
    cohort = root / "cohort"
    generate_cohort(6, cohort, seed=1, scale="quarter", executor="serial", progress=False)
    manifest = Manifest.load(cohort)
    engines = {
        name: root / "engines" / name for name in ("baseline", "deep", "seg", "rad", "atlas")
    }
    serial = {"executor": "serial"}
    LinearBaseline(covariates=("age",)).fit(manifest).save(engines["baseline"])
    # each engine's working folder is inside its own folder, as `... fit --out DIR` leaves it
    DeepEngine(
        model="small_cnn", iterations=1, batch_size=2, input_scale=0.25, device="cpu",
        work_dir=str(engines["deep"] / "work"), **serial,
    ).fit(manifest).save(engines["deep"])  # fmt: skip
    SegmentationEngine(
        features=(4,) * 6, iterations=1, batch_size=2, device="cpu",
        work_dir=str(engines["seg"] / "work"), **serial,
    ).fit(manifest.select(subject_ids=manifest.subject_ids[:2])).save(engines["seg"])  # fmt: skip
    RadiomicsEngine(
        roi_size=4, n_estimators=5, augment_copies=0, max_depth=2,
        work_dir=str(engines["rad"] / "work"), **serial,
    ).fit(manifest).save(engines["rad"])  # fmt: skip
    AtlasEngine(
        backend="torch", n_templates=1, erosion_diameter_voxels=3, min_voxels=5,
        backend_options=ATLAS_FAST, work_dir=str(engines["atlas"] / "work"), **serial,
    ).fit(manifest).save(engines["atlas"])  # fmt: skip
    predictions = root / "baseline_predictions.csv"
    LinearBaseline.load(engines["baseline"]).predict(manifest).write(predictions)
    templates = root / "templates.json"
    templates.write_text(json.dumps({"templates": ["P0002"]}), encoding="utf-8")
    return Kit(root, cohort, engines, predictions, templates)


#: Which saved engine each command group loads.
ENGINE_OF = {
    "radiomics": "rad",
    "deep": "deep",
    "atlas": "atlas",
    "baseline": "baseline",
    "segmentation": "seg",
    "serve": "seg",
}

#: Options that keep a command tiny wherever its parser has them (values as on the command line).
TINY = {
    "--executor": ["serial"],
    "--iterations": ["1"],
    "--batch-size": ["2"],
    "--features": ["4"] * 6,
    "--estimators": ["5"],
    "--augment": ["0"],
    "--roi-size": ["4"],
    "--device": ["cpu"],
    "--bootstrap": ["20"],
    "--folds": ["2"],
    "--backend": ["torch"],
    "--n-templates": ["1"],
    "--options": [json.dumps(ATLAS_FAST)],
    "--moved": ["0"],
    "--n": ["2"],
    "--port": ["0"],
}


# The bad inputs ---------------------------------------------------------------------------------
def _copy_cohort(kit: Kit, tmp_path: Path) -> Path:
    copy = tmp_path / "cohort"
    shutil.copytree(kit.cohort, copy)
    return copy


def _keep_subjects(cohort: Path, subject_ids: tuple[str, ...]) -> Path:
    table = pd.read_csv(cohort / "subjects.csv", dtype=str, keep_default_na=False)
    table[table["subject_id"].isin(subject_ids)].to_csv(cohort / "subjects.csv", index=False)
    return cohort


def _edit_card(cohort: Path, edit: Callable[[dict], None]) -> Path:
    card_path = cohort / "manifest.yaml"
    card = yaml.safe_load(card_path.read_text(encoding="utf-8"))
    edit(card)
    card_path.write_text(yaml.safe_dump(card, sort_keys=False), encoding="utf-8")
    return cohort


def _subject_file(cohort: Path, column: str) -> Path:
    table = pd.read_csv(cohort / "subjects.csv", dtype=str).set_index("subject_id")
    return cohort / table.loc[SUBJECT, column]


def _rewrite_image(cohort: Path, column: str, change: Callable[[sitk.Image], sitk.Image]) -> Path:
    path = _subject_file(cohort, column)
    image = sitk.ReadImage(str(path))
    sitk.WriteImage(change(image), str(path), True)
    return cohort


def _nan_image(image: sitk.Image) -> sitk.Image:
    nan = sitk.GetImageFromArray(np.full(sitk.GetArrayViewFromImage(image).shape, np.nan, "f4"))
    nan.CopyInformation(image)
    return nan


def _shifted(image: sitk.Image) -> sitk.Image:
    image = sitk.Image(image)
    origin = list(image.GetOrigin())
    origin[0] += 30.0  # mm
    image.SetOrigin(origin)
    return image


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _header_only(cohort: Path) -> Path:
    table = cohort / "subjects.csv"
    table.write_text(table.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    return cohort


def _no_card(cohort: Path) -> Path:
    (cohort / "manifest.yaml").unlink()
    return cohort


def _write(cohort: Path, name: str, data: bytes) -> Path:
    (cohort / name).write_bytes(data)
    return cohort


def _set_range(card: dict) -> None:
    card["targets"]["liver_pdff_pct"]["range"] = [0]


def _set_splits(card: dict) -> None:
    card["splits"] = "A"


def _empty_mask(image: sitk.Image) -> sitk.Image:
    return image * 0


#: Damaged manifests: the command refuses them, one line.
MANIFEST_CASES: dict[str, Callable[[Path], Path]] = {
    "missing manifest": lambda c: c.parent / "nowhere" / "manifest.yaml",
    "folder without a card": _no_card,
    "card not YAML": lambda c: _write(c, "manifest.yaml", b"name: [unclosed\n  - : :\n"),
    "card not UTF-8": lambda c: _write(c, "manifest.yaml", b"name: \xff\xfe\x00caf\xe9\n"),
    "card range: [0]": lambda c: _edit_card(c, _set_range),
    "card splits: A": lambda c: _edit_card(c, _set_splits),
    "subject table header only": _header_only,
}

#: One subject's files damaged: it fails alone (its ``failed`` row), the batch goes on.
SUBJECT_CASES: dict[str, Callable[[Path], Path]] = {
    "truncated image": lambda c: _truncate(_subject_file(c, "water")) or c,
    "NaN image": lambda c: _rewrite_image(c, "water", _nan_image),
    "mask on another grid": lambda c: _rewrite_image(c, "liver_mask", _shifted),
    "empty mask": lambda c: _rewrite_image(c, "liver_mask", _empty_mask),
}
#: Subject cases that damage the liver mask (commands that never read it may finish clean).
MASK_CASES = {"mask on another grid", "empty mask"}

#: Unusable outputs; "out is a file" for commands writing a folder, "out is a folder" for those
#: writing a file (overwriting an existing file is what a rerun does).
OUT_CASES = ("out below a file", "out is a file", "out is a folder", "out in a read-only folder")

#: Option and bad value (``--folds 0`` becomes -1 where 0 is documented: ``grade``'s "none").
NUMERIC_CASES: dict[str, tuple[str, str]] = {
    "--workers -2": ("--workers", "-2"),
    "--folds 0": ("--folds", "0"),
    "--folds abc": ("--folds", "abc"),
    "--learning-rate nan": ("--learning-rate", "nan"),
    "--device cuda:7": ("--device", "cuda:7"),
}

ENGINE_CASES = ("engine garbage JSON", "engine truncated safetensors")

#: Commands that exit 1 for "problems found" / "some subjects failed" (their documented code).
EXIT_ONE = {"manifest check", "radiomics rois", "radiomics features", "ingest ukb"}

#: Commands whose work needs each subject's own liver mask: a bad one must be named.
USES_OWN_MASK = {"manifest check", "radiomics rois", "radiomics features", "radiomics fit"}

#: (command, case group or case) pairs not run, and why: most would train or register for long,
#: so a subject-level fault there is covered by the engine's own tests of skipped subjects.
NOT_APPLICABLE = {
    ("radiomics cv", "subject"): "runs the three-model protocol with bootstrap CIs",
    ("deep cv", "subject"): "trains a network per fold",
    ("atlas calibrate", "subject"): "registers every template to every subject",
    ("atlas register", "subject"): "registers the templates to every subject",
    ("grade", "subject"): "trains trees and a network per fold",
    ("segmentation cv", "subject"): "trains a U-Net per fold",
    ("segmentation fit", "subject"): "trains a U-Net (seconds per case even when tiny)",
    **{
        (f"baseline {a}", "subject"): "the covariate baseline reads no image"
        for a in ("cv", "fit", "predict")
    },
    ("atlas templates", "truncated image"): "chooses templates from the liver masks alone",
    ("atlas templates", "NaN image"): "chooses templates from the liver masks alone",
}


def _cases() -> list:
    params = []
    for command, parser in COMMANDS.items():
        options = _options(parser)
        positionals = _positionals(parser)
        names: list[tuple[str, str]] = []
        if _takes_manifest(parser):
            names += [("manifest", c) for c in MANIFEST_CASES]
        elif "zips" in positionals:
            names.append(("manifest", "missing manifest"))  # a missing input path
        if "manifest" in positionals:
            names += [("subject", c) for c in SUBJECT_CASES]
        if "--out" in options:
            right_kind = "out is a file" if _out_is_file(parser) else "out is a folder"
            names += [("out", c) for c in OUT_CASES if c != right_kind]
        names += [("numeric", c) for c, (o, _) in NUMERIC_CASES.items() if o in options]
        if _engine_option(parser):
            names += [("engine", c) for c in ENGINE_CASES]
        for group, case in names:
            why = NOT_APPLICABLE.get((command, group)) or NOT_APPLICABLE.get((command, case))
            marks = [pytest.mark.skip(reason=f"not applicable: {why}")] if why else []
            params.append(pytest.param(command, group, case, marks=marks, id=f"{command}: {case}"))
    return params


# Running one case ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    code: int
    out: str
    err: str
    parser_exit: bool  # argparse refused the command line (SystemExit)


def _run(argv: list[str], capsys) -> Outcome:
    try:
        code, parser_exit = main(argv), False
    except SystemExit as stop:
        code, parser_exit = (stop.code if isinstance(stop.code, int) else 2), True
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err, parser_exit)


def _snapshot(*folders: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file below ``folders`` (except below ``skip``): its size and mtime."""
    files = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if skip is not None and (path == skip or skip in path.parents):
                continue
            if path.is_file() or path.is_dir():
                info = path.stat()
                files[str(path)] = (info.st_size if path.is_file() else -1, info.st_mtime_ns)
    return files


def _argv(
    command: str, kit: Kit, tmp_path: Path, *, manifest: Path, out: Path, engine: Path | None
) -> tuple[list[str], dict[str, list[str]]]:
    """A command line that works on ``manifest`` (tiny settings), writing to ``out``."""
    parser = COMMANDS[command]
    options = _options(parser)
    argv: list[str] = command.split()
    for dest in _positionals(parser):
        if dest in ("manifest", "source"):
            argv.append(str(manifest))
        elif dest == "target":  # segmentation adapt's second dataset
            argv.append(str(kit.cohort))
        elif dest == "study":
            study = {
                "manifest": str(manifest),
                "out": str(out),
                "engines": {
                    "baseline": {
                        "engine": "linear_baseline",
                        "settings": {"covariates": ["age"]},
                        "predict_on": ["C"],
                    }
                },
            }
            path = tmp_path / "study.yaml"
            path.write_text(yaml.safe_dump(study), encoding="utf-8")
            argv.append(str(path))
        elif dest == "zips":  # "missing manifest" stands for a missing zip
            missing = not manifest.exists()
            zips = manifest.parent / "1000001_20201_2_0.zip" if missing else tmp_path / "zips"
            zips.parent.mkdir(exist_ok=True)
            argv.append(str(zips))
    given: dict[str, list[str]] = {}
    for name, action in options.items():
        if name == "--out":
            given[name] = [str(out)]
        elif name == _engine_option(parser):
            given[name] = [str(engine)]
        elif name == "--templates" and action.required:
            given[name] = [str(kit.templates)]
        elif name == "--reference":
            given[name] = [str(manifest)]
        elif name == "--predictions":
            given[name] = [str(kit.predictions)]
        elif name == "--model" and action.choices is not None and "small_cnn" in action.choices:
            given[name] = ["small_cnn"]
        elif name in TINY and (action.choices is None or TINY[name][0] in action.choices):
            given[name] = TINY[name]
    if command == "compare":
        given["--no-report"] = []
    if command.startswith("baseline") and "--covariates" in options:
        given["--covariates"] = ["age"]
    return argv, given


def _render(argv: list[str], given: dict[str, list[str]]) -> list[str]:
    return [*argv, *(part for name, values in given.items() for part in (name, *values))]


def _damaged_engine(kit: Kit, command: str, case: str, tmp_path: Path) -> Path:
    copy = tmp_path / "engine"
    shutil.copytree(kit.engines[ENGINE_OF[command.split()[0]]], copy)
    if case == "engine garbage JSON":
        for path in copy.glob("*.json"):
            path.write_bytes(b"{not json")
    else:
        weights = list(copy.glob("*.safetensors"))
        if not weights:
            pytest.skip("not applicable: this engine saves no safetensors file")
        for path in weights:
            _truncate(path)
    return copy


def _tables(out: Path) -> list[pd.DataFrame]:
    """The predictions tables written below (or at) ``out``."""
    paths = [out] if out.is_file() else sorted(out.rglob("*.csv")) if out.is_dir() else []
    tables = []
    for path in paths:
        if path.suffix != ".csv":
            continue
        frame = pd.read_csv(path, dtype={"subject_id": str})
        if {"subject_id", "method", "target", "value", "status"} <= set(frame.columns):
            tables.append(frame)
    return tables


def _prefixes(command: str) -> tuple[str, ...]:
    """How an error line starts: argparse names the whole command, ``liverfat`` its group."""
    return (f"liverfat {command}: error: ", f"liverfat {command.split()[0]}: error: ")


def _assert_one_line_refusal(result: Outcome, command: str, case: str) -> None:
    text = result.out + result.err
    assert "Traceback" not in text, text
    lines = [line for line in result.err.splitlines() if line.strip()]
    if result.parser_exit:  # argparse: usage block, then one error line
        assert result.code == 2, text
        assert lines and lines[-1].startswith(_prefixes(command)), result.err
        assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), result.err
        return
    if result.code == 1 and command in EXIT_ONE:  # a problem list: one line each, then a count
        assert lines and lines[-1].endswith(f"{len(lines) - 1} problem(s)"), result.err
        return
    assert result.code == 2, f"exit {result.code} for {case}: {text}"
    assert len(lines) == 1, result.err
    assert lines[0].startswith(_prefixes(command)), result.err


def _assert_subject_fails_alone(result: Outcome, command: str, case: str, out: Path) -> None:
    text = result.out + result.err
    assert "Traceback" not in text, text
    allowed = {0, 1} if command in EXIT_ONE else {0}
    assert result.code in allowed, f"exit {result.code}: {text}"
    rows = [t[t["subject_id"] == SUBJECT] for t in _tables(out)]
    rows = pd.concat(rows) if rows else pd.DataFrame(columns=["status", "message", "value"])
    failed = rows[rows["status"] == "failed"]
    assert failed["message"].astype(str).str.contains(SUBJECT).all(), failed
    named = SUBJECT in text or not failed.empty
    if case in MASK_CASES and command not in USES_OWN_MASK:
        # a command that does not need the subject's own mask may finish that subject cleanly
        fine = rows[rows["status"] != "failed"]
        assert np.isfinite(fine["value"].astype(float)).all(), fine
        return
    assert named, f"{SUBJECT} not named: {text}"
    if not rows.empty:
        assert (rows["status"] == "failed").all(), rows


@pytest.mark.parametrize(("command", "group", "case"), _cases())
def test_bad_input(command, group, case, kit, tmp_path, capsys, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a relative path written by mistake lands here, and is caught
    if command == "serve":  # a damaged engine must never get as far as serving
        import liverfat.segmentation.server as server

        def refuse(*args, **kwargs):
            raise AssertionError("serve got past loading a damaged engine")

        monkeypatch.setattr(server, "bind_socket", refuse)

    manifest = kit.cohort
    if group == "manifest":
        manifest = MANIFEST_CASES[case](_copy_cohort(kit, tmp_path))
    elif group == "subject":
        manifest = SUBJECT_CASES[case](_keep_subjects(_copy_cohort(kit, tmp_path), BATCH))
    engine_name = ENGINE_OF.get(command.split()[0])
    engine = kit.engines.get(engine_name) if engine_name else None
    if group == "engine":
        engine = _damaged_engine(kit, command, case, tmp_path)
    outs = tmp_path / "outs"
    outs.mkdir()
    writes_file = "--out" in _options(COMMANDS[command]) and _out_is_file(COMMANDS[command])
    out = outs / ("result.csv" if writes_file else "result")
    if group == "out":
        occupied = tmp_path / "occupied"
        occupied.write_text("a file, not a folder", encoding="utf-8")
        if case == "out below a file":
            out = occupied / out.name
        elif case == "out is a file":
            out = occupied
        elif case == "out is a folder":
            out = tmp_path / "a_folder"
            out.mkdir()
        else:
            locked = tmp_path / "locked"
            locked.mkdir()
            locked.chmod(0o500)
            if os.access(locked, os.W_OK):  # root writes anywhere
                pytest.skip("a read-only folder is writable here (running as root)")
            out = locked / out.name
    argv, given = _argv(command, kit, tmp_path, manifest=manifest, out=out, engine=engine)
    if group == "numeric":
        option, value = NUMERIC_CASES[case]
        action = _options(COMMANDS[command])[option]
        if value == "0" and getattr(action.type, "__name__", "") == "non_negative_int":
            value = "-1"  # 0 is documented there (--folds 0: none)
        if option == "--device" and _cuda_devices() > 7:
            pytest.skip("this machine has a cuda:7")
        given[option] = [value]

    inputs = _snapshot(tmp_path, skip=outs)
    shared = _snapshot(kit.root)
    result = _run(_render(argv, given), capsys)
    if group == "subject":
        _assert_subject_fails_alone(result, command, case, out)
    else:
        _assert_one_line_refusal(result, command, case)
    assert _snapshot(tmp_path, skip=outs) == inputs, "written outside --out"
    assert _snapshot(kit.root) == shared, "written into the shared cohort or a saved engine"
    assert not any(cwd.iterdir()), f"written into the working folder: {list(cwd.iterdir())}"


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.parametrize("command", [c for c, p in COMMANDS.items() if "--out" in _options(p)])
def test_out_kind_is_declared(command):
    """A command whose ``--out`` is a file says so (``out_is_file``), so that ``liverfat`` refuses
    an existing folder there, and an existing file where a folder is written, before any work."""
    parser = COMMANDS[command]
    assert bool(parser.get_default("out_is_file")) == _out_is_file(parser)
