"""pyradiomics features of liver ROIs: the versioned parameter file, the one extraction path,
training-time augmentation of ROI patches, and per-subject extraction with an on-disk cache.

Every feature this package computes goes through :func:`extract_features` (an image, a mask and
a configured extractor in, a name -> float dict out): the ROI path builds a one-slice image per
ROI and calls it, and the conformance tests (IBSI digital phantom, pyradiomics' own baseline)
call it with their own settings.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from liverfat.data.atomic import atomic_path
from liverfat.data.fingerprint import fingerprint, subject_files
from liverfat.data.manifest import Manifest, read_yaml_mapping
from liverfat.data.rois import Roi, subject_rois_from_manifest
from liverfat.errors import ImageError, LiverfatError, subject_message
from liverfat.radiomics.rois import RoiSettings, allowed_pixels, place_rois, save_rois

#: The parameter file shipped with the package (versioned by its name and ``version`` key).
DEFAULT_PARAMS = Path(__file__).with_name("liver_roi_v1.yaml")
CHANNELS = ("fat_fraction", "water", "fat")
KEY_COLUMNS = ["subject_id", "roi", "augmentation", "lobe"]


def load_parameters(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read a liverfat radiomics parameter file (default: the shipped ``liver_roi_v1.yaml``)."""
    path = Path(path) if path is not None else DEFAULT_PARAMS
    params = read_yaml_mapping(path, "radiomics parameters")
    if "pyradiomics" not in params or "bin_width" not in params:
        raise LiverfatError(
            f"{path}: a radiomics parameter file needs 'pyradiomics' and 'bin_width'"
        )
    params["_text"] = path.read_text(encoding="utf-8")
    return params


def make_extractor(pyradiomics_params: dict[str, Any], **settings: Any):
    """A pyradiomics ``RadiomicsFeatureExtractor`` from a parameter dict (+ setting overrides)."""
    import radiomics
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.ERROR)
    params = copy.deepcopy(pyradiomics_params)
    params.setdefault("setting", {}).update(settings)
    classes = params.get("featureClass") or {}
    params["featureClass"] = {name: (value or None) for name, value in classes.items()}
    return featureextractor.RadiomicsFeatureExtractor(params)


def extract_features(image: sitk.Image, mask: sitk.Image, extractor) -> dict[str, float]:
    """Features of ``image`` inside ``mask`` (label from the extractor's settings), as floats.

    Names are pyradiomics' (``original_glcm_Contrast``); diagnostics are left out.
    """
    result = extractor.execute(image, mask)
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def patch_features(
    patch: np.ndarray, spacing_xy_mm: tuple[float, float], extractor
) -> dict[str, float]:
    """Features of one square 2D patch (all pixels in the ROI), through :func:`extract_features`."""
    image = sitk.GetImageFromArray(np.asarray(patch, np.float32)[None])
    image.SetSpacing((float(spacing_xy_mm[0]), float(spacing_xy_mm[1]), 1.0))
    mask = sitk.GetImageFromArray(np.ones((1, *patch.shape), np.uint8))
    mask.CopyInformation(image)
    return {
        k.removeprefix("original_"): v for k, v in extract_features(image, mask, extractor).items()
    }


@dataclass(frozen=True)
class AugmentSettings:
    """Training-time ROI augmentation (applied inside training folds only).

    Each augmented copy of an ROI shifts the square by up to ``max_shift_px`` pixels (kept only
    where it stays inside the allowed liver pixels), mirrors it left-right with probability 1/2,
    rotates it by a random multiple of 90 degrees (exact, no interpolation), and adds Gaussian noise
    of ``noise_fraction`` times the patch's own standard deviation, independently per channel.
    """

    n_copies: int = 8
    max_shift_px: int = 2
    mirror: bool = True
    rotate: bool = True
    noise_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.n_copies < 0 or self.max_shift_px < 0 or self.noise_fraction < 0:
            raise LiverfatError("augmentation counts, shifts and noise must be >= 0")


