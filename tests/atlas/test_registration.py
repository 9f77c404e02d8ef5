"""Each backend recovers a known deformation of a synthetic two-channel body with a liver."""

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.atlas import torch_registration
from liverfat.atlas.images import AtlasImage, align_centres
from liverfat.atlas.registration import BackendSettings, register
from liverfat.evaluation import segmentation

SMALL = {
    "elastix": {
        "resolutions": 3,
        "affine_iterations": 40,
        "bspline_iterations": 40,
        "spatial_samples": 1000,
    },
    "deform": {"pyramid_levels": 3, "pyramid_stop_level": 0, "affine_iterations": 50},
    "torch": {
        "affine_levels": [2],
        "affine_iterations": 40,
        "deformable_levels": [2, 1],
        "deformable_iterations": 30,
    },
}


def synthetic(shift_mm, scale, origin=(0.0, 0.0, 0.0)):
    z, y, x = np.mgrid[:32, :40, :40].astype(float)
    spacing = np.array([4.0, 4.0, 5.0])  # x, y, z mm
    px, py, pz = x * spacing[0], y * spacing[1], z * spacing[2]
    cx, cy, cz = 80 + shift_mm[0], 80 + shift_mm[1], 80 + shift_mm[2]
    body = ((px - cx) / (60 * scale)) ** 2 + ((py - cy) / (45 * scale)) ** 2 < 1
    body &= np.abs(pz - cz) < 70
    liver = ((px - cx + 25 * scale) / (25 * scale)) ** 2 + ((py - cy) / (22 * scale)) ** 2 + (
        (pz - cz - 15) / (30 * scale)
    ) ** 2 < 1
    water = body * (0.5 + 0.4 * liver) + 0.2 * body * np.sin(px / 9) * np.cos(py / 11)
    ff = body * (0.1 + 0.2 * liver + 0.3 * (((px - cx) / (60 * scale)) ** 2 > 0.6))

    def img(a, dtype=np.float32):
        out = sitk.GetImageFromArray(a.astype(dtype))
        out.SetSpacing(tuple(spacing))
        out.SetOrigin(origin)
        return out

    return AtlasImage("s", (img(water), img(ff)), img(body, np.uint8), img(liver, np.uint8))


def dice(a: sitk.Image, b: sitk.Image) -> float:
    return segmentation.dice(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


@pytest.mark.parametrize("backend", ["elastix", "deform", "torch"])
def test_backend_recovers_known_deformation(backend):
    fixed = synthetic((0, 0, 0), 1.0)
    moving = align_centres(fixed, synthetic((12, -8, 10), 1.12, origin=(0.0, 0.0, 200.0)))
    before = sitk.Resample(
        moving.liver, fixed.reference, sitk.Transform(), sitk.sitkNearestNeighbor
    )
    if backend == "elastix":  # its ITK thread count is restored after (set 3 to see it)
        import itk

        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(3)
    result = register(backend, fixed, moving, BackendSettings(extra=SMALL[backend]))
    if backend == "elastix":
        assert itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads() == 3
    assert result.warped_mask.GetSize() == fixed.reference.GetSize()
    after = dice(result.warped_mask, fixed.liver)
    assert after > 0.85 and after > dice(before, fixed.liver) + 0.05, (backend, after)
    if backend == "torch":
        assert result.transform["folding_fraction"] < 1e-3


def test_centre_alignment_removes_origin_offset():
    fixed = synthetic((0, 0, 0), 1.0)
    moving = align_centres(fixed, synthetic((0, 0, 0), 1.0, origin=(0.0, 0.0, 240.0)))
    warped = sitk.Resample(
        moving.liver, fixed.reference, sitk.Transform(), sitk.sitkNearestNeighbor
    )
    assert dice(warped, fixed.liver) > 0.95


@pytest.mark.gpu
def test_torch_backend_runs_on_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU in this environment")
    from liverfat.nn.device import pick_device

    assert str(pick_device()) == "cuda"
    fixed = synthetic((0, 0, 0), 1.0)
    moving = align_centres(fixed, synthetic((12, -8, 10), 1.12))
    result = register("torch", fixed, moving, BackendSettings(extra=SMALL["torch"]))
    assert result.transform["device"] == "cuda"
    assert dice(result.warped_mask, fixed.liver) > 0.85


def test_torch_backend_chooses_device_and_threads_through_liverfat_nn(monkeypatch):
    """The backend's device is the one :func:`liverfat.nn.device.pick_device` chose (``auto``
    when the options name none), its thread count set by the shared helper during the
    registration and the process's own count given back after it."""
    torch = pytest.importorskip("torch")
    from liverfat.nn import device

    calls, during = [], []
    real_pick, real_threads = device.pick_device, device.set_torch_threads
    monkeypatch.setattr(device, "pick_device", lambda d: calls.append(d) or real_pick(d))
    monkeypatch.setattr(device, "set_torch_threads", lambda n: calls.append(n) or real_threads(n))
    real_optimise = torch_registration.optimise_batch  # what every torch registration runs
    monkeypatch.setattr(
        torch_registration,
        "optimise_batch",
        lambda *a, **k: during.append(torch.get_num_threads()) or real_optimise(*a, **k),
    )
    fixed = synthetic((0, 0, 0), 1.0)
    moving = align_centres(fixed, synthetic((4, 0, 0), 1.0))
    tiny = {**SMALL["torch"], "affine_iterations": 2, "deformable_iterations": 2}
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for requested, expected in [(None, "auto"), ("cpu", "cpu")]:
            calls.clear(), during.clear()
            settings = BackendSettings(n_threads=1, extra={**tiny, "device": requested})
            result = register("torch", fixed, moving, settings)
            assert calls == [expected, 1, 2]
            assert during == [1]
            assert torch.get_num_threads() == 2  # not left at the registration's 1
            assert result.transform["device"] == str(real_pick(expected))
    finally:
        torch.set_num_threads(previous)


_WITHOUT_CPU_ONLY_PACKAGES = """
import sys

class Absent:  # as on a GPU machine with only torch, numpy, scipy, SimpleITK and MONAI
    names = {"itk", "pydeform", "dask", "distributed", "pingouin", "xgboost", "radiomics"}

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Absent())
from liverfat.atlas.images import align_centres
from liverfat.atlas.registration import BackendSettings, register
from tests.atlas.test_registration import SMALL, dice, synthetic

fixed = synthetic((0, 0, 0), 1.0)
moving = align_centres(fixed, synthetic((12, -8, 10), 1.12))
settings = BackendSettings(extra={**SMALL["torch"], "device": "cpu"})
result = register("torch", fixed, moving, settings)
print(round(dice(result.warped_mask, fixed.liver), 3))
"""


def test_torch_backend_runs_without_the_cpu_only_packages():
    """itk-elastix, pydeform, dask (and the other engines' packages) are imported only by the
    paths that need them: the torch backend registers with all of them missing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("torch")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_CPU_ONLY_PACKAGES],
        env=env,
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) > 0.85
