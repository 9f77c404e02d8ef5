"""Manifest loading, validation and the ``liverfat manifest check`` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from liverfat.cli import main
from liverfat.data.manifest import Manifest, is_manifest_path
from liverfat.errors import ImageError, ManifestError


@pytest.fixture()
def broken_copy(phantom_dir: Path, tmp_path: Path) -> Path:
    """A copy of the phantom with one problem of each kind."""
    copy = tmp_path / "cohort"
    shutil.copytree(phantom_dir, copy)
    table = pd.read_csv(copy / "subjects.csv", dtype=str, keep_default_na=False)
    (copy / table.loc[0, "water"]).unlink()  # missing file
    table.loc[2, "subject_id"] = table.loc[1, "subject_id"]  # duplicate id
    fat = sitk.ReadImage(str(copy / table.loc[3, "fat"]))
    fat.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(fat, str(copy / table.loc[3, "fat"]))  # geometry mismatch
    a_rows = table.index[table["split"] == "A"]
    table.loc[a_rows[0], "liver_pdff_pct"] = "high"  # non-numeric target
    table.loc[a_rows[1], "liver_pdff_pct"] = "140"  # out of range
    table.loc[5, "split"] = "Z"  # unknown split
    table.to_csv(copy / "subjects.csv", index=False)
    return copy


def test_phantom_manifest_is_sound(phantom_manifest: Manifest) -> None:
    assert phantom_manifest.problems() == []
    assert len(phantom_manifest) == 20
    assert set(phantom_manifest.targets) == {
        "liver_pdff_pct",
        "liver_volume_ml",
        "vat_volume_ml",
        "asat_volume_ml",
    }
    dixon = phantom_manifest.dixon(phantom_manifest.subject_ids[0])
    ff = sitk.GetArrayViewFromImage(dixon.fat_fraction)
    assert ff.min() >= 0 and ff.max() <= 100
    assert dixon.water.GetSpacing() == dixon.fat_fraction.GetSpacing()


def test_every_problem_listed_one_line_each(broken_copy: Path, capsys) -> None:
    manifest = Manifest.load(broken_copy)
    problems = manifest.problems()
    text = "\n".join(problems)
    assert "water: " in text and "file not found" in text
    assert "duplicate subject_id P0002" in text
    assert "differ in geometry: spacing" in text
    assert "liver_pdff_pct 'high' is not a number" in text
    assert "liver_pdff_pct 140 outside [0, 100]" in text
    assert "unknown split 'Z'" in text
    assert len(problems) == 6, problems
    assert main(["manifest", "check", str(broken_copy / "manifest.yaml")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 7  # six problems and a summary line
    with pytest.raises(ManifestError, match="6 problem"):
        Manifest.load(broken_copy, validate=True)


def test_check_command_ok_and_unusable_paths(phantom_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["manifest", "check", str(phantom_dir)]) == 0
    assert "OK, 20 subjects, targets: liver_pdff_pct" in capsys.readouterr().out
    assert main(["manifest", "check", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.yaml: manifest not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    assert main(["manifest", "check", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_splits_selection_and_targets(phantom_manifest: Manifest) -> None:
    splits = phantom_manifest.subjects["split"]
    assert phantom_manifest.in_split("B").sum() == splits.isin(["B", "C"]).sum()
    assert len(phantom_manifest.select(split="C")) == (splits == "C").sum()
    sub = phantom_manifest.select(subject_ids=["P0003", "P0001"])
    assert sub.subject_ids == ["P0001", "P0003"]
    assert sub.problems() == []
    target = phantom_manifest.target("liver_pdff_pct")
    assert target.dtype == float and target.index.name == "subject_id"
    with pytest.raises(ManifestError, match="unknown target"):
        phantom_manifest.target("nope")
    with pytest.raises(ManifestError, match="unknown split"):
        phantom_manifest.in_split("Q")


def test_image_errors_name_subject(broken_copy: Path) -> None:
    manifest = Manifest.load(broken_copy)
    with pytest.raises(ImageError, match=r"subject P0001: water: .* file not found"):
        manifest.dixon("P0001")
    with pytest.raises(ImageError, match=r"subject P0004: water and fat differ in geometry"):
        manifest.dixon("P0004")


def test_single_image_manifest_refused_for_dixon(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32))
    sitk.WriteImage(image, str(tmp_path / "t2.nii.gz"))
    (tmp_path / "subjects.csv").write_text(
        "subject_id,image,split\nS1,t2.nii.gz,all\n", encoding="utf-8"
    )
    (tmp_path / "manifest.yaml").write_text(
        "name: t2\nsubjects: subjects.csv\ntargets: {}\nsplits: {all: {meaning: all}}\n",
        encoding="utf-8",
    )
    manifest = Manifest.load(tmp_path)
    assert manifest.problems() == []
    with pytest.raises(ImageError, match="subject S1: no water/fat .* needs a Dixon scan"):
        manifest.dixon("S1")


def test_covariates_keep_the_text_of_the_subject_table(tmp_path: Path) -> None:
    (tmp_path / "subjects.csv").write_text(
        "subject_id,image,split,age,sex,smoker\n"
        " S2 ,b.nii.gz,all,61.5,M,no\n"
        "S1,a.nii.gz,all,,F,yes\n",
        encoding="utf-8",
    )
    (tmp_path / "manifest.yaml").write_text(
        "name: t2\nsubjects: subjects.csv\ntargets: {}\nsplits: {all: {meaning: all}}\n",
        encoding="utf-8",
    )
    manifest = Manifest.load(tmp_path)
    assert manifest.subjects["sex"].isna().all()  # the numeric view cannot hold F/M
    default = manifest.covariates()
    assert list(default.columns) == ["age", "sex"] and default.index.name == "subject_id"
    assert default.to_dict("index") == {
        "S2": {"age": "61.5", "sex": "M"},
        "S1": {"age": "", "sex": "F"},
    }
    assert manifest.select(subject_ids=["S1"]).covariates(["smoker"]).loc["S1", "smoker"] == "yes"
    with pytest.raises(ManifestError, match="no covariate column bmi"):
        manifest.covariates(["age", "bmi"])
    assert is_manifest_path(tmp_path) and is_manifest_path(tmp_path / "manifest.yaml")
    assert not is_manifest_path(tmp_path / "subjects.csv")


def test_derived_manifest_written_elsewhere_keeps_paths(
    phantom_manifest: Manifest, tmp_path: Path
) -> None:
    card = phantom_manifest.select(split="A").write(tmp_path / "derived" / "manifest.yaml")
    again = Manifest.load(card)
    assert again.problems() == []
    assert again.subject_ids == phantom_manifest.select(split="A").subject_ids


def test_check_finds_a_truncated_image(phantom_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cohort"
    shutil.copytree(phantom_dir, copy)
    manifest = Manifest.load(copy)
    fat = manifest.image_path(manifest.subject_ids[1], "fat")
    fat.write_bytes(fat.read_bytes()[: fat.stat().st_size // 3])
    problems = Manifest.load(copy).problems()
    assert len(problems) == 1 and f"subject {manifest.subject_ids[1]}: fat:" in problems[0]
    assert "truncated" in problems[0]


def test_bad_target_values_are_listed_and_never_used(phantom_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cohort"
    shutil.copytree(phantom_dir, copy)
    table = pd.read_csv(copy / "subjects.csv", dtype=str, keep_default_na=False)
    scored = table.index[table["liver_pdff_pct"] != ""][:3]
    table.loc[scored, "liver_pdff_pct"] = ["inf", "-5", "abc"]
    table.to_csv(copy / "subjects.csv", index=False)
    manifest = Manifest.load(copy)
    ids = table.loc[scored, "subject_id"].tolist()
    assert manifest.target("liver_pdff_pct").reindex(ids).isna().all()
    text = "\n".join(manifest.problems())
    assert f"{ids[0]}: liver_pdff_pct inf is not finite" in text
    assert f"{ids[1]}: liver_pdff_pct -5 outside [0, 100]" in text
    assert f"{ids[2]}: liver_pdff_pct 'abc' is not a number" in text


def test_a_mask_on_another_grid_is_refused(phantom_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cohort"
    shutil.copytree(phantom_dir, copy)
    manifest = Manifest.load(copy)
    sid = manifest.subject_ids[0]
    path = manifest.image_path(sid, "liver_mask")
    mask = sitk.ReadImage(str(path))
    mask.SetOrigin([o + 30.0 for o in mask.GetOrigin()])  # same size, 30 mm off
    sitk.WriteImage(mask, str(path))
    with pytest.raises(ImageError, match=f"subject {sid}: liver_mask and water differ.*origin"):
        manifest.liver_mask(sid)
    assert manifest.liver_mask(manifest.subject_ids[1]).GetSize() == mask.GetSize()


def test_check_finds_layouts_every_engine_would_trip_over(
    phantom_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "cohort"
    shutil.copytree(phantom_dir, copy)
    table = pd.read_csv(copy / "subjects.csv", dtype=str, keep_default_na=False)
    table.drop(columns=["fat"]).iloc[:0].to_csv(copy / "subjects.csv", index=False)
    text = "\n".join(Manifest.load(copy).problems())
    assert "no subjects (a header without rows)" in text
    assert "water and fat come in pairs; no fat column" in text


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"liver_label": "liver"}, "card key liver_label: Input should be a valid integer"),
        ({"splits": "A"}, "card key splits: Input should be a valid dictionary"),
        (
            {"targets": {"liver_pdff_pct": {"range": [0]}}},
            "card key targets.liver_pdff_pct.range.1: Field required",
        ),
        (
            {"targets": {"liver_pdff_pct": {"range": [10, 0]}}},
            "card key targets.liver_pdff_pct: range must be [low, high] with low < high",
        ),
    ],
)
def test_a_malformed_card_is_one_line_naming_the_key(
    phantom_dir: Path, tmp_path: Path, change, expected
) -> None:
    copy = tmp_path / "cohort"
    shutil.copytree(phantom_dir, copy)
    card = yaml.safe_load((copy / "manifest.yaml").read_text(encoding="utf-8"))
    (copy / "manifest.yaml").write_text(yaml.safe_dump({**card, **change}), encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        Manifest.load(copy)
    assert expected in str(caught.value) and "\n" not in str(caught.value), caught.value


def test_a_card_that_is_not_utf8_is_one_line(phantom_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cohort"
    shutil.copytree(phantom_dir, copy)
    (copy / "manifest.yaml").write_bytes(b"name: \xff\xfe broken\n")
    with pytest.raises(ManifestError, match="not valid YAML for the card"):
        Manifest.load(copy)


def test_check_finds_empty_masks_and_images_that_are_not_volumes(
    phantom_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "cohort"
    shutil.copytree(phantom_dir, copy)
    manifest = Manifest.load(copy)
    first, second, third = manifest.subject_ids[:3]
    mask = manifest.image_path(first, "liver_mask")
    empty = sitk.Image(sitk.ReadImage(str(mask)).GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(sitk.ReadImage(str(mask)))
    sitk.WriteImage(empty, str(mask))
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkUInt16), str(manifest.image_path(second, "water")))
    vector = sitk.Image([8, 8, 8], sitk.sitkVectorUInt16, 3)
    sitk.WriteImage(vector, str(manifest.image_path(third, "fat")))
    text = "\n".join(Manifest.load(copy).problems(check_geometry=False))
    assert f"subject {first}: liver_mask: {mask}: the liver mask is empty" in text
    assert f"subject {second}: water:" in text and "a 2D image; a 3D volume is needed" in text
    assert f"subject {third}: fat:" in text and "a vector image (3 components per voxel)" in text


def test_check_finds_blank_images_and_roi_files_off_the_grid(
    phantom_dir: Path, tmp_path: Path
) -> None:
    """An all-zero water image and ROI JSON that is not ROIs or
    leaves the grid are listed; good ROI JSON (both forms) passes."""
    copy = tmp_path / "cohort"
    shutil.copytree(phantom_dir, copy)
    manifest = Manifest.load(copy)
    ids = manifest.subject_ids
    water = manifest.image_path(ids[0], "water")
    blank = sitk.Image(sitk.ReadImage(str(water)).GetSize(), sitk.sitkUInt16)
    blank.CopyInformation(sitk.ReadImage(str(water)))
    sitk.WriteImage(blank, str(water))
    size_zyx = tuple(reversed(blank.GetSize()))
    files = {
        ids[2]: json.dumps([{"slice": 0, "row": 0, "column": 0, "size": 4}]),
        ids[3]: json.dumps(
            {"subject_id": ids[3], "rois": [{"slice": 1, "row": 2, "column": 2, "size": 4}]}
        ),
        ids[4]: json.dumps([{"slice": size_zyx[0], "row": 0, "column": 0, "size": 4}]),
        ids[5]: "not json",
    }
    for sid, text in files.items():
        (copy / f"{sid}_rois.json").write_text(text, encoding="utf-8")
    table = pd.read_csv(copy / "subjects.csv", dtype=str, keep_default_na=False)
    table["rois"] = [f"{s}_rois.json" if s in files else "" for s in table["subject_id"]]
    table.to_csv(copy / "subjects.csv", index=False)
    problems = Manifest.load(copy).problems(check_geometry=False)
    text = "\n".join(problems)
    assert f"subject {ids[0]}: water:" in text
    assert f"subject {ids[4]}: rois:" in text and "outside the image grid" in text
    assert f"subject {ids[5]}: rois:" in text
    assert not [p for p in problems if ids[2] in p or ids[3] in p]


def test_participants_visits_and_their_problems(tmp_path: Path) -> None:
    from tests.conftest import write_pdff_manifest

    rows = [
        {"subject_id": "a", "participant_id": "p1", "visit": "2", "image": "x.nii.gz"},
        {"subject_id": "a_v3", "participant_id": "p1", "visit": "3", "image": "x.nii.gz"},
        {"subject_id": "b", "participant_id": "", "visit": "2", "image": "x.nii.gz"},
        {"subject_id": "c", "participant_id": "p1", "visit": "3", "image": "x.nii.gz"},
        {"subject_id": "d", "participant_id": "p4", "visit": "two", "image": "x.nii.gz"},
    ]
    manifest = write_pdff_manifest(tmp_path, rows, "visits")
    assert manifest.participants() == {"a": "p1", "a_v3": "p1", "b": "b", "c": "p1", "d": "p4"}
    assert manifest.visits().tolist()[:4] == [2.0, 3.0, 2.0, 3.0]
    problems = manifest.problems(check_files=False)
    assert "subjects.csv: participant_id p1 visit 3 appears more than once" in problems
    assert "subjects.csv: subject d: visit 'two' is not a whole number" in problems
    plain = write_pdff_manifest(tmp_path, [{"subject_id": "a", "image": "x.nii.gz"}], "plain")
    assert plain.participants() is None and plain.visits().isna().all()
