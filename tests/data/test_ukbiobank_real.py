"""UK Biobank ingestion of realistic zips: unequal stations, the shifted ``manifest.cvs``, no
rescale tags, and the faults real zips show (swaps, missing stations and series, water and fat
of different size, stray files)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from liverfat.cli import main
from liverfat.data.dixon import fat_fraction
from liverfat.data.manifest import Manifest
from liverfat.data.ukbiobank import (
    IngestJob,
    ingest_ukb,
    ingest_zip,
    number_stations,
    read_stations,
)
from liverfat.data.ukbiobank.realistic import body_signal_on, write_realistic_zip

NATIVE_MM = 500 / 224


def _zip(folder: Path, eid: int, **faults) -> Path:
    return write_realistic_zip(folder / f"{eid}_20201_2_0.zip", eid=eid, **faults)


def _tiny(folder: Path, eid: int, **faults) -> dict:
    """Ingest a tiny (shrink 4) realistic zip; stations of 11-18 slices keep all (no trim)."""
    job = IngestJob(str(_zip(folder, eid, shrink=4, **faults)), str(folder / "out"), trim_slices=0)
    return ingest_zip(job)


def _fused(out: Path, record: dict, key: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / record[key])))


@pytest.fixture(scope="module")
def real_zip(tmp_path_factory) -> Path:
    """Full-size stations; station 3 (from the head) swapped, station 5 missing."""
    return _zip(tmp_path_factory.mktemp("ukb_real"), 3000001, swap_station=3, drop_station=5)


def test_realistic_fixture_is_shaped_like_a_real_zip(real_zip):
    with zipfile.ZipFile(real_zip) as archive:
        manifest = archive.read("manifest.cvs").decode().splitlines()
        first_dicom = next(n for n in archive.namelist() if n.endswith(".dcm"))
        ds = pydicom.dcmread(io.BytesIO(archive.read(first_dicom)))
    header, row = manifest[0].split(","), manifest[1].split(",")
    assert header[-1] == "series discription" and "May 12" in manifest[1]
    assert len(row) == len(header) + 1  # the date's comma shifts every later value
    assert "RescaleSlope" not in ds and "RescaleIntercept" not in ds


def test_realistic_zip_is_fused_at_native_spacing_with_its_swap_corrected(real_zip, tmp_path):
    """Unequal stations fused on the native 2.2321 mm pixels; the swapped station found, recorded
    and swapped back; the missing station's gap flagged and named."""
    out = tmp_path / "out"
    result = ingest_ukb([real_zip], out, executor="serial", progress=False)
    row = result.status.iloc[0]
    assert (row["status"], row["n_stations"], row["n_series"]) == ("flagged", 5, 20)
    message = row["message"]
    assert "20 of 24 series" in message
    assert "station 5 of 6 (from the head) missing: z-gap " in message
    assert "zero-filled" in message and "fewer than 370" not in message
    assert "station 3 of 6: water and fat swapped (swap score +" in message
    assert message.endswith("swapped back") and row["swapped_stations"] == "3"

    stations = read_stations(out).set_index("station")
    assert list(stations.index) == [1, 2, 3, 4, 6]
    assert list(stations["size_xyz"]) == [
        "224x168x60",  # 64, 44 and 72 slices less 2 trimmed at each end
        *["224x174x40"] * 3,
        "224x156x60",
    ]
    assert list(stations["swap"]) == ["normal", "normal", "swapped", "normal", "normal"]
    assert list(stations["swap_corrected"]) == [False, False, True, False, False]
    assert stations.loc[3, "swap_score"] > 10 > -10 > stations["swap_score"].drop(3).max()

    manifest = Manifest.load(out)
    sid = "3000001_2"
    assert manifest.row(sid)["ingest_status"] == "flagged"
    assert manifest.row(sid)["swapped_stations"] == "3"
    water = manifest.read_image(sid, "water")
    assert water.GetSpacing() == pytest.approx((NATIVE_MM, NATIVE_MM, 3.0), rel=1e-6)
    assert water.GetSize()[:2] == (224, 174) and water.GetSize()[2] >= 370

    truth_ff = fat_fraction(*body_signal_on(water))
    fused_ff = sitk.GetArrayFromImage(manifest.read_image(sid, "fat_fraction", allow_empty=True))
    body = sitk.GetArrayFromImage(manifest.read_image(sid, "body_mask")) > 0
    z = water.GetOrigin()[2] + 3.0 * np.arange(water.GetSize()[2])
    low, high = stations.loc[3, ["z_low_mm", "z_high_mm"]]
    inside = (z > low + 20) & (z < high - 20)  # the swapped station, clear of its seams
    region = body & inside[:, None, None]
    difference = np.abs(fused_ff - truth_ff)[region]
    print(f"\nswapped station: median |FF - truth| {np.median(difference):.3f} pp")
    assert region.sum() > 10_000
    assert np.median(difference) < 0.1 and np.mean(difference < 1.0) > 0.97
    assert abs(fused_ff[region].mean() - truth_ff[region].mean()) < 0.5  # uncorrected: ~40 pp

    gap = (z > stations.loc[6, "z_high_mm"]) & (z < stations.loc[4, "z_low_mm"])
    assert gap.sum() > 50 and not sitk.GetArrayViewFromImage(water)[gap].any()  # zero-filled


