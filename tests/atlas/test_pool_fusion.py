"""Templates from a pool, the locally weighted vote, agreement and readout purity (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from liverfat.atlas.fusion import fuse, joint_weights, local_weights, median_pairwise_dice
from liverfat.atlas.images import AtlasImage
from liverfat.atlas.reliability import disagreement_message, readout_truth
from liverfat.atlas.selection import SELECTION_SPACING_MM, most_similar
from liverfat.evaluation.segmentation import dice
from tests.atlas.test_engine import small_engine


def image(array, spacing=(2.0, 2.0, 2.0)) -> sitk.Image:
    out = sitk.GetImageFromArray(np.asarray(array))
    out.SetSpacing(spacing)
    return out


def _blob_scene(shift: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured 'body' with a bright 'liver' box (z 8-24, y 8-24, x 8+shift - 24+shift)."""
    rng = np.random.default_rng(seed)
    body = rng.normal(0.3, 0.05, (32, 32, 40)).astype(np.float32)
    liver = np.zeros(body.shape, np.uint8)
    liver[8:24, 8:24, 8 + shift : 24 + shift] = 1
    return body + 0.6 * liver, liver


def test_weighted_vote_trusts_the_template_that_fits_where_it_fits():
    """Two of three templates are misplaced the same way (their image and mask shifted by 6
    voxels): the majority follows them; the weighted vote follows the one whose image matches
    the target, so its Dice is far higher."""
    target, truth = _blob_scene()
    good_image, good_mask = _blob_scene(seed=1)
    bad = [_blob_scene(shift=6, seed=s) for s in (2, 3)]
    masks = [image(good_mask)] + [image(m) for _, m in bad]
    warped = [image(good_image)] + [image(i) for i, _ in bad]
    majority = sitk.GetArrayFromImage(fuse(masks, "majority"))
    weighted = sitk.GetArrayFromImage(fuse(masks, "weighted", target=image(target), warped=warped))
    assert dice(truth, majority) < 0.7  # 0.625: the shifted pair outvotes the good template
    assert dice(truth, weighted) > 0.9, dice(truth, weighted)


def test_local_weights_sum_to_one_and_are_uniform_without_correlation():
    target, _ = _blob_scene()
    flat = np.full(target.shape, 0.5, np.float32)
    weights = local_weights(image(target), [image(target), image(flat), image(flat)])
    assert weights.shape == (3, *target.shape)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-5)
    assert weights[0].mean() > 0.9  # the identical image takes (nearly) every vote
    uniform = local_weights(image(flat), [image(flat), image(flat)])
    np.testing.assert_allclose(uniform, 0.5)
    with pytest.raises(Exception, match="weighted fusion needs"):
        fuse([image(flat.astype(np.uint8))], "weighted")


def test_joint_label_fusion_gives_a_pair_with_one_error_one_vote():
    """The same scene with the misplaced pair identical (perfectly correlated errors, the case
    joint label fusion is built for): the majority follows the pair, JLF the good template."""
    target, truth = _blob_scene()
    good_image, good_mask = _blob_scene(seed=1)
    bad_image, bad_mask = _blob_scene(shift=6, seed=2)
    masks = [image(good_mask), image(bad_mask), image(bad_mask)]
    warped = [image(good_image), image(bad_image), image(bad_image)]
    assert dice(truth, sitk.GetArrayFromImage(fuse(masks, "majority"))) < 0.7
    jlf = sitk.GetArrayFromImage(fuse(masks, "jlf", target=image(target), warped=warped))
    assert dice(truth, jlf) > 0.9, dice(truth, jlf)
    with pytest.raises(Exception, match="jlf fusion needs"):
        fuse(masks, "jlf")


