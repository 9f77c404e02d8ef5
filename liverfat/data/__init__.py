"""The data layer: the only code that reads or writes images and tables."""

from liverfat.data.dixon import body_mask, fat_fraction, two_point_dixon
from liverfat.data.geometry import check_same_geometry
from liverfat.data.io import list_dicom_series, read_volume, write_volume
from liverfat.data.manifest import DixonImages, Manifest
from liverfat.data.predictions import PredictionsTable, failed_row, prediction_row, run_info

__all__ = [
    "DixonImages",
    "Manifest",
    "PredictionsTable",
    "body_mask",
    "check_same_geometry",
    "failed_row",
    "fat_fraction",
    "list_dicom_series",
    "prediction_row",
    "read_volume",
    "run_info",
    "two_point_dixon",
    "write_volume",
]
