"""The deep engine: contract, calibration, resuming, CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from liverfat.cli import main as cli_main
from liverfat.deep.engine import DeepEngine
from liverfat.deep.profiles import PROFILES
from liverfat.deep.uncertainty import apply_variance_scale, variance_scale_from
from liverfat.errors import LiverfatError
from liverfat.testing import check_engine

TINY = {"model": "small_cnn", "iterations": 4, "batch_size": 4, "input_scale": 0.25}


def test_conformance(phantom_manifest, tmp_path):
    check_engine(
        lambda: DeepEngine(**TINY, work_dir=str(tmp_path / "work")),
        phantom_manifest,
        tmp_path,
        targets=["liver_pdff_pct"],
    )


def test_validation_is_early_and_clear():
    with pytest.raises(LiverfatError, match="unknown model"):
        DeepEngine(model="vgg")
    with pytest.raises(LiverfatError, match="unknown head"):
        DeepEngine(head="quantile")
    with pytest.raises(LiverfatError, match="unknown format"):
        DeepEngine(format="axial")
    settings, scale, _ = DeepEngine(profile="paper").resolved()
    assert (settings.iterations, settings.batch_size, scale) == (6000, 32, 1.0)
    assert DeepEngine(profile="paper").model_name == "resnet50"
    settings, scale, _ = DeepEngine(profile="quick", iterations=7).resolved()
    assert settings.iterations == 7 and scale == 0.5 and settings.max_shift_px == 8
    cpu = DeepEngine(profile="cpu", model="small_cnn", nll_beta=0.0)
    settings, scale, _ = cpu.resolved()
    assert cpu.model_name == "small_cnn" and settings.nll_beta == 0.0  # explicit values win
    assert settings.balance_bins == PROFILES["cpu"]["balance_bins"] and scale == 0.25
    # the default: cpu on every device; auto: the paper profile on a CUDA GPU, cpu elsewhere
    assert DeepEngine().model_name == PROFILES["cpu"]["model"]
    assert DeepEngine(device="cuda").profile_settings()["profile"] == "cpu"
    assert DeepEngine(profile="auto", device="cuda").profile_settings()["profile"] == "paper"
    assert DeepEngine(profile="auto", device="cpu").model_name == PROFILES["cpu"]["model"]
    assert PROFILES["paper"]["model"] != PROFILES["cpu"]["model"]  # so the check can fail


def test_fat_scaling_only_where_it_scales_every_target():
    cpu_range = tuple(PROFILES["cpu"]["fat_scale_range"])
    settings, _, _ = DeepEngine().resolved()
    assert settings.fat_scale_range == cpu_range  # the cpu profile, liver fat on liverfat
    for elsewhere in (
        {"targets": ["liver_pdff_pct", "liver_volume_ml"]},  # a volume does not scale with fat
        {"format": "projection"},  # whose first channel is a water projection
        {"target_transform": "log"},
    ):
        assert DeepEngine(**elsewhere).resolved()[0].fat_scale_range is None
        with pytest.raises(LiverfatError, match="fat_scale_range needs"):
            DeepEngine(**elsewhere, fat_scale_range=(0.5, 2.0))
    assert DeepEngine(fat_scale_range=(1, 1)).resolved()[0].fat_scale_range is None
    assert DeepEngine(profile="paper").resolved()[0].fat_scale_range is None
    with pytest.raises(LiverfatError, match="low <= high"):
        DeepEngine(fat_scale_range=(2.0, 1.0))


def test_multi_target_with_missing_values(phantom_manifest, tmp_path):
    targets = ["liver_pdff_pct", "liver_volume_ml", "vat_volume_ml", "asat_volume_ml"]
    train = phantom_manifest.select(split="A")
    rng = np.random.default_rng(0)
    for t in targets:
        train.subjects.loc[rng.uniform(size=len(train)) < 0.3, t] = np.nan
    engine = DeepEngine(**TINY, targets=targets, work_dir=str(tmp_path)).fit(train)
    assert np.allclose(engine.target_mean_, [np.nanmean(train.subjects[t]) for t in targets])
    table = engine.predict(phantom_manifest)
    assert set(table.targets) == set(targets)
    assert (table.frame["status"] == "ok").all() and (table.frame["std"] > 0).all()


def test_variance_scale_by_hand():
    frame = pd.DataFrame(
        {
            "subject_id": ["a", "b", "c"],
            "target": "t",
            "value": [0.0, 0.0, 0.0],
            "std": [1.0, 2.0, 1.0],
            "status": "ok",
            "lower": np.nan,
            "upper": np.nan,
        }
    )
    reference = {"t": pd.Series({"a": 2.0, "b": 2.0, "c": 1.0})}
    # |z| = 2, 1, 1: the conformal quantile of 3 rows is their largest; robust: the median
    quantile = variance_scale_from(frame, reference, method="quantile")["t"]
    assert quantile == pytest.approx((2 / 1.959964) ** 2)
    assert variance_scale_from(frame, reference)["t"] == pytest.approx((1 / 0.6744898) ** 2)
    scale = variance_scale_from(frame, reference, method="gaussian")["t"]
    assert scale == pytest.approx((4 + 1 + 1) / 3)
    out = apply_variance_scale(frame, {"t": scale})
    assert out["std"].tolist() == pytest.approx([np.sqrt(2), 2 * np.sqrt(2), np.sqrt(2)])
    assert out["upper"].iloc[0] == pytest.approx(1.959964 * np.sqrt(2), rel=1e-5)


def test_cross_validation_resumes_from_finished_folds(phantom_manifest, tmp_path, monkeypatch):
    train = phantom_manifest.select(split="A")
    make = lambda: DeepEngine(**TINY, work_dir=str(tmp_path / "work"))  # noqa: E731
    first = make().cross_validate(train, folds=3, seed=1)
    cv = tmp_path / "work" / "cv"
    assert sorted(p.name for p in cv.glob("fold*.csv")) == [
        "fold00.csv",
        "fold01.csv",
        "fold02.csv",
    ]
    (cv / "fold01.csv").unlink()  # as if interrupted during fold 1
    calls = []
    original = DeepEngine._run_fold
    monkeypatch.setattr(
        DeepEngine, "_run_fold", lambda self, *a: calls.append(a[3]) or original(self, *a)
    )
    second = make().cross_validate(train, folds=3, seed=1)
    assert len(calls) == 1  # only the missing fold was trained again
    pd.testing.assert_frame_equal(first.frame, second.frame)
    assert set(first.frame["subject_id"]) == set(train.target("liver_pdff_pct").dropna().index)
    assert "liver_pdff_pct" in first.run["variance_scale"]


def test_cli_cv_fit_predict_saliency(phantom_dir, tmp_path, capsys):
    common = [
        "--model",
        "small_cnn",
        "--iterations",
        "3",
        "--batch-size",
        "4",
        "--input-scale",
        "0.25",
        "--cache",
        str(tmp_path / "cache"),
    ]
    assert (
        cli_main(
            [
                "deep",
                "format",
                str(phantom_dir),
                "--out",
                str(tmp_path / "cache"),
                "--executor",
                "serial",
                "--png",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "cache").glob("*.liverfat.png"))) == 20
    assert (
        cli_main(
            [
                "deep",
                "cv",
                str(phantom_dir),
                "--split",
                "A",
                "--folds",
                "2",
                "--out",
                str(tmp_path / "cv"),
                *common,
            ]
        )
        == 0
    )
    metrics = pd.read_csv(tmp_path / "cv" / "metrics.csv")
    assert set(metrics["method"]) == {"deep_small_cnn"}
    assert (
        cli_main(
            [
                "deep",
                "fit",
                str(phantom_dir),
                "--split",
                "A",
                "--out",
                str(tmp_path / "e"),
                "--calibration",
                str(tmp_path / "cv" / "oof.csv"),
                *common,
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "deep",
                "predict",
                str(phantom_dir),
                "--split",
                "B",
                "--engine",
                str(tmp_path / "e"),
                "--out",
                str(tmp_path / "b.csv"),
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "deep",
                "saliency",
                str(phantom_dir),
                "--split",
                "C",
                "--engine",
                str(tmp_path / "e"),
                "--out",
                str(tmp_path / "s"),
                "--per-subject",
            ]
        )
        == 0
    )
    assert (tmp_path / "s" / "saliency_mean.png").stat().st_size > 1000
    subjects = json.loads((tmp_path / "s" / "saliency.json").read_text(encoding="utf-8"))
    assert subjects["subjects"]
    assert all((tmp_path / "s" / f"{sid}.png").is_file() for sid in subjects["subjects"])
    # the written numbers are the engine's: calibration from the cv table, saliency of split C
    from liverfat.data.manifest import Manifest
    from liverfat.data.predictions import PredictionsTable
    from liverfat.deep.saliency import cohort_saliency

    engine = DeepEngine.load(tmp_path / "e")
    scale = PredictionsTable.read(tmp_path / "cv" / "oof.csv").run["variance_scale"]
    assert engine.variance_scale_.tolist() == pytest.approx([scale["liver_pdff_pct"]])
    assert scale["liver_pdff_pct"] != pytest.approx(1.0)
    expected = cohort_saliency(engine, Manifest.load(phantom_dir).select(split="C"))
    assert subjects["subjects"] == list(expected.maps)
    for name, attribute in (("mean", "mean"), ("sensitivity", "sensitivity_mean")):
        written = np.load(tmp_path / "s" / f"saliency_{name}.npy")
        assert written == pytest.approx(getattr(expected, attribute).astype(np.float32), abs=1e-5)
    assert written.max() > 0  # the sensitivity map, non-zero even after 3 iterations
    mean = np.load(tmp_path / "s" / "saliency_mean.npy")
    assert mean.min() >= 0 and mean.max() <= 1
    assert (
        cli_main(
            [
                "deep",
                "predict",
                str(phantom_dir),
                "--engine",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "x.csv"),
            ]
        )
        == 2
    )
    assert "no engine.json" in capsys.readouterr().err


def test_a_loaded_engine_keeps_the_profile_it_was_trained_with(
    phantom_manifest, tmp_path, monkeypatch
):
    """Trained where ``auto`` means ``cpu`` (quarter-size input), loaded where it would mean
    ``paper`` (full size): the loaded engine still predicts at the scale it was trained at."""
    import liverfat.deep.engine as deep_engine

    train = phantom_manifest.select(split="A")
    engine = DeepEngine(
        profile="auto", model="small_cnn", iterations=3, batch_size=4, work_dir=str(tmp_path / "w")
    )
    expected = engine.fit(train).predict(phantom_manifest).frame
    engine.save(tmp_path / "saved")
    real = deep_engine.resolve_profile
    monkeypatch.setattr(deep_engine, "resolve_profile", lambda p, _d, e: real(p, "cuda", e))
    fresh = DeepEngine(profile="auto", model="small_cnn")
    assert fresh.resolved()[1] == 1.0  # a fresh engine would go full size
    loaded = DeepEngine.load(tmp_path / "saved")
    assert loaded.resolved()[1] == 0.25
    again = loaded.predict(phantom_manifest).frame
    pd.testing.assert_frame_equal(
        expected[["subject_id", "value", "std"]], again[["subject_id", "value", "std"]]
    )


def test_log_target_gives_skewed_intervals_above_minus_one_and_survives_save(
    phantom_manifest, tmp_path
):
    train = phantom_manifest.select(split="A")
    engine = DeepEngine(**TINY, target_transform="log", work_dir=str(tmp_path / "w")).fit(train)
    y = np.log1p(train.target("liver_pdff_pct").dropna().to_numpy())
    assert engine.target_mean_[0] == pytest.approx(y.mean())  # standardised in log space
    frame = engine.predict(phantom_manifest).frame
    assert (frame["lower"] > -1).all()
    assert ((frame["upper"] - frame["value"]) > (frame["value"] - frame["lower"])).all()
    engine.save(tmp_path / "saved")
    loaded = DeepEngine.load(tmp_path / "saved")
    assert loaded.transform == "log"
    again = loaded.predict(phantom_manifest).frame
    np.testing.assert_allclose(again["upper"], frame["upper"])


def test_values_and_bounds_are_kept_inside_the_cards_range(phantom_manifest, tmp_path):
    assert phantom_manifest.target_range("liver_pdff_pct") == (0.0, 100.0)
    assert phantom_manifest.target_range("no_such_target") == (-np.inf, np.inf)
    engine = DeepEngine(**TINY, work_dir=str(tmp_path / "w")).fit(phantom_manifest)
    formats, _ = engine.load_formats(phantom_manifest)
    values, _, lower, _ = engine.predict_arrays(np.stack(list(formats.values())))
    assert (lower < 0).any()  # the network's own bounds leave the range: the table's may not
    frame = engine.predict(phantom_manifest).frame
    assert (frame["lower"] >= 0).all() and (frame["upper"] <= 100).all()
    middle = float(np.median(values))
    card = phantom_manifest.card
    entry = {**card["targets"]["liver_pdff_pct"], "range": [middle, 100.0]}
    narrow = dataclasses.replace(  # a card whose floor half the values are under
        phantom_manifest, card={**card, "targets": {**card["targets"], "liver_pdff_pct": entry}}
    )
    frame = engine.predict(narrow).frame
    values, lower = frame["value"], frame["lower"]
    assert values.min() == middle and (lower >= middle).all() and (values == middle).sum() > 1
    oof = DeepEngine(**TINY).cross_validate(phantom_manifest.select(split="A"), folds=2).frame
    assert (oof["lower"] >= 0).all() and (oof["upper"] <= 100).all()  # clipped once calibrated
