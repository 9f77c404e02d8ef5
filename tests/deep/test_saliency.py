"""Grad-CAM: maps are well-formed, and a network trained on liver fat looks at the liver."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from liverfat.data.manifest import Manifest
from liverfat.data.phantom import generate_cohort
from liverfat.deep.engine import DeepEngine
from liverfat.deep.saliency import (
    aligned_stack,
    cohort_saliency,
    mass_fraction_in,
    subject_mass_fractions,
)


def test_mass_fraction_by_hand():
    saliency = np.zeros((4, 4))
    saliency[0, 0], saliency[3, 3] = 3.0, 1.0
    region = np.zeros((4, 4), bool)
    region[0, 0] = True
    assert mass_fraction_in(saliency, region) == pytest.approx(0.75)


@pytest.mark.slow
def test_cohort_saliency_sits_on_the_liver(tmp_path):
    """Most of the saliency mass of a liver-fat network falls on the liver (the issue's check).

    Maps are of the held-out subjects (split B, not trained on). The liver region is each
    subject's liver mask pushed through the same format geometry
    (``liverfat_masked``'s align function). The pixel-resolution sensitivity maps (squared input
    gradient) of a network that generalises put most of their mass there: the phantom's liver is
    the only organ whose fat fraction varies. Also checked: the cohort mean of those maps holds
    far more than its area share in the cohort's consensus liver (where most subjects' livers
    overlap), and the held-out predictions track the true liver fat, so the network did learn.
    Grad-CAM's coarse grid (8 input pixels per cell here) spreads over a far larger area, so its
    share is only printed.
    """
    manifest = Manifest.load(
        generate_cohort(
            100, tmp_path / "c", seed=11, scale="quarter", executor="serial", progress=False
        )
    )
    engine = DeepEngine(
        model="small_cnn",
        format="liverfat_masked",
        iterations=500,
        batch_size=16,
        input_scale=0.25,
        learning_rate=2e-3,
        nll_beta=0.0,
        balance_bins=0,
        work_dir=str(tmp_path / "work"),
    ).fit(manifest.select(split="A"))
    held_out = manifest.select(split="B")
    truth = pd.read_csv(tmp_path / "c" / "truth" / "truth.csv").set_index("subject_id")
    predicted = engine.predict(held_out).values(engine.method, "liver_pdff_pct")
    true = truth.loc[predicted.index, "liver_pdff_pct"]
    assert np.corrcoef(predicted, true)[0, 1] > 0.8

    result = cohort_saliency(engine, held_out)
    ids = list(result.maps)
    assert result.mean.shape == result.sensitivity_mean.shape == (176, 376)
    assert result.mean.min() >= 0 and result.mean.max() <= 1
    assert all(m.sum() == pytest.approx(1, rel=1e-4) for m in result.sensitivity.values())
    livers = aligned_stack(held_out, "liverfat_masked", "liver_mask", ids) > 0.5
    per_subject = subject_mass_fractions(result.sensitivity, livers)
    consensus = livers.mean(axis=0) > 0.5
    cohort = mass_fraction_in(result.sensitivity_mean, consensus)
    print(
        f"liver area per subject {livers.mean():.3f}, consensus {consensus.mean():.3f}; "
        f"sensitivity mass in own liver: median {np.median(per_subject):.3f}, "
        f"mean {per_subject.mean():.3f}; cohort map in consensus liver {cohort:.3f}; "
        f"Grad-CAM: mean map {mass_fraction_in(result.mean, consensus):.3f}, "
        f"per subject {subject_mass_fractions(result.maps, livers).mean():.3f}"
    )
    assert per_subject.mean() > 0.5
    assert cohort > 4 * consensus.mean()


def test_sensitivity_of_a_linear_network_is_its_squared_weights():
    """For f(x) = sum(w * x) the gradient is w, so each map is w^2 / sum(w^2) whatever x is."""
    import torch
    from torch import nn

    from liverfat.deep.saliency import sensitivity_maps

    weights = torch.from_numpy(np.random.default_rng(3).normal(size=(1, 1, 6, 10)).astype("f4"))

    class Linear(nn.Module):
        def forward(self, x):
            value = (x * weights).sum(dim=(1, 2, 3))
            return torch.stack([value, torch.zeros_like(value)], dim=1)

    engine = DeepEngine(model="small_cnn", input_scale=1.0, device="cpu")
    engine.network_ = Linear()
    formats = np.random.default_rng(4).integers(0, 256, (3, 1, 6, 10), dtype=np.uint8)
    maps = sensitivity_maps(engine, formats)
    # the network sees x / 255, so df/du8 = w / 255; the normalisation removes the constant
    expected = (weights[0, 0] ** 2 / (weights**2).sum()).numpy()
    assert maps.shape == (3, 6, 10)
    for one in maps:
        np.testing.assert_allclose(one, expected, rtol=1e-5, atol=1e-9)