def augmented_patches(
    planes: dict[str, np.ndarray],
    allowed: np.ndarray,
    roi: Roi,
    rng: np.random.Generator,
    settings: AugmentSettings,
) -> dict[str, np.ndarray]:
    """One augmented copy of ``roi`` in every channel (same geometry, independent noise)."""
    dy, dx = 0, 0
    if settings.max_shift_px:
        dy, dx = (
            int(v) for v in rng.integers(-settings.max_shift_px, settings.max_shift_px + 1, 2)
        )
        r, c = roi.row + dy, roi.column + dx
        inside = (
            r >= 0
            and c >= 0
            and r + roi.size <= allowed.shape[0]
            and c + roi.size <= allowed.shape[1]
        )
        if not inside or not allowed[r : r + roi.size, c : c + roi.size].all():
            dy, dx = 0, 0
    flip = settings.mirror and bool(rng.integers(2))
    turns = int(rng.integers(4)) if settings.rotate else 0
    out = {}
    for name, plane in planes.items():
        r, c = roi.row + dy, roi.column + dx
        patch = plane[r : r + roi.size, c : c + roi.size].astype(np.float64)
        if flip:
            patch = patch[:, ::-1]
        patch = np.rot90(patch, turns)
        if settings.noise_fraction:
            patch = patch + rng.normal(0.0, settings.noise_fraction * patch.std(), patch.shape)
        out[name] = np.ascontiguousarray(patch)
    return out


@dataclass(frozen=True)
class ExtractionJob:
    """Everything one worker needs to compute one subject's ROI features (picklable)."""

    subject: Manifest
    channels: tuple[str, ...] = ("fat_fraction",)
    params: dict[str, Any] = field(default_factory=load_parameters)
    rois: RoiSettings = field(default_factory=RoiSettings)
    augment: AugmentSettings | None = None
    seed: int = 0
    cache_dir: str | os.PathLike[str] | None = None
    roi_dir: str | None = None

    @property
    def subject_id(self) -> str:
        return self.subject.subject_ids[0]

    def cache_key(self, augmented: bool) -> str:
        payload = {
            "params": self.params["_text"],
            "channels": list(self.channels),
            "rois": asdict(self.rois),
            "files": subject_files(self.subject, self.subject_id),
            "augment": asdict(self.augment) if augmented and self.augment else None,
            "seed": self.seed if augmented else None,
        }
        return fingerprint(payload)


def subject_features(job: ExtractionJob, *, augmented: bool = False) -> pd.DataFrame:
    """ROI features of one subject: original ROIs (augmentation 0) or augmented copies (1..n).

    Rows: ``subject_id, roi, augmentation, lobe`` then ``<channel>_<class>_<feature>`` columns.
    Cached in ``job.cache_dir`` (one CSV per subject and setting), written atomically.
    """
    if augmented and (job.augment is None or job.augment.n_copies == 0):
        return pd.DataFrame(columns=KEY_COLUMNS)
    cache = None
    if job.cache_dir:
        tag = "aug" if augmented else "roi"
        cache = Path(job.cache_dir) / f"{job.subject_id}_{tag}_{job.cache_key(augmented)}.csv"
        if cache.is_file():
            return pd.read_csv(cache, dtype={"subject_id": str, "lobe": str})
    sid = job.subject_id
    try:
        frame = _compute(job, augmented)
    except ImageError as exc:
        raise ImageError(subject_message(sid, exc)) from exc
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.10g")
    return frame


def _channel_arrays(subject: Manifest, sid: str, channels: tuple[str, ...]):
    dixon = subject.dixon(sid)
    images = {"fat_fraction": dixon.fat_fraction, "water": dixon.water, "fat": dixon.fat}
    arrays = {name: sitk.GetArrayFromImage(images[name]).astype(np.float64) for name in channels}
    return arrays, dixon