def test_joint_weights_match_the_two_template_closed_form():
    """For two templates the constrained minimum of w'(M + aI)w has a closed form; M is built
    here independently from its definition (locally z-scored images, windowed error products
    to the power beta)."""
    from scipy import ndimage

    target, _ = _blob_scene()
    one, _ = _blob_scene(seed=1)
    two, _ = _blob_scene(shift=3, seed=2)
    spacing, sigma_mm, alpha, beta = 2.0, 6.0, 0.1, 2.0

    def smooth(a):
        return ndimage.gaussian_filter(a.astype(np.float64), sigma_mm / spacing, mode="nearest")

    def z(a):
        sd = np.sqrt(np.maximum(smooth(a * a) - smooth(a) ** 2, 0))
        return (a - smooth(a)) / (sd + 1e-3 * np.abs(a).max())

    d1, d2 = np.abs(z(one) - z(target)), np.abs(z(two) - z(target))
    m11, m22, m12 = (smooth(x * y) ** beta for x, y in ((d1, d1), (d2, d2), (d1, d2)))
    w1 = (m22 + alpha - m12) / (m11 + m22 + 2 * alpha - 2 * m12)
    weights = joint_weights(image(target), [image(one), image(two)], alpha=alpha, beta=beta)
    np.testing.assert_allclose(weights[0], w1, atol=2e-3)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-5)
    # the template identical to the target has no error: (m22 + a) / (m22 + 2a), at least 1/2
    exact = joint_weights(image(target), [image(target), image(two)])[0]
    assert exact.min() >= 0.5 - 1e-5 and exact.mean() > 0.85
    # solved only where asked: 1/k elsewhere
    at = np.zeros(target.shape, bool)
    at[10:12] = True
    partial = joint_weights(image(target), [image(one), image(two)], at=at)
    np.testing.assert_allclose(partial[0][at], w1[at], atol=2e-3)
    np.testing.assert_allclose(partial[:, ~at], 0.5)


def test_median_pairwise_dice_by_hand():
    a, b, c = (np.zeros((4, 4, 4), np.uint8) for _ in range(3))
    a[0:2], b[1:3], c[0:2] = 1, 1, 1  # a~b 0.5, a~c 1.0, b~c 0.5
    assert median_pairwise_dice([image(m) for m in (a, b, c)]) == pytest.approx(0.5)
    assert median_pairwise_dice([image(a)]) is None
    # one template astray among five: 6 pairs agree (Dice 1), 4 not at all (mean 0.6)
    astray = np.zeros((4, 4, 4), np.uint8)
    astray[3] = 1
    assert median_pairwise_dice([image(m) for m in (a, a, a, a, astray)]) == pytest.approx(1.0)


def test_readout_truth_purity_and_error():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:8, 2:8, 2:8] = 1
    readout = np.zeros_like(truth)
    readout[2:8, 2:8, 5:9] = 1  # 3 of 4 x-columns inside the liver
    ff = np.where(truth > 0, 10.0, 40.0).astype(np.float32)
    out = readout_truth(image(readout), image(truth), image(ff))
    assert out["purity"] == pytest.approx(0.75)
    assert out["true_median_pct"] == pytest.approx(10.0)
    assert out["readout_error_pp"] == pytest.approx(0.0)  # median of 75 % liver at 10 %
    readout[:] = 0
    readout[2:8, 2:8, 6:10] = 1  # half outside: the median lands between
    assert readout_truth(image(readout), image(truth), image(ff))["purity"] == pytest.approx(0.5)
    assert readout_truth(image(readout * 0), image(truth), None)["purity"] is None
    assert disagreement_message(0.4, 0.6).startswith("warped templates disagree")
    assert disagreement_message(0.7, 0.6) == "" and disagreement_message(0.4, None) == ""
    assert disagreement_message(0.4, 0.6, (2.2, 2.2, 3.0)) != ""  # UK Biobank's grid
    assert disagreement_message(0.4, 0.6, (4.5, 4.5, 6.0)) == ""  # too coarse to judge


