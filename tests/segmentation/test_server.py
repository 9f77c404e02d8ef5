"""``liverfat serve``: the real server process on a free loopback port, driven by the client.

Two servers run for the module: the two-channel tiny engine (water, fat; queue 4, a 2 MiB upload
limit) and a one-channel water engine (field ``file``, queue 1, for the busy test). Answers are
compared voxel for voxel with the same engine run here; both sides use one torch thread.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.data.geometry import geometry_of
from liverfat.data.io import read_volume
from liverfat.data.manifest import Manifest
from liverfat.errors import LiverfatError
from liverfat.segmentation.client import SegmentationClient, ServerError, encode_form
from liverfat.segmentation.engine import SegmentationEngine
from liverfat.segmentation.server import jsonable
from tests.segmentation.conftest import tiny_engine

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def client(self, timeout: float = 60.0) -> SegmentationClient:
        return SegmentationClient(self.url, timeout=timeout)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=30)


def _start(engine_dir: Path, folder: Path, *options: str) -> Server:
    folder.mkdir(parents=True, exist_ok=True)
    out, log = folder / "stdout.txt", folder / "stderr.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env["OMP_NUM_THREADS"] = "1"  # as in this process: same torch results, and 2 cores shared
    command = [sys.executable, "-m", "liverfat.cli", "serve", "--engine", str(engine_dir)]
    with open(out, "wb") as stdout, open(log, "wb") as stderr:  # files: a full pipe would block
        process = subprocess.Popen(
            [*command, "--port", "0", *options], stdout=stdout, stderr=stderr, env=env, cwd=REPO
        )
    server = Server(process, "", log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        match = LISTENING.search(out.read_text(errors="replace"))
        if match:
            server.url = match.group(1)
            if _healthy(server):
                return server
        time.sleep(0.2)
    server.stop() if process.poll() is None else None
    pytest.fail(f"server did not come up: {log.read_text(errors='replace')[-2000:]}")


def _healthy(server: Server) -> bool:
    try:
        return server.client(timeout=5).health()["status"] == "ok"
    except Exception:
        return False


@pytest.fixture(scope="module")
def water_engine_dir(tmp_path_factory: pytest.TempPathFactory, phantom_manifest: Manifest) -> Path:
    """A one-channel (water) engine, trained in about 3 s; its masks are not empty."""
    folder = tmp_path_factory.mktemp("water_unet") / "engine"
    engine = tiny_engine(channels=("water",), iterations=60, learning_rate=2e-2)
    engine.fit(phantom_manifest.select(split="A")).save(folder)
    return folder


@pytest.fixture(scope="module")
def servers(
    tiny_engine_dir: Path, water_engine_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    folder = tmp_path_factory.mktemp("servers")
    running = {}
    try:
        running["pair"] = _start(tiny_engine_dir, folder / "pair", "--max-upload-mb", "2")
        running["water"] = _start(water_engine_dir, folder / "water", "--queue", "1")
        yield running
    finally:
        for server in running.values():
            server.stop()


def _expected(engine_dir: Path, images: Mapping[str, sitk.Image], subject_id: str):
    result = SegmentationEngine.load(engine_dir).segment(dict(images), subject_id=subject_id)
    return result.mask, jsonable(result.readout.as_dict())


def _assert_same_grid(image: sitk.Image, expected: sitk.Image, atol: float = 1e-4) -> None:
    """Same size; spacing, origin (mm) and direction within NIfTI's float32 header precision."""
    got, want = geometry_of(image), geometry_of(expected)
    assert got["size"] == want["size"]
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=atol, err_msg=key)


def _assert_same_mask(mask: sitk.Image, expected: sitk.Image) -> None:
    assert mask.GetPixelID() == sitk.sitkUInt8
    _assert_same_grid(mask, expected)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(mask), sitk.GetArrayViewFromImage(expected)
    )


def _paths(manifest: Manifest, sid: str, channels=("water", "fat")) -> dict[str, Path]:
    return {c: Path(manifest.image_path(sid, c)) for c in channels}


def _images(paths: Mapping[str, Path]) -> dict[str, sitk.Image]:
    return {c: read_volume(p, allow_empty=True) for c, p in paths.items()}


def test_health_names_the_engine_and_its_fields(servers, tiny_engine_dir):
    health = servers["pair"].client().health()
    assert health["status"] == "ok"
    assert health["channels"] == ["water", "fat"] and health["fields"] == ["water", "fat"]
    assert health["engine"] == tiny_engine_dir.name and health["queue"] == 4
    water = servers["water"].client().health()
    assert water["channels"] == ["water"] and water["fields"] == ["file"]
    assert "fat" in water["optional_fields"]


