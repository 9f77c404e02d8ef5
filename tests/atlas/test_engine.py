"""The atlas engine: conformance, resumable Dask batches that survive a killed worker, CLI."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from liverfat.atlas.engine import AtlasEngine
from liverfat.testing import check_engine

FAST = {
    "affine_levels": [2],
    "affine_iterations": 15,
    "deformable_levels": [2],
    "deformable_iterations": 10,
}


def small_engine(**kwargs) -> AtlasEngine:
    settings = dict(
        backend="torch",
        n_templates=2,
        erosion_diameter_voxels=3,
        min_voxels=5,
        backend_options=FAST,
    )
    settings.update(kwargs)
    return AtlasEngine(**settings)


@pytest.mark.slow
def test_conformance(phantom_manifest, tmp_path):
    check_engine(lambda: small_engine(), phantom_manifest, tmp_path, targets=["liver_pdff_pct"])


def test_constructor_validates():
    with pytest.raises(Exception, match="unknown backend"):
        AtlasEngine(backend="nope")
    with pytest.raises(Exception, match="unknown fusion"):
        AtlasEngine(fusion="mean")


def test_workers_are_told_where_the_registrations_run():
    """map_subjects caps workers sharing a GPU from this: the torch backend's device as the
    backend itself resolves it; None for the CPU-only backends."""
    pytest.importorskip("torch")
    from liverfat.nn.device import pick_device

    assert small_engine(backend_options={"device": "cuda:1"})._device() == "cuda:1"
    assert small_engine(backend_options={"device": "cpu"})._device() == "cpu"
    assert small_engine(backend_options=None)._device() == str(pick_device("auto"))
    assert small_engine(backend="elastix")._device() is None


def test_dask_batch_survives_killed_worker_and_resumes(phantom_manifest, tmp_path):
    from distributed import Client, LocalCluster

    manifest = phantom_manifest.select(subject_ids=phantom_manifest.subject_ids[:6])
    work = tmp_path / "work"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        engine = small_engine(
            executor="dask",
            scheduler=cluster.scheduler_address,
            work_dir=work,
            calibrate=False,
            templates=manifest.subject_ids[:2],
        )
        engine.fit(manifest)
        pids = list(client.run(os.getpid).values())
        killed = []

        def kill_when_first_result_lands():
            deadline = time.time() + 300
            while time.time() < deadline and not killed:
                if any(work.glob("*.json")):
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_first_result_lands)
        killer.start()
        first = engine.raw_readout(manifest)
        killer.join()
        assert killed, "no worker was killed"
        # A subject in flight on the killed worker (or whose result was held in its memory) may
        # fail; every subject that finished has its result file, written atomically.
        finished = {p.name: p.stat().st_mtime_ns for p in work.glob("*.json")}
        n_ok = int((first["status"] != "failed").sum())
        assert len(finished) >= n_ok >= len(manifest) - 2
        again = engine.raw_readout(manifest)
    assert (again["status"] != "failed").all(), again[["status", "message"]]
    assert len(list(work.glob("*.json"))) == len(manifest)  # nothing lost after the rerun
    for name, stamp in finished.items():  # and nothing that had finished was redone
        assert (work / name).stat().st_mtime_ns == stamp
    done_first = first["status"] != "failed"
    assert again.loc[done_first, "value"].tolist() == first.loc[done_first, "value"].tolist()


def test_cli_templates_calibrate_predict(phantom_dir, tmp_path):
    from liverfat.cli import main

    card = str(phantom_dir / "manifest.yaml")
    templates = tmp_path / "templates.json"
    assert main(["atlas", "templates", card, "--n", "2", "--out", str(templates)]) == 0
    chosen = json.loads(templates.read_text(encoding="utf-8"))["templates"]
    assert len(chosen) == 2
    options = json.dumps(FAST)
    common = [
        "--backend",
        "torch",
        "--executor",
        "serial",
        "--erosion-voxels",
        "3",
        "--options",
        options,
    ]
    engine_dir = tmp_path / "engine"
    assert (
        main(
            [
                "atlas",
                "calibrate",
                card,
                "--split",
                "C",
                "--n-templates",
                "2",
                "--out",
                str(engine_dir),
                *common,
            ]
        )
        == 0
    )
    out = tmp_path / "pred.csv"
    assert (
        main(
            [
                "atlas",
                "predict",
                card,
                "--split",
                "C",
                "--engine",
                str(engine_dir),
                "--out",
                str(out),
                "--workers",
                "1",
                "--work-dir",
                str(tmp_path / "predict_work"),
            ]
        )
        == 0
    )
    from liverfat.data.predictions import PredictionsTable

    table = PredictionsTable.read(out)
    assert len(table.frame) == 4 and table.methods == ["atlas-torch"]
    assert len(list((tmp_path / "predict_work").glob("*.json"))) == 4  # --work-dir was used
    import pandas as pd

    details = pd.read_csv(tmp_path / "pred_readout.csv")  # the phantom has true masks: purity
    assert details["subject_id"].tolist() == table.frame["subject_id"].tolist()
    assert details["purity"].between(0.5, 1.0).all(), details["purity"]
    assert (details["eroded_volume_ml"] < details["fused_volume_ml"]).all()
    saved = json.loads((engine_dir / "atlas_engine.json").read_text(encoding="utf-8"))
    assert set(details["templates"]) == {" ".join(saved["templates_"])}
    assert (
        main(["atlas", "predict", card, "--engine", str(tmp_path / "missing"), "--out", str(out)])
        == 2
    )
    # predicting the calibration subjects from calibrate's own work folder registers nothing
    # again, although the saved engine's templates are copies with other paths and mtimes
    calibrated = {p: p.stat().st_mtime_ns for p in (engine_dir / "work").glob("*.json")}
    assert len(calibrated) == 2  # split C less the two templates
    again = ["atlas", "predict", card, "--split", "C", "--engine", str(engine_dir)]
    again += ["--out", str(tmp_path / "again.csv"), "--work-dir", str(engine_dir / "work")]
    assert main(again) == 0
    after = {p: p.stat().st_mtime_ns for p in (engine_dir / "work").glob("*.json")}
    assert len(after) == 4 and {p: after[p] for p in calibrated} == calibrated
    reread = PredictionsTable.read(tmp_path / "again.csv").frame
    assert reread["value"].tolist() == table.frame["value"].tolist()


def test_chaos_leave_one_out_single_target(shared_data):
    """Real anatomy: 3 CHAOS templates registered to subject 2 beat centring alone."""
    import SimpleITK as sitk

    from liverfat.atlas.fusion import fuse
    from liverfat.atlas.images import align_centres, load_subject
    from liverfat.atlas.registration import BackendSettings, register
    from liverfat.data.manifest import Manifest
    from tests.atlas.test_registration import dice

    folder = Path(shared_data) / "chaos_mr_t2spir"
    if not folder.is_dir():
        pytest.skip("chaos_mr_t2spir not in shared data")
    card = Path(__file__).resolve().parents[2] / "data_manifests" / "chaos_mr_t2spir"
    chaos = Manifest.load(card, data_root=folder)

    def load(sid):
        return load_subject(chaos, f"chaos{sid}", with_liver=True)

    fixed = load("2")
    settings = BackendSettings(working_spacing_mm=(5.0, 5.0, 7.7), extra=FAST)
    warped, centred = [], []
    for sid in ("1", "5", "13"):
        moving = align_centres(fixed, load(sid))
        centred.append(
            sitk.Resample(moving.liver, fixed.reference, sitk.Transform(), sitk.sitkNearestNeighbor)
        )
        warped.append(register("torch", fixed, moving, settings).warped_mask)
    before = dice(fuse(centred, "majority"), fixed.liver)
    after = dice(fuse(warped, "majority"), fixed.liver)
    assert after > 0.7 and after > before, (before, after)


def test_cross_validation_registers_each_subject_once_to_the_same_templates(
    phantom_manifest, monkeypatch
):
    """Without a work_dir, the folds share one scratch folder: a subject calibrated on in one
    fold and tested in another is registered once, not once per fold."""
    from liverfat.atlas import jobs

    calls = []
    register_many = jobs.register_many

    def counted(backend, target, templates, settings):
        calls.append(target.subject_id)
        return register_many(backend, target, templates, settings)

    monkeypatch.setattr(jobs, "register_many", counted)
    unscored = phantom_manifest.target("liver_pdff_pct").isna()
    templates = list(unscored[unscored].index[:2])  # in every fold's training part
    scored = list(unscored[~unscored].index[:6])
    manifest = phantom_manifest.select(subject_ids=templates + scored)
    engine = small_engine(templates=templates, executor="serial")
    oof = engine.cross_validate(manifest, folds=2)
    assert sorted(oof.frame["subject_id"]) == sorted(scored)
    assert sorted(calls) == sorted(scored)


def test_cached_readout_is_not_reused_when_the_backend_defaults_change(
    phantom_manifest, monkeypatch
):
    from liverfat.atlas import registration
    from liverfat.atlas.jobs import SubjectJob
    from liverfat.atlas.registration import BackendSettings

    sid = phantom_manifest.subject_ids[0]
    templates = phantom_manifest.select(subject_ids=phantom_manifest.subject_ids[1:3])
    job = SubjectJob(phantom_manifest, sid, templates, "torch", BackendSettings())
    before = job.key()
    assert SubjectJob(phantom_manifest, sid, templates, "torch", BackendSettings()).key() == before
    monkeypatch.setitem(registration.TORCH_DEFAULTS, "deformable_iterations", 999)
    assert job.key() != before


def test_calibrating_on_nothing_but_failures_is_an_error(phantom_dir, tmp_path, capsys):
    from liverfat.cli import main

    card = str(phantom_dir / "manifest.yaml")
    bad = json.dumps({**FAST, "affine_iterations": "abc"})
    argv = ["atlas", "calibrate", card, "--backend", "torch", "--executor", "serial"]
    code = main([*argv, "--n-templates", "2", "--options", bad, "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and "every readout for the calibration failed" in err, err
    assert not (tmp_path / "e" / "engine.json").exists()  # no identity calibration saved
