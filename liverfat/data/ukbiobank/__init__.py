"""UK Biobank ingestion: neck-to-knee Dixon zips (field 20201) to fused volumes and a manifest.

One zip per subject and visit (``<eid>_20201_<instance>_<array>.zip``) holds six overlapping axial
stations, each as water, fat, in-phase and opposed-phase series (``Dixon_noBH_W``,
``Dixon_BH_17s_F``, ...), plus ``manifest.cvs`` (sic), whose date field's unquoted comma shifts
its rows against the header (found by content, not by header).
:func:`ingest_zip` turns one zip into NIfTI volumes on a common grid (by default the stations'
native 500 / 224 = 2.2321 mm pixels and 3 mm slices):

1. the zip is treated as untrusted input: member paths that would escape the output folder,
   absurd compression ratios (zip bombs), oversized or truncated members, members the manifest
   lists but the zip lacks, and damaged DICOM files each stop that subject with one clear line
   (:mod:`~liverfat.data.ukbiobank.zipsafe`); a member that is not DICOM at all is skipped;
2. slices are grouped into series; series descriptions give the kind (suffix ``_W``, ``_F``,
   ``_in``, ``_opp``); a station acquired twice keeps its newest series (series date and time);
   water and fat stations must sit at the same positions (:mod:`~liverfat.data.ukbiobank.stations`);
3. stations are numbered from the head; a missing station or series, a z-gap and a short fused
   volume flag the subject, naming the station (:mod:`~liverfat.data.ukbiobank.checks`);
4. water and fat of a station that differ in size are cropped to their common size; a station
   whose water and fat are swapped is found (:func:`liverfat.data.swaps.station_swap_score`) and
   swapped back (:mod:`~liverfat.data.ukbiobank.subject`);
5. a few slices at each end of every station are trimmed (fold-over artefacts), each station is
   resampled (linear) onto the common grid, and overlaps are blended with weights that ramp
   linearly across each seam; uncovered slices are zero (:mod:`~liverfat.data.ukbiobank.fusion`);
6. water, fat, fat fraction (%) and the body mask of the UK Biobank liver-fat study are written.

:func:`ingest_ukb` runs many zips through :func:`liverfat.parallel.map_subjects` (resumable: a
subject whose ``ingest.json`` exists is skipped), joins reference and covariate fields from a
UK Biobank CSV extract (:mod:`~liverfat.data.ukbiobank.fields`), and writes ``manifest.yaml``,
``subjects.csv``, ``ingest_status.csv`` and ``ingest_stations.csv``
(:mod:`~liverfat.data.ukbiobank.ingest`). :mod:`~liverfat.data.ukbiobank.synthetic` and
:mod:`~liverfat.data.ukbiobank.realistic` write UK Biobank-like zips for tests and benchmarks.
"""

from liverfat.data.ukbiobank.checks import EXPECTED_STATIONS, MIN_FUSED_SLICES, number_stations
from liverfat.data.ukbiobank.fields import UKB_FIELDS, read_fields, subject_fields
from liverfat.data.ukbiobank.fusion import (
    NATIVE_PIXEL_MM,
    OUTPUT_SPACING_MM,
    fuse_stations,
    fusion_grid,
)
from liverfat.data.ukbiobank.ingest import (
    STATIONS_NAME,
    STATUS_NAME,
    IngestResult,
    dataset_card,
    ingest_ukb,
    read_stations,
    read_status,
)
from liverfat.data.ukbiobank.stations import (
    TRIM_SLICES,
    Series,
    select_stations,
    series_kind,
    station_image,
)
from liverfat.data.ukbiobank.subject import IngestJob, ingest_zip
from liverfat.data.ukbiobank.zipsafe import manifest_filenames, parse_zip_name, read_zip_members

__all__ = [
    "EXPECTED_STATIONS",
    "MIN_FUSED_SLICES",
    "NATIVE_PIXEL_MM",
    "OUTPUT_SPACING_MM",
    "STATIONS_NAME",
    "STATUS_NAME",
    "TRIM_SLICES",
    "UKB_FIELDS",
    "IngestJob",
    "IngestResult",
    "Series",
    "dataset_card",
    "fuse_stations",
    "fusion_grid",
    "ingest_ukb",
    "ingest_zip",
    "manifest_filenames",
    "number_stations",
    "parse_zip_name",
    "read_fields",
    "read_stations",
    "read_status",
    "read_zip_members",
    "select_stations",
    "series_kind",
    "station_image",
    "subject_fields",
]
