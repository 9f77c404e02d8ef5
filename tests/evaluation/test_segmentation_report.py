"""Mask overlay figures and the segmentation report section (on a 4-subject phantom)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from liverfat.data.io import write_volume
from liverfat.data.manifest import Manifest
from liverfat.evaluation.overlays import mask_overlay_figure
from liverfat.evaluation.plots import figure_to_png
from liverfat.evaluation.segmentation import dice, segmentation_metrics
from liverfat.evaluation.segmentation_report import (
    SUMMARY_METRICS,
    segmentation_run,
    segmentation_section,
    segmentation_sections,
    shown_subjects,
)
from tests.conftest import write_shifted_masks

SPACING = (3.0, 1.5, 2.0)  # mm along (z, y, x)
PNG = b"\x89PNG\r\n\x1a\n"


def _ellipsoid(shape, centre, radii):
    grid = np.indices(shape).astype(float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


@pytest.fixture
def volumes():
    shape = (20, 32, 30)
    image = np.indices(shape)[0].astype(float)  # intensity = z index: shows the orientation
    reference = _ellipsoid(shape, (12, 16, 15), (5, 9, 8))
    predicted = _ellipsoid(shape, (11, 15, 16), (5, 10, 7))
    return image, reference, predicted


def test_overlay_figure_views_aspect_and_title(volumes):
    image, reference, predicted = volumes
    fig = mask_overlay_figure(
        image, reference, predicted, spacing_mm=SPACING, title="s1", margin_mm=None
    )
    assert len(fig.axes) == 3
    axial, coronal, sagittal = fig.axes
    # Physical aspect: rows/columns are (y, x), (z, x) and (z, y).
    assert [ax.get_aspect() for ax in fig.axes] == pytest.approx([1.5 / 2.0, 3.0 / 2.0, 3.0 / 1.5])
    # Each view is the slice with the most reference voxels.
    assert axial.get_title() == f"axial slice {np.argmax(reference.sum(axis=(1, 2)))}"
    assert coronal.get_title() == f"coronal slice {np.argmax(reference.sum(axis=(0, 2)))}"
    assert sagittal.get_title() == f"sagittal slice {np.argmax(reference.sum(axis=(0, 1)))}"
    shown = [ax.images[0].get_array() for ax in fig.axes]
    assert [s.shape for s in shown] == [(32, 30), (20, 30), (20, 32)]
    assert shown[1][0, 0] == 19 and shown[1][-1, 0] == 0  # superior at the top
    assert all(len(ax.collections) == 2 for ax in fig.axes)  # both contours in every view
    assert fig.get_suptitle() == f"s1: Dice {dice(reference, predicted):.3f}"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["reference", "predicted"]
    assert figure_to_png(fig)[:8] == PNG


def test_overlay_figure_crops_and_draws_an_empty_prediction(volumes):
    image, reference, _ = volumes
    fig = mask_overlay_figure(image, reference, np.zeros_like(reference), spacing_mm=SPACING)
    assert fig.get_suptitle() == "Dice 0.000"
    assert all(len(ax.collections) == 1 for ax in fig.axes)
    # Cropped to the reference plus 40 mm: 20 voxels of 2 mm either side of x 7..23, so all 30.
    axial = fig.axes[0].images[0].get_array()
    assert axial.shape[1] == 30 and figure_to_png(fig)[:8] == PNG
    small = mask_overlay_figure(image, reference, reference, spacing_mm=SPACING, margin_mm=2.0)
    assert small.axes[0].images[0].get_array().shape == (19 + 2 * 2, 17 + 2 * 1)
    with pytest.raises(ValueError, match="one shape"):
        mask_overlay_figure(image, reference[:-1], reference[:-1], spacing_mm=SPACING)
    with pytest.raises(ValueError, match="spacing_mm"):
        mask_overlay_figure(image, reference, reference, spacing_mm=(1.0, 1.0))


SHIFTS = {"P0001": 0, "P0002": 1, "P0003": 3, "P0004": 2}  # voxels along x


@pytest.fixture(scope="module")
def segmented(small_phantom_dir, tmp_path_factory):
    manifest = Manifest.load(small_phantom_dir)
    records, masks = write_shifted_masks(manifest, tmp_path_factory.mktemp("masks"), SHIFTS)
    return manifest, records, masks


def test_section_tables_and_figures(segmented, tmp_path):
    manifest, records, masks = segmented
    ghost = {**records[0], "subject_id": "ghost"}
    section = segmentation_section([*records, ghost], manifest, method="unet", masks=masks)
    assert section.title == "Segmentation: unet"
    assert "left out: ghost." in section.text
    summary = section.table.set_index("metric")
    assert list(summary.index) == list(SUMMARY_METRICS)
    for metric in SUMMARY_METRICS:
        values = np.array([r[metric] for r in records])
        assert summary.loc[metric, "median"] == pytest.approx(np.median(values))
        assert summary.loc[metric, "mean"] == pytest.approx(values.mean())
    (heading, per_subject), *_ = section.tables
    by_dice = sorted(records, key=lambda r: r["dice"])
    assert per_subject["subject_id"].tolist() == [r["subject_id"] for r in by_dice]
    assert by_dice[-1]["subject_id"] == "P0001" and by_dice[-1]["dice"] == 1.0
    # Worst and median (the 2nd of 4) by Dice, each drawn from its own mask file.
    worst, median = by_dice[0], by_dice[1]
    assert [f.caption.split(", ")[1].split(" (")[0] for f in section.figures] == [
        worst["subject_id"],
        median["subject_id"],
    ]
    assert (
        f"(Dice {worst['dice']:.3f}, HD95 {worst['hd95_mm']:.1f} mm" in section.figures[0].caption
    )
    for item, record in zip(section.figures, (worst, median), strict=True):
        assert len(item.figure.axes) == 3
        assert item.figure.get_suptitle().endswith(f"Dice {record['dice']:.3f}")
    png = tmp_path / "worst.png"
    png.write_bytes(figure_to_png(section.figures[0].figure))
    assert png.read_bytes()[:8] == PNG


def test_section_leaves_out_subjects_without_reference(segmented, tmp_path):
    manifest, records, masks = segmented
    # The same cohort with P0003's liver mask cell emptied, the images left where they are.
    shutil.copy(manifest.path, tmp_path / "manifest.yaml")
    table = pd.read_csv(manifest.table_path, dtype=str, keep_default_na=False)
    table.loc[table["subject_id"] == "P0003", "liver_mask"] = ""
    table.to_csv(tmp_path / manifest.table_path.name, index=False)
    partial = Manifest.load(tmp_path / "manifest.yaml", data_root=manifest.root)
    broken = {**masks, "P0004": str(tmp_path / "missing.nii.gz")}
    section = segmentation_section(records, partial, method="unet", masks=broken)
    per_subject = section.tables[0][1]
    assert sorted(per_subject["subject_id"]) == ["P0001", "P0002", "P0004"]
    assert "1 subject(s) without a reference liver mask" in section.text and "P0003" in section.text
    # P0004 is now the worst; its mask file is gone: no figure, and the text says why.
    assert per_subject["subject_id"].iloc[0] == "P0004"
    assert "No figure for P0004" in section.text and "file not found" in section.text
    assert len(section.figures) == 1 and "P0002" in section.figures[0].caption
    empty = segmentation_section(records[2:3], partial, method="unet", masks=masks)
    assert empty.table is None and "No subject with a reference liver mask" in empty.text


def test_runs_of_a_study_keep_the_first_record(segmented):
    manifest, records, masks = segmented
    later = [{**r, "dice": 0.5} for r in records]
    run = {
        "method": "unet",
        "parts": [
            {"parts": [{"segmentation": records[:2], "masks": masks}]},  # nested, as concat does
            {"segmentation": later, "masks": {s: "/elsewhere.nii.gz" for s in masks}},
        ],
    }
    found, paths = segmentation_run(run)
    assert [r["dice"] for r in found] == [r["dice"] for r in records[:2]] + [0.5, 0.5]
    assert paths["P0001"] == masks["P0001"] and paths["P0004"] == "/elsewhere.nii.gz"
    sections = segmentation_sections({"unet": run, "atlas": {"method": "atlas"}}, manifest)
    assert [s.title for s in sections] == ["Segmentation: unet"]
    assert shown_subjects(pd.DataFrame({"subject_id": ["a"], "dice": [0.9]})) == [("worst", "a")]


def test_an_empty_prediction_is_drawn_as_the_worst(segmented, tmp_path):
    manifest, records, masks = segmented
    reference = manifest.liver_mask("P0002")
    empty = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(reference)
    path = write_volume(empty, tmp_path / "P0002_empty.nii.gz")
    array = sitk.GetArrayFromImage(reference)
    record = {
        "subject_id": "P0002",
        **segmentation_metrics(array, np.zeros_like(array), reference.GetSpacing()[::-1]),
    }
    others = [r for r in records if r["subject_id"] != "P0002"]
    section = segmentation_section(
        [*others, record], manifest, method="unet", masks={**masks, "P0002": str(path)}
    )
    assert section.tables[0][1]["subject_id"].iloc[0] == "P0002"
    worst = section.figures[0]
    assert "P0002 (Dice 0.000, HD95 n/a mm, RAVD 100.0 %)" in worst.caption
    assert worst.figure.get_suptitle().endswith("Dice 0.000")
    summary = section.table.set_index("metric")
    assert summary.loc["hd95_mm", "n"] == 3 and summary.loc["dice", "n"] == 4
