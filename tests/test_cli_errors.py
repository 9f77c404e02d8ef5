"""Damaged inputs and unusable paths end in one line and exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from liverfat.cli import main
from liverfat.segmentation.engine import SegmentationEngine

TINY = {"features": (4, 4, 4, 4, 4, 4), "iterations": 1, "batch_size": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def saved_unet(tmp_path_factory, phantom_manifest) -> Path:
    folder = tmp_path_factory.mktemp("unet") / "engine"
    train = phantom_manifest.select(subject_ids=phantom_manifest.subject_ids[:2])
    SegmentationEngine(**TINY).fit(train).save(folder)
    return folder


def _damaged(saved: Path, tmp_path: Path, name: str, damage) -> Path:
    copy = tmp_path / name
    copy.mkdir()
    for path in saved.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    damage(copy)
    return copy


DAMAGES = {
    "garbage engine.json": lambda d: (d / "engine.json").write_bytes(b"{not json"),
    "truncated engine.json": lambda d: (d / "engine.json").write_bytes(
        (d / "engine.json").read_bytes()[:40]
    ),
    "non-UTF-8 engine.json": lambda d: (d / "engine.json").write_bytes(b"\xff\xfe\x00garbage"),
    "truncated network": lambda d: (d / "network.safetensors").write_bytes(
        (d / "network.safetensors").read_bytes()[:100]
    ),
    "missing network": lambda d: (d / "network.safetensors").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("command", ["segmentation", "deep"])
def test_a_damaged_saved_engine_is_one_line(
    damage, command, saved_unet, phantom_dir, tmp_path, capsys
):
    engine = _damaged(saved_unet, tmp_path, "engine", DAMAGES[damage])
    argv = [command, "predict", str(phantom_dir), "--engine", str(engine), "--out"]
    code = main([*argv, str(tmp_path / ("out" if command == "segmentation" else "p.csv"))])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"liverfat {command}: error: ")


def test_a_garbage_study_file_and_an_out_that_is_a_file(phantom_dir, tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("engines: [unclosed\n  - : :\n", encoding="utf-8")
    assert main(["run", str(study)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    occupied = tmp_path / "occupied"
    occupied.write_text("a file, not a folder", encoding="utf-8")
    code = main(["phantom", "--n", "1", "--scale", "quarter", "--out", str(occupied)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_an_unusable_out_fails_before_any_work(phantom_dir, tmp_path, capsys):
    occupied = tmp_path / "occupied"
    occupied.write_text("a file, not a folder", encoding="utf-8")
    argv = ["segmentation", "fit", str(phantom_dir), "--iterations", "100000"]
    assert main([*argv, "--out", str(occupied / "engine")]) == 2  # would train for hours
    err = capsys.readouterr().err
    assert f"{occupied} is a file, not a folder" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["phantom", "--n", "0", "--out", "x"],
        ["phantom", "--noise-floor", "nan", "--out", "x"],
        ["phantom", "--swap-fraction", "2", "--out", "x"],
        ["demo", "--n", "0"],
        ["deep", "cv", "m", "--learning-rate", "nan", "--out", "x"],
        ["segmentation", "fit", "m", "--workers", "-2", "--out", "x"],
        ["segmentation", "fit", "m", "--device", "cuda:7", "--out", "x"],
        ["deep", "fit", "m", "--device", "gpu", "--out", "x"],
        ["atlas", "templates", "m", "--n", "0", "--out", "x"],
        ["compare", "--reference", "r", "--predictions", "p", "--bootstrap", "-5", "--out", "x"],
    ],
    ids=lambda a: " ".join(a[:3]),
)
def test_nonsense_values_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: argument" in err, err