def _atlas_image(sid: str, array: np.ndarray, liver: np.ndarray) -> AtlasImage:
    channel = image(array)
    body = image((array > 0.1).astype(np.uint8))
    return AtlasImage(sid, (channel,), body, image(liver))


@pytest.mark.parametrize("spacing_mm", [SELECTION_SPACING_MM, (10.0, 10.0, 10.0)])
def test_most_similar_ranks_the_look_alike_first_and_never_the_target(spacing_mm):
    """Also on a grid so coarse that the affine pyramid's coarsest levels would hold no samples
    (8 x 6 x 6 voxels: SimpleITK raised "FixedSampledPointSet must have 1 or more points")."""
    target_array, liver = _blob_scene(seed=0)
    twin, _ = _blob_scene(seed=5)
    other, other_liver = _blob_scene(shift=8, seed=6)
    other[:, :, 30:] = 0.9  # different anatomy, not only a shift the affine undoes
    target = _atlas_image("T", target_array, liver)
    pool = {
        "T": target,
        "twin": _atlas_image("twin", twin, liver),
        "other": _atlas_image("other", other, other_liver),
    }
    ranked = most_similar(target, pool, 2, spacing_mm)
    assert [sid for sid, _ in ranked] == ["twin", "other"]
    assert ranked[0][1] > ranked[1][1]


def test_affine_similarity_is_reproducible_across_runs_and_thread_counts():
    """The affine samples its metric at random with a fixed seed: the same pair scores the same
    on every call and with any number of ITK threads (a seed of 0 meant the wall clock: scores
    then differed from the third decimal on CHAOS)."""
    from liverfat.atlas.selection import affine_similarity

    target_array, liver = _blob_scene(seed=0)
    moving_array, moving_liver = _blob_scene(shift=3, seed=7)
    target = _atlas_image("T", target_array, liver)
    moving = _atlas_image("M", moving_array, moving_liver)
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        scores = []
        for threads in (1, 2, 1, 2):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            scores.append(affine_similarity(target, moving, (2.0, 2.0, 2.0)))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
    # threads change only the order of the sums: equal to rounding, not to the bit
    assert scores == pytest.approx([scores[0]] * 4, rel=1e-9, abs=0), scores


@pytest.mark.parametrize("fusion", ["weighted", "jlf"])
def test_engine_selects_per_subject_from_the_pool_and_flags_disagreement(
    phantom_manifest, tmp_path, monkeypatch, fusion
):
    """Pool of 4, 2 chosen per subject: no subject uses itself; a threshold above any real
    agreement flags every readout with its reason; purity is reported (true masks exist)."""
    from liverfat.atlas import reliability

    monkeypatch.setattr(reliability, "AGREEMENT_MAX_SPACING_MM", 10.0)  # judge the 8.9 mm grid
    ids = phantom_manifest.subject_ids[:5]
    manifest = phantom_manifest.select(subject_ids=ids)
    engine = small_engine(
        template_selection="similarity",
        pool_size=4,
        fusion=fusion,
        calibrate=False,
        agreement_flag_below=0.999,
        work_dir=str(tmp_path / "work"),
    ).fit(manifest)
    assert len(engine.templates_) == 4
    readout = engine.raw_readout(manifest)
    for sid, row in readout.iterrows():
        assert len(row["templates"]) == 2 and sid not in row["templates"]
        assert set(row["templates"]) <= set(engine.templates_)
        assert row["status"] == "flagged" and "warped templates disagree" in row["message"]
        assert 0.5 < row["purity"] <= 1.0, (sid, row["purity"])
        assert 0.0 < row["template_agreement"] < 0.999
    table = engine.predict(manifest, raw=True)
    assert set(table.frame["status"]) == {"flagged"}
    with pytest.raises(Exception, match="pool_size"):
        small_engine(template_selection="similarity", pool_size=1)
    with pytest.raises(Exception, match="template_selection"):
        small_engine(template_selection="nearest")
