"""The shared command-line helpers, and every subcommand's choices."""

from __future__ import annotations

import argparse
import sys

import pytest

from liverfat.atlas.fusion import FUSIONS
from liverfat.atlas.registration import BACKENDS
from liverfat.cli import build_parser
from liverfat.cli_common import (
    LazyChoices,
    add_executor_args,
    add_manifest_args,
    executor_settings,
    load_manifest,
)
from liverfat.errors import ManifestError
from liverfat.parallel import EXECUTORS


def _parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_executor_args(parser, **kwargs)
    return parser


def test_executor_options_and_settings():
    args = _parser(workers=2).parse_args([])
    assert executor_settings(args) == {"executor": "processes", "n_workers": 2}
    args = _parser(default="serial", scheduler=True).parse_args(["--workers", "3"])
    assert executor_settings(args) == {"executor": "serial", "n_workers": 3, "scheduler": None}
    args = _parser(default=None).parse_args([])  # keep a saved engine's
    assert executor_settings(args) == {"executor": None, "n_workers": None}
    with pytest.raises(argparse.ArgumentError):
        _parser().parse_args(["--executor", "threads"])


def test_load_manifest_split_and_data_root(phantom_dir, tmp_path):
    parser = argparse.ArgumentParser()
    add_manifest_args(parser, split=True, data_root=True)
    everyone = load_manifest(parser.parse_args([str(phantom_dir)]))
    split_a = load_manifest(parser.parse_args([str(phantom_dir), "--split", "A"]))
    assert len(everyone) == 20
    assert 0 < len(split_a) < 20
    assert (split_a.subjects["split"] == "A").all()
    assert split_a.subject_ids == everyone.select(split="A").subject_ids
    moved = load_manifest(
        parser.parse_args([str(phantom_dir / "manifest.yaml"), "--data-root", str(tmp_path)])
    )
    assert moved.root == tmp_path.resolve()
    with pytest.raises(ManifestError):
        load_manifest(parser.parse_args([str(tmp_path / "nowhere.yaml")]))


def test_lazy_choices_read_once_and_when_needed():
    calls = []

    def names():
        calls.append(1)
        return ["b", "a"]

    choices = LazyChoices(names)
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--pick", choices=choices, metavar="PICK", help="%(choices)s")
    assert calls == []  # building the parser reads nothing
    assert parser.parse_args(["--pick", "a"]).pick == "a"
    assert "b, a" in parser.format_help()
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        parser.parse_args(["--pick", "c"])
    assert calls == [1] and list(choices) == ["b", "a"] and len(choices) == 2


def _actions(parser: argparse.ArgumentParser, path: str = "liverfat"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_choice_resolves_and_building_imports_no_torch():
    """Each subcommand's choices come from the package (a moved constant fails here)."""
    had_torch = "torch" in sys.modules
    parser = build_parser()
    if not had_torch:
        assert "torch" not in sys.modules
    found = {}
    for path, action in _actions(parser):
        if action.choices is not None:
            values = list(action.choices)
            assert values and all(isinstance(v, str) for v in values), (path, action.dest)
            if action.default is not None and action.dest != "help":
                assert action.default in values or action.nargs == "+", (path, action.dest)
            found[(path, action.dest)] = values
    assert found[("liverfat atlas register", "backend")] == list(BACKENDS)
    assert found[("liverfat atlas calibrate", "fusion")] == list(FUSIONS)
    assert found[("liverfat radiomics predict", "executor")] == list(EXECUTORS)
    assert "small_cnn" in found[("liverfat deep cv", "model")]
    assert found[("liverfat deep fit", "profile")] == ["paper", "cpu", "quick", "auto"]
    assert found[("liverfat phantom", "scale")] == ["full", "half", "quarter"]