def _compute(job: ExtractionJob, augmented: bool) -> pd.DataFrame:
    sid = job.subject_id
    placement = tuple(dict.fromkeys(("fat_fraction", "water", *job.channels)))
    arrays, dixon = _channel_arrays(job.subject, sid, placement)
    liver = liver_array(job.subject, sid)
    if liver.shape != arrays["fat_fraction"].shape:
        raise ImageError(
            f"liver mask grid {liver.shape} differs from the images' {arrays['fat_fraction'].shape}"
        )
    rois = subject_rois(
        job.subject,
        sid,
        [arrays["fat_fraction"], arrays["water"]],
        liver,
        dixon.fat_fraction,
        job.rois,
    )
    if job.roi_dir and not augmented:
        save_rois(
            rois,
            job.roi_dir,
            sid,
            image=arrays["fat_fraction"],
            liver=liver,
            extra={"channel_shown": "fat_fraction (%)"},
        )
    spacing = dixon.fat_fraction.GetSpacing()[:2]
    extractors = {
        c: make_extractor(job.params["pyradiomics"], binWidth=float(job.params["bin_width"][c]))
        for c in job.channels
    }
    rows = []
    if not augmented:
        for number, roi in enumerate(rois):
            row = {"subject_id": sid, "roi": number, "augmentation": 0, "lobe": roi.lobe}
            for channel in job.channels:
                row.update(
                    _prefixed(
                        channel,
                        patch_features(arrays[channel][roi.window()], spacing, extractors[channel]),
                    )
                )
            rows.append(row)
        return pd.DataFrame(rows)
    allowed = allowed_pixels(
        [arrays["fat_fraction"], arrays["water"]], liver, dixon.fat_fraction.GetSpacing(), job.rois
    )
    rng = np.random.default_rng([job.seed, int(hashlib.sha256(sid.encode()).hexdigest()[:8], 16)])
    for number, roi in enumerate(rois):
        planes = {c: arrays[c][roi.slice] for c in job.channels}
        for copy_number in range(1, job.augment.n_copies + 1):
            patches = augmented_patches(planes, allowed[roi.slice], roi, rng, job.augment)
            row = {"subject_id": sid, "roi": number, "augmentation": copy_number, "lobe": roi.lobe}
            for channel in job.channels:
                row.update(
                    _prefixed(
                        channel, patch_features(patches[channel], spacing, extractors[channel])
                    )
                )
            rows.append(row)
    return pd.DataFrame(rows)


def liver_array(subject: Manifest, sid: str) -> np.ndarray:
    """The subject's liver mask as a boolean (z, y, x) array.

    A card with ``liver_label`` (multi-organ label maps such as CHAOS) selects that label;
    otherwise every non-zero voxel is liver.
    """
    label = subject.card.get("liver_label")
    if label is None:
        return sitk.GetArrayFromImage(subject.liver_mask(sid)).astype(bool)
    liver = sitk.GetArrayFromImage(subject.read_image(sid, "liver_mask")) == float(label)
    if not liver.any():
        raise ImageError(f"subject {sid}: liver_mask has no voxel labelled {label}")
    return liver


def subject_rois(
    subject: Manifest,
    sid: str,
    intensities: list[np.ndarray],
    liver: np.ndarray,
    reference: sitk.Image,
    settings: RoiSettings,
) -> list[Roi]:
    """Manual ROIs from the manifest's ``rois`` column (label map or JSON, read by
    :func:`liverfat.data.rois.subject_rois_from_manifest`) or automatic ones."""
    if subject.has(sid, "rois"):
        return subject_rois_from_manifest(subject, sid, liver.shape)
    return place_rois(intensities, liver, reference, settings)


def _prefixed(channel: str, features: dict[str, float]) -> dict[str, float]:
    return {f"{channel}_{name}": value for name, value in features.items()}
