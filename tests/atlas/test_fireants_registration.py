"""The fireants backend: recovers a known deformation, answers on the fixed native grid, runs in
the engine, stays quiet, and names its install command when FireANTs is missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.atlas.images import align_centres
from liverfat.atlas.registration import BACKENDS, BackendSettings, backend_defaults, register
from liverfat.errors import LiverfatError
from tests.atlas.test_registration import dice, synthetic

needs_fireants = pytest.mark.skipif(
    importlib.util.find_spec("fireants") is None, reason="FireANTs is not installed"
)

#: Fewer steps than the defaults (the synthetic volumes are tiny: FireANTs keeps 32 voxels a side).
SMALL = {"affine_iterations": [60], "deformable_iterations": [20]}


def _pair():
    fixed = synthetic((0, 0, 0), 1.0)
    moving = align_centres(fixed, synthetic((12, -8, 10), 1.12, origin=(0.0, 0.0, 200.0)))
    before = sitk.Resample(
        moving.liver, fixed.reference, sitk.Transform(), sitk.sitkNearestNeighbor
    )
    return fixed, moving, dice(before, fixed.liver)


def test_fireants_is_a_backend_with_its_defaults():
    from liverfat.atlas.fireants_registration import FIREANTS_DEFAULTS

    assert "fireants" in BACKENDS
    assert backend_defaults("fireants") == FIREANTS_DEFAULTS


@needs_fireants
def test_fireants_recovers_a_known_deformation():
    """Shift (12, -8, 10) mm and scale 1.12 of a two-channel body: centring alone leaves a Dice
    of about 0.82; the registration must do clearly better."""
    fixed, moving, before = _pair()
    result = register("fireants", fixed, moving, BackendSettings(extra=SMALL))
    after = dice(result.warped_mask, fixed.liver)
    assert after > 0.87 and after > before + 0.05, (before, after)
    assert 0.0 <= result.transform["folding_fraction"] <= 1.0
    assert result.transform["folding_fraction"] < 1e-2
    assert result.transform["device"] in ("cpu", "cuda")
    affine = np.asarray(result.transform["affine_mm"])
    assert affine.shape == (4, 4) and np.allclose(affine[3], [0, 0, 0, 1])
    assert np.all(np.diag(affine)[:2] > 1.05)  # the moving body is 12 % larger in plane


@needs_fireants
def test_fireants_mask_is_on_the_native_fixed_grid():
    """Registered on a coarser working grid, the mask comes back on the fixed subject's own
    grid, uint8 zeros and ones."""
    fixed, moving, _ = _pair()
    settings = BackendSettings(working_spacing_mm=(6.0, 6.0, 7.5), extra=SMALL)
    result = register("fireants", fixed, moving, settings)
    mask = result.warped_mask
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(mask, attribute)() == getattr(fixed.reference, attribute)()
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
    assert dice(mask, fixed.liver) > 0.7  # in place (a coarse 27 x 27 x 21 grid: not exact)
    field = result.transform["displacement_mm"]
    assert field.GetSize() != fixed.reference.GetSize()  # the map lives on the working grid


@needs_fireants
def test_fireants_restores_the_torch_thread_count():
    import torch

    fixed, moving, _ = _pair()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        tiny = {"affine_iterations": [2], "deformable_iterations": [2], "device": "cpu"}
        result = register("fireants", fixed, moving, BackendSettings(n_threads=1, extra=tiny))
        assert torch.get_num_threads() == 2
        assert result.transform["device"] == "cpu"
    finally:
        torch.set_num_threads(previous)


def test_missing_fireants_is_one_line_naming_the_install(monkeypatch):
    fixed, moving, _ = _pair()
    monkeypatch.setitem(sys.modules, "fireants.registration.affine", None)  # import fails
    with pytest.raises(LiverfatError) as error:
        register("fireants", fixed, moving, BackendSettings(extra=SMALL))
    message = str(error.value)
    assert "\n" not in message
    assert "pip install --no-deps fireants==1.5.0" in message


@needs_fireants
def test_engine_predicts_with_fireants(small_phantom_dir, tmp_path):
    from liverfat.atlas.engine import AtlasEngine
    from liverfat.data.manifest import Manifest

    manifest = Manifest.load(small_phantom_dir / "manifest.yaml")
    ids = manifest.subject_ids
    engine = AtlasEngine(
        backend="fireants",
        templates=ids[:2],
        calibrate=False,
        erosion_diameter_voxels=3,
        min_voxels=5,
        backend_options={"affine_iterations": [40], "deformable_iterations": [10]},
        work_dir=tmp_path / "work",
    )
    engine.fit(manifest)
    assert engine._device() in ("cpu", "cuda")
    table = engine.predict(manifest.select(subject_ids=ids[2:]))
    frame = table.frame
    assert len(frame) == 2 and table.methods == ["atlas-fireants"]
    assert (frame["status"] != "failed").all(), frame[["status", "message"]]
    assert np.isfinite(frame["value"]).all()


_QUIET = """
from liverfat.atlas.images import align_centres
from liverfat.atlas.registration import BackendSettings, register
from tests.atlas.test_registration import synthetic
import logging

fixed = synthetic((0, 0, 0), 1.0)
moving = align_centres(fixed, synthetic((4, 0, 0), 1.0))
options = {"moments": 1, "affine_iterations": [3], "deformable_iterations": [3]}
register("fireants", fixed, moving, BackendSettings(extra=options))
assert not logging.getLogger().handlers  # FireANTs' basicConfig undone
"""


@needs_fireants
def test_fireants_prints_nothing_in_a_fresh_process():
    """FireANTs prints at import and logs warnings and progress bars: none of it shows."""
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-c", _QUIET], capture_output=True, text=True, cwd=root, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "" and out.stderr == "", (out.stdout, out.stderr)
