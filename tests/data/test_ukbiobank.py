"""UK Biobank ingestion: synthetic six-station zips from phantom volumes, round trip, bad zips.

The realistic zips (unequal stations, swaps, missing stations) are tested in
``test_ukbiobank_real.py``.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import yaml

from liverfat.cli import main
from liverfat.data.dixon import fat_fraction
from liverfat.data.manifest import Manifest
from liverfat.data.phantom import Grid, PhantomConfig, build_subject
from liverfat.data.ukbiobank import (
    OUTPUT_SPACING_MM,
    UKB_FIELDS,
    IngestJob,
    Series,
    dataset_card,
    fuse_stations,
    fusion_grid,
    ingest_ukb,
    ingest_zip,
    manifest_filenames,
    read_fields,
    read_stations,
    read_status,
    select_stations,
    series_kind,
    subject_fields,
)
from liverfat.data.ukbiobank.synthetic import write_phantom_zip
from liverfat.errors import ImageError

REPO = Path(__file__).resolve().parents[2]
GOOD_EID = 1000000
QUARTER = Grid.at_scale("quarter")
#: Tests other than the round trip fuse onto the phantom's own quarter-scale grid (fast).
COARSE_MM = QUARTER.spacing


@pytest.fixture(scope="module")
def ukb_good_zip(tmp_path_factory) -> Path:
    """Phantom subject 0 as a six-station zip; station 3 acquired twice (the older one halved)."""
    folder = tmp_path_factory.mktemp("ukb_zips")
    return write_phantom_zip(folder, 0, seed=0, eid=GOOD_EID, repeat_station=3)


def _members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _rewrite(path: Path, members, *, stored: set[str] = frozenset()) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            kind = zipfile.ZIP_STORED if name in stored else zipfile.ZIP_DEFLATED
            archive.writestr(name, data, compress_type=kind)
    return path


def _first_slice(members, suffix: str = "_W") -> int:
    for index, (name, data) in enumerate(members):
        if name.endswith(".dcm"):
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            if ds.SeriesDescription.endswith(suffix):
                return index
    raise AssertionError("no such slice")


@pytest.fixture(scope="module")
def ukb_bad_zips(ukb_good_zip, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """One malformed zip per failure mode: {case: (zip path, words the error must contain)}."""
    folder = tmp_path_factory.mktemp("ukb_bad")
    good = _members(ukb_good_zip)
    cases: dict[str, tuple[Path, str]] = {}

    def path(eid: int) -> Path:
        return folder / f"{eid}_20201_2_0.zip"

    cases["zip_slip"] = (
        _rewrite(path(2000001), [*good, ("../../outside/evil.dcm", good[1][1])]),
        "escapes the output folder",
    )
    cases["zip_bomb"] = (
        _rewrite(path(2000002), [*good, ("padding.bin", bytes(32 * 2**20))]),
        "zip bomb",
    )
    whole = ukb_good_zip.read_bytes()
    truncated = path(2000003)
    truncated.write_bytes(whole[: len(whole) * 2 // 3])
    cases["truncated_zip"] = (truncated, "not a readable zip")

    victim = _first_slice(good)
    corrupt = _rewrite(path(2000004), good, stored={good[victim][0]})
    raw = bytearray(corrupt.read_bytes())
    data = good[victim][1]
    offset = bytes(raw).find(data) + len(data) // 2
    raw[offset] ^= 0xFF  # flip one byte inside a member's stored data
    corrupt.write_bytes(bytes(raw))
    cases["corrupt_member"] = (corrupt, "truncated or corrupt")

    ds = pydicom.dcmread(io.BytesIO(good[victim][1]))
    ds.PixelData = ds.PixelData[:100]  # header intact, pixel data cut short
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    damaged = list(good)
    damaged[victim] = (good[victim][0], buffer.getvalue())
    cases["unreadable_slice"] = (_rewrite(path(2000006), damaged), "unreadable pixel data")

    missing = [m for i, m in enumerate(good) if i != victim]
    cases["missing_member"] = (_rewrite(path(2000007), missing), "its manifest lists")

    odd_name = folder / "scan_of_someone.zip"
    odd_name.write_bytes(whole)
    cases["bad_name"] = (odd_name, "not a UK Biobank Dixon zip name")
    return cases


@pytest.fixture(scope="module")
def ukb_fields_csv(tmp_path_factory) -> Path:
    """A classic-format CSV extract for the good subject (and an unrelated participant)."""
    path = tmp_path_factory.mktemp("ukb_fields") / "ukb_extract.csv"
    pd.DataFrame(
        {
            "eid": [str(GOOD_EID), "5555555"],
            "31-0.0": ["1", "0"],
            "34-0.0": ["1950", "1960"],
            "52-0.0": ["3", "7"],
            "53-2.0": ["2016-05-12", "2017-01-01"],
            "12144-2.0": ["178", "160"],
            "21002-2.0": ["85.2", "60"],
            "21001-2.0": ["26.9", "23.4"],
            "22402-2.0": ["4.81", ""],
            "22436-2.0": ["5.1", ""],
            "22402-3.0": ["9.99", ""],  # the repeat visit: must not be read for instance 2
        }
    ).to_csv(path, index=False)
    return path


# Round trip ------------------------------------------------------------------------------------


def test_round_trip_reproduces_the_phantom_fat_fraction(ukb_good_zip, tmp_path):
    """phantom -> six-station zip -> ingestion -> fused volume on the native x 3 mm grid."""
    out = tmp_path / "ingested"
    result = ingest_ukb([ukb_good_zip], out, executor="serial", progress=False)
    assert result.n_ingested == 1, result.status.to_dict("records")
    # z spans the slice centres left after trimming 2 slices at both ends of the scan: the
    # phantom spans exactly 370 slices of 3 mm, so fewer are left, and the subject is flagged.
    kept_mm = (QUARTER.shape[0] - 1 - 4) * QUARTER.spacing[2]
    n_slices = int(kept_mm // 3.0) + 1
    row = result.status.iloc[0]
    assert row["status"] == "flagged"
    assert row["message"] == f"{GOOD_EID}_2: fused volume has {n_slices} slices, fewer than 370"
    manifest = Manifest.load(out)
    assert manifest.problems() == []
    sid = f"{GOOD_EID}_2"
    assert manifest.row(sid)["ingest_status"] == "flagged"
    water = manifest.read_image(sid, "water")
    # The stations' own pixels (no in-plane resampling), 3 mm slices.
    assert np.allclose(water.GetSpacing(), (*QUARTER.spacing[:2], 3.0), rtol=1e-6)
    assert water.GetSize()[:2] == QUARTER.size[:2]
    assert set(read_stations(out)["swap"]) == {"normal"}  # no false swap on the phantom
    assert water.GetSize()[2] == n_slices

    arrays, _ = build_subject(0, 0, "quarter", PhantomConfig(), "A")

    def on_fused_grid(array: np.ndarray) -> np.ndarray:
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.SetSpacing(QUARTER.spacing)
        image.SetOrigin(QUARTER.origin)
        resampled = sitk.Resample(image, water, sitk.Transform(), sitk.sitkLinear, 0.0)
        return sitk.GetArrayFromImage(resampled)

    expected_ff = fat_fraction(on_fused_grid(arrays["water"]), on_fused_grid(arrays["fat"]))
    fused_ff = sitk.GetArrayFromImage(manifest.read_image(sid, "fat_fraction", allow_empty=True))
    body = sitk.GetArrayFromImage(manifest.read_image(sid, "body_mask")) > 0
    assert body.mean() > 0.15  # the body fills a good part of the field of view
    difference = np.abs(fused_ff - expected_ff)[body]
    print(
        f"\nround trip: max |FF difference| in body {difference.max():.3f} %, "
        f"99th percentile {np.percentile(difference, 99):.3f} %, "
        f"median {np.median(difference):.4f} %"
    )
    # Only the DICOM quantisation (0.1 signal units) remains; keeping the older, halved copy of
    # the repeated station would also show here; a wrong station, slice order, seam
    # or half-voxel shift gives tens of percent at the fat-muscle boundaries.
    assert difference.max() < 0.5
    dixon = manifest.dixon(sid)
    assert dixon.fat_fraction.GetSize() == water.GetSize()


# Bad zips --------------------------------------------------------------------------------------


def test_every_bad_zip_fails_alone_and_the_batch_goes_on(
    ukb_good_zip, ukb_bad_zips, ukb_fields_csv, tmp_path, capsys
):
    out = tmp_path / "batch"
    zips = [ukb_good_zip, *(path for path, _ in ukb_bad_zips.values())]
    argv = ["ingest", "ukb", *map(str, zips), "--out", str(out), "--fields", str(ukb_fields_csv)]
    argv += ["--spacing-mm", *map(str, COARSE_MM), "--executor", "processes", "--workers", "2"]
    argv += ["--min-slices", "80"]  # the phantom fused at 12 mm: 88 slices, not flagged
    assert main([*argv, "--quiet"]) == 1
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == len(ukb_bad_zips)  # one line per bad zip, no traceback
    status = read_status(out).set_index("subject_id")
    assert len(status) == len(zips)
    assert status.loc[f"{GOOD_EID}_2", "status"] == "ok"
    for case, (path, words) in ukb_bad_zips.items():
        sid = path.stem if case == "bad_name" else path.name.split("_20201_")[0] + "_2"
        row = status.loc[sid]
        assert row["status"] == "failed", case
        assert words in row["message"], (case, row["message"])
        assert "\n" not in row["message"]
        assert any(sid in line or path.name in line for line in stderr), case
    assert not (tmp_path / "outside").exists()

    manifest = Manifest.load(out)
    assert manifest.problems() == []
    assert manifest.subject_ids == [f"{GOOD_EID}_2"]
    row = manifest.row(f"{GOOD_EID}_2")
    assert row["split"] == "A"
    assert manifest.target("liver_pdff_pct").iloc[0] == pytest.approx(4.81)
    assert manifest.target("liver_pdff_22436_pct").iloc[0] == pytest.approx(5.1)
    assert (row["sex"], row["height"], row["weight"], row["bmi"]) == (1, 178, 85.2, 26.9)
    # 1950-03-15 to 2016-05-12: 66 years and 58 days.
    assert row["age"] == pytest.approx(66 + 58 / 365.25, abs=0.01)

    # Rerun: the finished subject is skipped (its files untouched), the failures are retried.
    done = out / "images" / f"{GOOD_EID}_2" / "ingest.json"
    stamp = done.stat().st_mtime_ns
    water_stamp = (out / manifest.subjects["water"].iloc[0]).stat().st_mtime_ns
    assert main([*argv, "--quiet"]) == 1
    assert done.stat().st_mtime_ns == stamp
    assert (out / manifest.subjects["water"].iloc[0]).stat().st_mtime_ns == water_stamp
    assert (read_status(out)["status"] == "failed").sum() == len(ukb_bad_zips)


def test_a_finished_subject_is_not_redone(ukb_good_zip, tmp_path):
    job = IngestJob(str(ukb_good_zip), str(tmp_path), COARSE_MM)
    first = ingest_zip(job)
    assert first["n_stations"] == 6
    assert first["series_kinds"] == ["fat", "in_phase", "opposed_phase", "water"]
    (tmp_path / first["water"]).unlink()  # a finished subject is trusted, not re-read
    assert ingest_zip(job) == json.loads(json.dumps(first))


# Pieces ----------------------------------------------------------------------------------------


def test_manifest_columns_are_found_by_content_not_header():
    text = (
        "filename,patientid,studyid,aet,date\n"
        "1,a.dcm,123,1.2.3,AET,20160512\n"
        "2,b.dcm,123,1.2.3,AET,20160512\n"
        "3,1.2.840.1.2.3.4.dcm,123,1.2.3,AET,20160512\n"
    )
    listed = manifest_filenames(text, ["a.dcm", "b.dcm", "manifest.csv"])
    assert listed == {"a.dcm", "b.dcm", "1.2.840.1.2.3.4.dcm"}  # the last is missing from the zip


@pytest.mark.parametrize(
    ("description", "kind"),
    [
        ("Dixon_noBH_W", "water"),
        ("Dixon_BH_17s_F", "fat"),
        ("Dixon_noBH_in", "in_phase"),
        ("Dixon_BH_17s_opp", "opposed_phase"),
        ("localizer", None),
        ("Dixon_noBH_W_other", None),
    ],
)
def test_series_kinds_from_descriptions(description, kind):
    assert series_kind(description) == kind


def _station(value: float, z0_mm: float, n_slices: int) -> sitk.Image:
    image = sitk.GetImageFromArray(np.full((n_slices, 4, 5), value, np.float32))
    image.SetSpacing((2.0, 2.0, 3.0))
    image.SetOrigin((0.0, 0.0, z0_mm))
    return image


def test_overlaps_are_blended_linearly_across_the_seam():
    lower = _station(100.0, 0.0, 20)  # slice centres 0 .. 57 mm
    upper = _station(200.0, 45.0, 20)  # 45 .. 102 mm: overlap 45-57 mm
    grid = fusion_grid([lower, upper], (2.0, 2.0, 1.5))
    assert grid.GetSize() == (5, 4, 69)  # 0 .. 102 mm in 1.5 mm steps
    fused = fuse_stations([lower, upper], grid)[:, 2, 2]
    z = np.arange(grid.GetSize()[2]) * 1.5
    assert np.all(fused[z < 45] == 100) and np.all(fused[z > 57] == 200)
    seam = fused[(z >= 45) & (z <= 57)]
    assert np.all(np.diff(seam) > 0)
    assert np.allclose(np.diff(seam, 2), 0, atol=1e-3)  # a straight ramp
    # Weights are distance to the station's own end + half an output slice (0.75 mm).
    assert seam[0] == pytest.approx(100 + 100 * 0.75 / 13.5, abs=1e-3)


def test_fields_are_read_in_both_extract_styles(tmp_path):
    classic = tmp_path / "classic.csv"
    classic.write_text(
        "eid,31-0.0,34-0.0,52-0.0,22402-2.0,21001-2.0\n42,0,1960,12,3.5,31.0\n", encoding="utf-8"
    )
    rap = tmp_path / "rap.csv"
    rap.write_text(
        "eid,p31,p34,p52,p22402_i2,p21001_i2,p53_i2\n42,0,1960,12,3.5,31.0,2018-12-15\n",
        encoding="utf-8",
    )
    for path in (classic, rap):
        values = subject_fields(read_fields(path), "42", 2, study_date="20181215")
        assert values["liver_pdff_pct"] == 3.5 and values["bmi"] == 31.0 and values["sex"] == 0
        assert values["age"] == pytest.approx(58.0, abs=0.01)  # 1960-12-15 to 2018-12-15
        assert np.isnan(values["height"]) and np.isnan(values["liver_pdff_22436_pct"])
    assert np.isnan(subject_fields(read_fields(classic), "42", 3)["liver_pdff_pct"])
    assert np.isnan(subject_fields(None, "42", 2)["age"])


def test_dataset_card_in_data_manifests_names_every_field_with_its_unit():
    card = yaml.safe_load((REPO / "data_manifests" / "ukbiobank.yaml").read_text(encoding="utf-8"))
    assert card == dataset_card(None, 2)
    assert card["grid"]["spacing_mm"] == list(OUTPUT_SPACING_MM)
    assert card["grid"]["spacing_mm"][0] == pytest.approx(500 / 224)
    for field_id in (20201, 22402, 22436, 31, 34, 52, 53, 12144, 21002, 21001):
        assert card["fields"][str(field_id)]["unit"] == UKB_FIELDS[field_id]["unit"]


def _series(kind: str, centre_mm: float, acquired: str) -> Series:
    slices = []
    for z in (centre_mm - 3.0, centre_mm, centre_mm + 3.0):
        ds = pydicom.Dataset()
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        slices.append(ds)
    return Series(f"uid-{kind}-{centre_mm}-{acquired}", f"Dixon_{kind}", kind, acquired, slices)


def test_stations_keep_the_newest_repeat_and_water_fat_must_match():
    old = _series("water", 100.0, "20160512101000")
    new = _series("water", 100.5, "20160512103000")
    fat = [_series("fat", 0.0, "20160512100000"), _series("fat", 100.0, "20160512101000")]
    chosen = select_stations([new, _series("water", 0.0, "20160512100000"), old, *fat], "s1")
    assert [s.uid for s in chosen["water"]][1] == new.uid
    with pytest.raises(ImageError, match=r"s1: water stations at \[0, 100\] mm and fat"):
        select_stations([_series("water", 0.0, "1"), old, fat[0], _series("fat", 160.0, "1")], "s1")
    with pytest.raises(ImageError, match="s1: no fat series"):
        select_stations([old], "s1")


def test_two_visits_of_one_participant_are_two_rows_of_one_participant(
    ukb_good_zip, ukb_fields_csv, tmp_path
):
    """Instances 2 and 3 of one eid: two subjects (``<eid>_2``, ``<eid>_3``) sharing
    ``participant_id`` (the eid), ``visit`` the instance, each with its own visit's fields."""
    repeat = write_phantom_zip(tmp_path / "zips", 1, seed=0, eid=GOOD_EID, instance=3)
    out = tmp_path / "visits"
    result = ingest_ukb(
        [ukb_good_zip, repeat],
        out,
        fields=ukb_fields_csv,
        spacing_mm=COARSE_MM,
        min_slices=80,
        executor="serial",
        progress=False,
    )
    assert result.n_ingested == 2, result.status.to_dict("records")
    manifest = Manifest.load(out)
    assert manifest.problems() == []
    assert manifest.subject_ids == [f"{GOOD_EID}_2", f"{GOOD_EID}_3"]
    assert manifest.participants() == {
        f"{GOOD_EID}_2": str(GOOD_EID),
        f"{GOOD_EID}_3": str(GOOD_EID),
    }
    assert manifest.visits().tolist() == [2.0, 3.0]
    # Each visit reads its own instance of field 22402 (the repeat has 9.99 in the extract).
    assert manifest.target("liver_pdff_pct").tolist() == pytest.approx([4.81, 9.99])
    assert set(manifest.card["visits"]) == {2, 3}