def test_a_corrected_swap_gives_the_unswapped_fusion(tmp_path):
    normal = _tiny(tmp_path, 3000010)
    swapped = _tiny(tmp_path, 3000011, swap_station=2)
    assert normal["status"] == "ok" and normal["flags"] == [] and normal["notes"] == []
    assert swapped["status"] == "ok" and swapped["notes"][0].startswith("station 2 of 6:")
    out = tmp_path / "out"
    assert np.array_equal(_fused(out, normal, "fat_fraction"), _fused(out, swapped, "fat_fraction"))

    kept = ingest_zip(
        IngestJob(
            str(_zip(tmp_path, 3000012, shrink=4, swap_station=2)),
            str(out),
            trim_slices=0,
            fix_swaps=False,
        )
    )
    assert kept["status"] == "flagged"
    assert kept["flags"][0].endswith("not corrected")
    assert [s["swap"] for s in kept["stations"]] == ["normal", "swapped", *["normal"] * 4]
    assert not np.array_equal(_fused(out, normal, "fat"), _fused(out, kept, "fat"))


def test_command_line_keeps_swaps_when_asked_and_reports_the_flag(tmp_path, capsys):
    zip_path = _zip(tmp_path, 3000015, shrink=4, swap_station=4)
    argv = ["ingest", "ukb", str(zip_path), "--out", str(tmp_path / "cli"), "--trim-slices", "0"]
    assert main([*argv, "--keep-swaps", "--executor", "serial", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "liverfat ingest ukb: flagged: 3000015_2: station 4 of 6: water and fat swapped (swap "
        f"score +{read_stations(tmp_path / 'cli')['swap_score'].max():.1f} pp > 10), not corrected"
    ]
    assert "ingested 1 of 1 zip(s) (1 flagged), 0 failed" in captured.out


def test_a_missing_end_station_and_series_are_flagged(tmp_path):
    record = _tiny(tmp_path, 3000020, drop_station=1, skip_series=[(4, "opp")])
    assert record["status"] == "flagged"
    assert record["flags"][:2] == ["19 of 24 series", "station 4 of 6: no opposed_phase series"]
    assert "station 1 of 6 (from the head, head end) missing" in record["flags"]
    assert any(f.startswith("fused volume has ") for f in record["flags"])
    assert [s["station"] for s in record["stations"]] == [2, 3, 4, 5, 6]


def test_a_stray_non_dicom_file_is_skipped_and_noted(tmp_path):
    stray = ("notes.txt", b"scanner log: nothing to see\n" * 50)
    record = _tiny(tmp_path, 3000030, extra_members=[stray])
    assert record["status"] == "ok" and record["flags"] == []
    assert record["notes"] == ["skipped non-DICOM member notes.txt"]


def test_water_and_fat_of_different_size_are_cropped_to_the_common_size(tmp_path):
    record = _tiny(tmp_path, 3000040, crop_fat_station=1)  # fat: 2 rows, 1 slice fewer
    assert record["status"] == "ok", record["flags"]
    assert record["notes"] == [
        "station 1 of 6: water and fat differ in size (56x42x16 vs 56x40x15 voxels), cropped "
        "to the common 56x40x15"
    ]
    assert record["stations"][0]["size_xyz"] == [56, 40, 15]
    assert record["stations"][0]["cropped"] == record["notes"][0]
    reference = _tiny(tmp_path, 3000041)
    out = tmp_path / "out"
    cropped_ff = _fused(out, record, "fat_fraction")
    reference_ff = _fused(out, reference, "fat_fraction")
    n = min(len(cropped_ff), len(reference_ff))  # the head end lost one slice of 12 mm
    body = _fused(out, reference, "body_mask")[:n] > 0
    assert np.mean(np.abs(cropped_ff[:n] - reference_ff[:n])[body] < 1.0) > 0.95


@pytest.mark.parametrize(
    ("breath_hold", "gaps", "numbers", "missing", "certain"),
    [
        ([False, True, True, True, False, False], [False] * 5, (1, 2, 3, 4, 5, 6), (), True),
        (
            [False, True, True, False, False],
            [False, False, True, False],
            (1, 2, 3, 5, 6),
            (4,),
            True,
        ),
        ([True, True, True, False, False], [False] * 4, (2, 3, 4, 5, 6), (1,), True),
        ([False, True, True, True, False], [False] * 4, (1, 2, 3, 4, 5), (6,), True),
        ([True, True, True, False], [False, False, True], (2, 3, 4, 6), (1, 5), True),
        ([False, False], [True], (), (), False),  # stations 1 and 5, or 1 and 6?
    ],
)
def test_stations_are_numbered_from_the_head(breath_hold, gaps, numbers, missing, certain):
    numbering = number_stations(breath_hold, gaps)
    assert numbering.certain == certain
    if certain:
        assert (numbering.numbers, numbering.missing) == (numbers, missing)
