"""Grad-CAM: maps are well-formed, and a network trained on liver fat looks at the liver."""

from __future__ import annotations

import numpy as np
import pytest

from liverfat.data.manifest import Manifest
from liverfat.data.phantom import generate_cohort
from liverfat.deep.engine import DeepEngine
from liverfat.deep.saliency import aligned_mean, cohort_saliency, mass_fraction_in


def test_mass_fraction_by_hand():
    saliency = np.zeros((4, 4))
    saliency[0, 0], saliency[3, 3] = 3.0, 1.0
    region = np.zeros((4, 4), bool)
    region[0, 0] = True
    assert mass_fraction_in(saliency, region) == pytest.approx(0.75)


@pytest.mark.slow
def test_mean_saliency_sits_on_the_liver(tmp_path):
    """Most of the cohort-mean Grad-CAM mass falls inside the liver region of the format.

    The liver region is the phantom's liver mask pushed through the same format geometry.
    """
    manifest = Manifest.load(
        generate_cohort(
            60, tmp_path / "c", seed=11, scale="quarter", executor="serial", progress=False
        )
    )
    engine = DeepEngine(
        model="small_cnn",
        format="liverfat_masked",
        iterations=300,
        batch_size=16,
        input_scale=0.5,
        learning_rate=1e-3,
        cache_dir=str(tmp_path / "cache"),
    ).fit(manifest.select(split="A"))
    result = cohort_saliency(engine, manifest)
    ids = list(result.maps)
    assert result.mean.shape == (176, 376) and result.mean.min() >= 0 and result.mean.max() <= 1
    liver = aligned_mean(manifest, "liverfat_masked", "liver_mask", ids) > 0.5
    fraction = mass_fraction_in(result.mean, liver)
    area = liver.mean()
    print(f"liver area {area:.3f} of the format, mean saliency mass in it {fraction:.3f}")
    assert fraction > 0.5
