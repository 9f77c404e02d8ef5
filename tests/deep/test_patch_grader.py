"""The patch grader: contract, learning a constructed problem, augmentation from training
samples only, persistence, failures, and the on-device augmentation itself."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from liverfat.deep.patch_grader import PatchGrader
from liverfat.deep.patch_training import PatchTrainSettings, augment, crop
from liverfat.errors import LiverfatError
from liverfat.testing import check_engine
from tests.deep.conftest import PHANTOM_CUTS, synthetic_cohort

#: Fast settings: a few dozen iterations on CPU.
FAST = dict(iterations=30, batch_size=16, device="cpu")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """24 synthetic subjects, six 8-pixel ROIs each, grades 0-3 in turn."""
    return synthetic_cohort(tmp_path_factory.mktemp("patch_cohort"), 24, seed=3)


@pytest.fixture(scope="module")
def split(cohort):
    train = cohort.select(subject_ids=cohort.subject_ids[:16])
    test = cohort.select(subject_ids=cohort.subject_ids[16:])
    return train, test


@pytest.fixture(scope="module")
def fitted(split):
    return PatchGrader(**dict(FAST, iterations=120), seed=1).fit(split[0])


def test_conformance(phantom_rois_manifest, tmp_path):
    check_engine(
        lambda: PatchGrader(**FAST, grading=PHANTOM_CUTS, work_dir=str(tmp_path / "work")),
        phantom_rois_manifest,
        tmp_path,
        targets=["liver_pdff_pct_grade"],
    )


def test_validation_is_early_and_clear():
    for bad, match in [
        (dict(model="resnet50"), "unknown classification model"),
        (dict(grading="severe"), "grading scheme"),
        (dict(channels=("t2",)), "channels"),
        (dict(channels="fat_fraction"), "channels"),
        (dict(class_weighting="inverse"), "class_weighting"),
        (dict(iterations=0), "iterations"),
        (dict(device="tpu"), "device"),
    ]:
        with pytest.raises(LiverfatError, match=match):
            PatchGrader(**bad)
    with pytest.raises(LiverfatError, match="not fitted"):
        PatchGrader().predict_scores(None)


def test_learns_grades_from_water_and_fat_on_held_out_subjects(split):
    """Water and fat with a random gain per subject, normalised by the median of water + fat
    over the ROIs: the fat share, hence the grade, is learnt and holds on unseen subjects."""
    train, test = split
    grader = PatchGrader(**dict(FAST, iterations=150, batch_size=32), channels=("water", "fat"))
    grader.fit(train)
    scores, failures = grader.predict_scores(test)
    assert not failures and list(scores.index) == test.subject_ids
    truth = grader.scheme.grade(test.target("liver_pdff_pct").loc[scores.index])
    assert (scores["grade"].to_numpy() == truth).mean() >= 0.75  # chance: 0.25
    probabilities = scores[[f"p_grade{k}" for k in range(4)]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert (scores["grade"].to_numpy() == probabilities.argmax(axis=1)).all()
    log = grader.training_log_
    assert len(log["losses"]) == 150 and np.mean(log["losses"][-20:]) < np.mean(log["losses"][:5])
    assert log["precision"] == "float32" and log["seconds"] > 0


def test_training_samples_come_from_training_subjects_only(split, fitted):
    train, test = split
    assert fitted.training_subjects_ == sorted(train.subject_ids)
    assert len(fitted.sample_subjects_) == 6 * len(train)  # six ROIs each
    assert set(fitted.sample_subjects_) == set(train.subject_ids)
    assert set(fitted.drawn_subjects_) <= set(train.subject_ids)
    assert not set(fitted.sample_subjects_ + fitted.drawn_subjects_) & set(test.subject_ids)


def test_cross_validation_trains_each_fold_on_its_training_part(cohort):
    oof = PatchGrader(**FAST).cross_validate(cohort, folds=3, seed=2)
    assert sorted(oof.frame["subject_id"]) == sorted(cohort.subject_ids)
    assert set(oof.frame["target"]) == {"liver_pdff_pct_grade"}
    assert oof.frame["method"].eq("patch_patch_densenet").all()
    for fold in oof.run["fold_log"]:
        test = set(fold["test"])
        assert set(fold["model_trained_on"]) == set(fold["train"])
        assert not test & set(fold["model_trained_on"]) and not test & set(
            fold["batches_drew_from"]
        )
    assert [sorted(f) for f in oof.run["folds"]] == [sorted(f["test"]) for f in oof.run["fold_log"]]


def test_save_and_load_give_identical_probabilities(split, fitted, tmp_path):
    _, test = split
    before, _ = fitted.predict_scores(test)
    fitted.save(tmp_path / "grader")
    meta = json.loads((tmp_path / "grader" / "engine.json").read_text(encoding="utf-8"))
    assert meta["engine"] == "PatchGrader" and meta["fitted"]["classes"] == [0, 1, 2, 3]
    again = PatchGrader.load(tmp_path / "grader")
    after, _ = again.predict_scores(test)
    pd.testing.assert_frame_equal(before, after, check_exact=True)
    assert again.training_subjects_ == fitted.training_subjects_
    assert again.sample_subjects_ == fitted.sample_subjects_


def test_predict_table_matches_the_scores(split, fitted):
    _, test = split
    scores, _ = fitted.predict_scores(test)
    table = fitted.predict(test).frame.set_index("subject_id")
    assert table["value"].tolist() == scores.loc[table.index, "grade"].tolist()
    first = dict(kv.split("=") for kv in table["message"].iloc[0].split(";"))
    assert list(first) == [f"p_grade{k}" for k in range(4)]
    sid = table.index[0]
    assert float(first["p_grade2"]) == pytest.approx(scores.at[sid, "p_grade2"], abs=1e-4)


def test_absent_grade_gets_probability_zero(split):
    train, test = split
    three = train.select(subject_ids=[s for s in train.subject_ids if int(s[1:]) % 4 != 3])
    grader = PatchGrader(**FAST, class_weighting="balanced").fit(three)
    assert grader.classes_ == [0, 1, 2]
    scores, _ = grader.predict_scores(test)
    assert (scores["p_grade3"] == 0).all() and (scores["grade"] != 3).all()


def test_a_corrupt_subject_is_one_failure_line_and_the_rest_go_on(split, fitted, tmp_path):
    _, test = split
    table = test.subjects.copy()
    bad, outside = table["subject_id"].iloc[0], table["subject_id"].iloc[1]
    broken = tmp_path / "broken_rois.json"
    broken.write_text("[{not json", encoding="utf-8")
    far = tmp_path / "far_rois.json"
    far.write_text(json.dumps([{"slice": 1, "row": 30, "column": 30, "size": 8}]), "utf-8")
    table.loc[0, "rois"], table.loc[1, "rois"] = str(broken), str(far)
    damaged = type(test)(card=test.card, subjects=table, path=test.path, root=test.root)
    scores, failures = fitted.predict_scores(damaged)
    assert set(failures) == {bad, outside}
    assert all("\n" not in m and sid in m for sid, m in failures.items())
    assert "broken_rois.json" in failures[bad] and "outside the image grid" in failures[outside]
    assert sorted(scores.index) == sorted(set(test.subject_ids) - {bad, outside})


def test_roi_windows_of_another_size_fail_only_their_subject(split, fitted, tmp_path):
    _, test = split
    table = test.subjects.copy()
    small = tmp_path / "small_rois.json"
    small.write_text(json.dumps([{"slice": 1, "row": 8, "column": 8, "size": 4}]), "utf-8")
    table.loc[0, "rois"] = str(small)
    other = type(test)(card=test.card, subjects=table, path=test.path, root=test.root)
    scores, failures = fitted.predict_scores(other)
    sid = table["subject_id"].iloc[0]
    assert list(failures) == [sid] and "8 px" in failures[sid] and "12 px" in failures[sid]
    assert len(scores) == len(test) - 1


def _windows(n: int = 6, side: int = 8) -> torch.Tensor:
    return torch.arange(n * 2 * side * side, dtype=torch.float32).view(n, 2, side, side)


def test_shifted_crops_stay_within_the_margin():
    windows = _windows()
    settings = PatchTrainSettings(max_shift_px=2, mirror=False, rotate=False, noise_fraction=0)
    out = augment(windows, 2, settings, torch.Generator().manual_seed(0))
    assert out.shape == (6, 2, 4, 4)
    for i in range(6):
        crops = [windows[i, :, r : r + 4, c : c + 4] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], c) for c in crops)
    rows, cols = torch.tensor([0, 4, 1, 2, 3, 0]), torch.tensor([4, 0, 2, 2, 1, 3])
    cropped = crop(windows, 4, rows, cols)
    assert torch.equal(cropped[1], windows[1, :, 4:8, 0:4])


def test_mirror_and_rotation_are_exact_and_noise_scales_with_the_patch_sd():
    windows = _windows(64)
    settings = PatchTrainSettings(max_shift_px=0, noise_fraction=0)
    out = augment(windows, 2, settings, torch.Generator().manual_seed(1))
    centre = windows[:, :, 2:6, 2:6]
    seen = set()
    for i in range(64):
        options = [
            torch.rot90(f, k, (1, 2)) for f in (centre[i], centre[i].flip(-1)) for k in range(4)
        ]
        matches = [j for j, o in enumerate(options) if torch.equal(out[i], o)]
        assert matches, i
        seen.add(matches[0])
    assert len(seen) == 8  # all eight symmetries of the square are drawn
    noisy = PatchTrainSettings(max_shift_px=0, mirror=False, rotate=False, noise_fraction=0.25)
    clean = windows[:, :, 2:6, 2:6]
    noise = augment(windows, 2, noisy, torch.Generator().manual_seed(2)) - clean
    ratio = noise.std() / clean.std(dim=(2, 3), correction=0).mean()
    assert 0.2 < float(ratio) < 0.3