def test_concurrent_requests_equal_the_engine(servers, tiny_engine_dir, phantom_manifest):
    sids = phantom_manifest.subject_ids[:3]
    answers: dict[str, object] = {}

    def send(sid: str) -> None:
        try:
            answers[sid] = (
                servers["pair"].client().segment(_paths(phantom_manifest, sid), subject_id=sid)
            )
        except Exception as exc:  # reported below, not lost in the thread
            answers[sid] = exc

    threads = [threading.Thread(target=send, args=(sid,)) for sid in sids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for sid in sids:
        assert isinstance(answers.get(sid), tuple), answers.get(sid)
        mask, readout = answers[sid]
        expected_mask, expected_readout = _expected(
            tiny_engine_dir, _images(_paths(phantom_manifest, sid)), sid
        )
        _assert_same_mask(mask, expected_mask)
        assert readout == expected_readout
        assert readout["liver_volume_ml"] is not None and readout["status"] in ("ok", "flagged")
    masks = [sitk.GetArrayViewFromImage(answers[sid][0]) for sid in sids]
    assert any(mask.any() for mask in masks)  # real masks compared, not only empty ones


def test_single_channel_file_field_with_fat_for_the_readout(
    servers, water_engine_dir, phantom_manifest
):
    sid = phantom_manifest.subject_ids[1]
    paths = _paths(phantom_manifest, sid)
    mask, readout = servers["water"].client().segment({"file": paths["water"], "fat": paths["fat"]})
    expected_mask, expected_readout = _expected(water_engine_dir, _images(paths), "upload")
    _assert_same_mask(mask, expected_mask)
    assert sitk.GetArrayViewFromImage(mask).any()  # a real mask, not an empty one
    assert readout == expected_readout and readout["liver_pdff_pct"] is not None


def _write_dicom(volume: sitk.Image, folder: Path) -> Path:
    """One DICOM file per slice with its position and orientation (as in tests/data/test_io.py)."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = volume.GetDirection()
    orientation = "\\".join(str(v) for v in (*direction[0:7:3], *direction[1:8:3]))
    for k in range(volume.GetDepth()):
        plane = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        for key, value in {
            "0020|000e": "1.2.826.0.1.3680043.2.1125.7",
            "0008|0060": "MR",
            "0020|0011": "3",
            "0020|0032": "\\".join(map(str, position)),
            "0020|0037": orientation,
            "0020|0013": str(k + 1),
        }.items():
            plane.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{k + 1:04d}.dcm"))
        writer.Execute(plane)
    return folder


def test_dicom_zip_upload(servers, water_engine_dir, phantom_manifest, tmp_path):
    water = read_volume(phantom_manifest.image_path(phantom_manifest.subject_ids[2], "water"))
    folder = _write_dicom(water, tmp_path / "series")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(folder.iterdir()):
            zipped.write(path, f"series/{path.name}")
    mask, readout = servers["water"].client().segment(archive, subject_id="dicom")
    dicom = read_volume(folder)
    expected_mask, expected_readout = _expected(water_engine_dir, {"water": dicom}, "dicom")
    _assert_same_mask(mask, expected_mask)
    _assert_same_grid(mask, water, atol=1e-3)
    assert readout == expected_readout and readout["liver_pdff_pct"] is None  # no fat sent


def _raw_post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{url}/segment", data=body, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_bad_uploads_get_a_one_line_json_error(servers, phantom_manifest, tmp_path):
    server = servers["pair"]
    paths = _paths(phantom_manifest, phantom_manifest.subject_ids[0])
    fat = read_volume(paths["fat"], allow_empty=True)
    body, content_type = encode_form(
        {"water": ("w.nii.gz", b"\x00garbage" * 500), "fat": ("f", b"x")}
    )
    status, raw = _raw_post(server.url, body, content_type)
    assert status == 400 and b"\n" not in raw.strip()
    assert set(json.loads(raw)) == {"error"} and "neither a NIfTI image" in json.loads(raw)["error"]

    moved = sitk.Image(fat)
    moved.SetOrigin(tuple(o + 5.0 for o in fat.GetOrigin()))
    oversized = tmp_path / "big.nii"
    oversized.write_bytes(os.urandom(3 * 2**20))
    client = server.client()
    cases = {
        "only water": ({"water": paths["water"]}, 400, "needs 'water' and 'fat'"),
        "a channel it lacks": ({**paths, "image": paths["water"]}, 400, "unexpected form field"),
        "fat on another grid": ({"water": paths["water"], "fat": moved}, 422, "differ in geometry"),
        "over the limit": ({"water": oversized, "fat": paths["fat"]}, 413, "too large"),
    }
    for case, (images, status, text) in cases.items():
        with pytest.raises(ServerError) as raised:
            client.segment(images)
        assert raised.value.status == status, case
        assert text in raised.value.error and "\n" not in raised.value.error, case
    assert client.health()["status"] == "ok"
    mask, _ = client.segment(paths)  # still serving
    assert mask.GetSize() == fat.GetSize()


def test_a_full_queue_answers_503_and_the_rest_succeed(servers, water_engine_dir, phantom_manifest):
    server = servers["water"]
    path = Path(phantom_manifest.image_path(phantom_manifest.subject_ids[0], "water"))
    expected_mask, expected_readout = _expected(water_engine_dir, _images({"water": path}), "busy")
    busy = 0
    for _ in range(5):  # one round nearly always shows it; the rounds bound a slow machine
        outcomes = _fire(server, path, n=6)
        for outcome in outcomes:
            if isinstance(outcome, ServerError) and outcome.status == 503:
                assert "busy" in outcome.error
                busy += 1
            else:
                assert isinstance(outcome, tuple), outcome
                _assert_same_mask(outcome[0], expected_mask)
                assert outcome[1] == expected_readout
        if busy:
            break
    assert busy >= 1
    assert server.client().health()["in_flight"] == 0


def _fire(server: Server, path: Path, n: int) -> list[object]:
    """``n`` requests released together from threads; each outcome or its exception."""
    barrier = threading.Barrier(n)
    outcomes: list[object] = [None] * n

    def send(i: int) -> None:
        client = server.client()
        barrier.wait(timeout=30)
        try:
            outcomes[i] = client.segment(path, subject_id="busy")
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def test_the_server_exits_when_terminated(servers):
    for server in servers.values():
        assert server.client().health()["status"] == "ok"
        code = server.stop()
        assert code in (0, -signal.SIGTERM), server.log.read_text(errors="replace")[-2000:]
        with pytest.raises(LiverfatError, match="cannot reach"):
            server.client(timeout=2).health()
