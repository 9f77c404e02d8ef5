"""Manifests: a dataset card (YAML) plus a subject table (CSV), the only way engines see subjects.

The schema is documented in ``data_manifests/README.md``. :meth:`Manifest.problems` lists every
problem one line each; :meth:`Manifest.load` raises :class:`~liverfat.errors.ManifestError` with
all of them when asked to validate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from liverfat.data.atomic import atomic_path, write_text_atomic
from liverfat.data.card_schema import check_card
from liverfat.data.dixon import fat_fraction_image, two_point_dixon_images
from liverfat.data.geometry import check_same_geometry, geometry_mismatch, geometry_of
from liverfat.data.io import read_header, read_volume
from liverfat.errors import ImageError, LiverfatError, ManifestError, one_line

#: Columns holding image paths, relative to the manifest's data root.
IMAGE_COLUMNS = (
    "water",
    "fat",
    "fat_fraction",
    "in_phase",
    "opposed_phase",
    "liver_mask",
    "body_mask",
    "rois",
    "image",
)
#: The images a subject's masks delineate, in the order the first present one is checked.
MASKED_IMAGE_COLUMNS = ("water", "fat_fraction", "in_phase", "image")
#: Image columns that must share one voxel grid within a subject (``image`` stands alone).
GRID_COLUMNS = IMAGE_COLUMNS[:-1]
#: Covariate columns a manifest may carry (age years, sex 0/1, height cm, weight kg, BMI kg/m²).
COVARIATE_COLUMNS = ("age", "sex", "height", "weight", "bmi")
#: The covariates the linear baseline regresses on (BMI is a function of height and weight).
BASELINE_COVARIATES = ("age", "sex", "height", "weight")
#: The covariates whose correlation with each method's error or grade the reports show.
REPORTED_COVARIATES = ("age", "sex", "bmi")
#: Columns marking repeat scans: the participant a scan belongs to (several rows may share one)
#: and the imaging visit, numbered as UK Biobank's instances (2 first imaging visit, 3 repeat).
PARTICIPANT_COLUMN, VISIT_COLUMN = "participant_id", "visit"
REQUIRED_CARD_KEYS = ("name", "subjects", "targets", "splits")
CARD_NAMES = ("manifest.yaml", "manifest.yml", "card.yaml")
#: Unit (or coding) and plausible range of each covariate, as the cards liverfat writes record
#: them (:meth:`Manifest.problems` checks values against the ranges a card gives).
COVARIATE_ENTRIES: dict[str, dict[str, Any]] = {
    "age": {"unit": "years", "range": [18, 100]},
    "sex": {"coding": "0 female, 1 male", "range": [0, 1]},
    "height": {"unit": "cm", "range": [100, 230]},
    "weight": {"unit": "kg", "range": [30, 250]},
    "bmi": {"unit": "kg/m^2", "range": [10, 80]},
}


@dataclass(frozen=True)
class DixonImages:
    """Water and fat signal (arbitrary units) and fat fraction (%) of one subject, one grid."""

    subject_id: str
    water: sitk.Image
    fat: sitk.Image
    fat_fraction: sitk.Image


def read_yaml_mapping(
    path: str | os.PathLike[str], what: str, *, error: type[LiverfatError] = LiverfatError
) -> dict:
    """A YAML file holding a mapping, or ``error`` with one line naming the file and ``what``
    it should be (e.g. "the card", "a study file")."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise error(f"{path}: not valid YAML for {what} ({one_line(exc)})") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: {what} must be a YAML mapping")
    return data


@dataclass
class Manifest:
    """A dataset card and its subject table.

    Attributes
    ----------
    card:
        The parsed YAML card.
    subjects:
        One row per subject; ``subject_id`` is a string column, targets are float (NaN missing).
    path:
        The card's path.
    root:
        The folder image paths are relative to (``data_root`` in the card, else the card's folder).
    """

    card: dict[str, Any]
    subjects: pd.DataFrame
    path: Path
    root: Path
    _raw_values: dict[str, pd.Series] = field(default_factory=dict, repr=False)

    # Loading -----------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        data_root: str | os.PathLike[str] | None = None,
        validate: bool = False,
        check_geometry: bool = True,
    ) -> Manifest:
        """Read a card (or a folder holding ``manifest.yaml``) and its subject table.

        ``data_root`` overrides the card's, for public sets whose images the user keeps elsewhere.
        With ``validate`` every problem is collected and raised together.
        """
        card_path = _card_path(Path(path))
        card = read_yaml_mapping(card_path, "the card", error=ManifestError)
        missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
        if missing:
            raise ManifestError(f"{card_path}: card lacks {', '.join(missing)}")
        check_card(card, str(card_path))
        table_path = card_path.parent / str(card["subjects"])
        if not table_path.is_file():
            raise ManifestError(f"{card_path}: subject table {table_path} not found")
        try:
            subjects = pd.read_csv(table_path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{table_path}: not a readable CSV ({one_line(exc)})") from exc
        if data_root is None:
            data_root = card.get("data_root", ".")
        root = (card_path.parent / Path(data_root)).resolve()
        manifest = cls(card=card, subjects=subjects, path=card_path, root=root)
        manifest._parse_columns()
        if validate:
            problems = manifest.problems(check_geometry=check_geometry)
            if problems:
                raise ManifestError(
                    f"{card_path}: {len(problems)} problem(s):\n" + "\n".join(problems)
                )
        return manifest

    def _parse_columns(self) -> None:
        if "subject_id" not in self.subjects.columns:
            raise ManifestError(f"{self.table_path}: no subject_id column")
        self.subjects["subject_id"] = self.subjects["subject_id"].astype(str).str.strip()
        for column in [*self.targets, *COVARIATE_COLUMNS]:
            if column in self.subjects.columns:
                self._raw_values[column] = self.subjects[column].copy()
                self.subjects[column] = pd.to_numeric(
                    self.subjects[column].replace("", np.nan), errors="coerce"
                )

    # Card views --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def table_path(self) -> Path:
        return self.path.parent / str(self.card["subjects"])

    @property
    def targets(self) -> dict[str, dict[str, Any]]:
        """Target name -> its card entry (``meaning``, ``unit``, optional ``range``)."""
        return dict(self.card.get("targets") or {})

    def target_range(self, name: str) -> tuple[float, float]:
        """The plausible range of target ``name`` from the card, (-inf, inf) where it gives none."""
        low, high = (self.targets.get(name) or {}).get("range") or (-math.inf, math.inf)
        return float(low), float(high)

    @property
    def splits(self) -> dict[str, dict[str, Any]]:
        """Split name -> its card entry (``meaning``, optional ``subset_of``)."""
        return dict(self.card.get("splits") or {})

    @property
    def image_columns(self) -> list[str]:
        return [c for c in IMAGE_COLUMNS if c in self.subjects.columns]

    @property
    def subject_ids(self) -> list[str]:
        return self.subjects["subject_id"].tolist()

    def __len__(self) -> int:
        return len(self.subjects)

    # Subject selection -------------------------------------------------------------------------
    def in_split(self, split: str) -> pd.Series:
        """Boolean mask of subjects in ``split``; a split ``subset_of`` another counts as both."""
        if split not in self.splits:
            raise ManifestError(
                f"{self.path}: unknown split {split!r} (card has {', '.join(self.splits)})"
            )
        members = {split} | {
            name for name, entry in self.splits.items() if _subset_chain(self.splits, name, split)
        }
        column = self.subjects.get("split", pd.Series([""] * len(self), index=self.subjects.index))
        return column.isin(members)

    def select(
        self, *, split: str | None = None, subject_ids: Iterable[str] | None = None
    ) -> Manifest:
        """A manifest holding only the chosen subjects (same card, same data root)."""
        keep = pd.Series(True, index=self.subjects.index)
        if split is not None:
            keep &= self.in_split(split)
        if subject_ids is not None:
            wanted = [str(s) for s in subject_ids]
            unknown = sorted(set(wanted) - set(self.subject_ids))
            if unknown:
                raise ManifestError(f"{self.path}: unknown subject ids {', '.join(unknown[:5])}")
            keep &= self.subjects["subject_id"].isin(wanted)
        raw = {k: v[keep].reset_index(drop=True) for k, v in self._raw_values.items()}
        return replace(self, subjects=self.subjects[keep].reset_index(drop=True), _raw_values=raw)

    def participants(self) -> dict[str, str] | None:
        """Subject id -> participant id (:data:`PARTICIPANT_COLUMN`), or None without the column.

        A subject whose cell is empty is its own participant. Scans of one participant (its
        visits) must stay on one side of every training/test split
        (:func:`liverfat.data.folds.subject_folds` groups them)."""
        if PARTICIPANT_COLUMN not in self.subjects.columns:
            return None
        ids = self.subjects["subject_id"]
        column = self.subjects[PARTICIPANT_COLUMN].astype(str).str.strip()
        return dict(zip(ids, column.where(column.ne(""), ids), strict=True))

    def visits(self) -> pd.Series:
        """Each subject's imaging visit (:data:`VISIT_COLUMN`, float; NaN where empty or without
        the column), indexed by subject_id."""
        index = pd.Index(self.subject_ids, name="subject_id")
        if VISIT_COLUMN not in self.subjects.columns:
            return pd.Series(np.nan, index=index, name=VISIT_COLUMN)
        values = pd.to_numeric(self.subjects[VISIT_COLUMN].replace("", np.nan), errors="coerce")
        return pd.Series(values.to_numpy(float), index=index, name=VISIT_COLUMN)

    def target(self, name: str) -> pd.Series:
        """Values of target ``name`` (float) indexed by subject_id: NaN where missing, and where
        a value is infinite or outside the card's range, so no engine trains on it and no
        comparison scores against it (``manifest check`` names each such value)."""
        if name not in self.targets:
            raise ManifestError(
                f"{self.path}: unknown target {name!r} (card has {', '.join(self.targets)})"
            )
        if name not in self.subjects.columns:
            return pd.Series(np.nan, index=pd.Index(self.subject_ids, name="subject_id"), name=name)
        values = self.subjects.set_index("subject_id")[name].astype(float)
        low, high = self.target_range(name)
        return values.where(np.isfinite(values) & (values >= low) & (values <= high))

    def covariates(self, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """Covariate columns as written in the subject table (text, ``""`` where empty).

        Indexed by subject_id; ``columns`` default to those of :data:`COVARIATE_COLUMNS` present.
        The text is kept, so a column coded with words (``sex`` as F/M) survives; the numeric
        view of the schema's covariates is in :attr:`subjects`.
        """
        if columns is None:
            columns = [c for c in COVARIATE_COLUMNS if c in self.subjects.columns]
        columns = list(columns)
        missing = [c for c in columns if c not in self.subjects.columns]
        if missing:
            raise ManifestError(f"{self.table_path}: no covariate column {', '.join(missing)}")
        raw = {c: self._raw_values.get(c, self.subjects[c]).to_numpy() for c in columns}
        return pd.DataFrame(raw, index=pd.Index(self.subject_ids, name="subject_id"))

    def row(self, subject_id: str) -> pd.Series:
        rows = self.subjects[self.subjects["subject_id"] == str(subject_id)]
        if rows.empty:
            raise ManifestError(f"{self.path}: no subject {subject_id!r}")
        return rows.iloc[0]

    # Images --------------------------------------------------------------------------------------
    def image_path(self, subject_id: str, column: str) -> Path | None:
        """Absolute path of a subject's image in ``column``, or None if the cell is empty."""
        value = self.row(subject_id).get(column, "")
        if not isinstance(value, str) or not value.strip():
            return None
        return self.root / value.strip()

    def read_image(self, subject_id: str, column: str, *, allow_empty: bool = False) -> sitk.Image:
        """Read one image; errors name the subject, the column and the file."""
        path = self.image_path(subject_id, column)
        if path is None:
            raise ImageError(f"subject {subject_id}: no {column} image in the manifest")
        try:
            return read_volume(path, allow_empty=allow_empty)
        except ImageError as exc:
            raise ImageError(f"subject {subject_id}: {column}: {exc}") from exc

    def has(self, subject_id: str, column: str) -> bool:
        return self.image_path(subject_id, column) is not None

    def dixon(self, subject_id: str) -> DixonImages:
        """Water, fat and fat fraction (%) of a subject, from whichever columns it has.

        Water/fat columns are preferred; otherwise in/opposed-phase magnitude images go through
        two-point Dixon. The fat fraction column is used when present, else computed.
        """
        if self.has(subject_id, "water") and self.has(subject_id, "fat"):
            water = self.read_image(subject_id, "water")
            fat = self.read_image(subject_id, "fat", allow_empty=True)
        elif self.has(subject_id, "in_phase") and self.has(subject_id, "opposed_phase"):
            water, fat = two_point_dixon_images(
                self.read_image(subject_id, "in_phase"),
                self.read_image(subject_id, "opposed_phase"),
            )
        else:
            raise ImageError(
                f"subject {subject_id}: no water/fat or in/opposed-phase images "
                f"(columns present: {', '.join(self.image_columns) or 'none'}); "
                "this needs a Dixon scan with a fat fraction"
            )
        try:
            check_same_geometry(water, fat, names=("water", "fat"))
        except ImageError as exc:
            raise ImageError(f"subject {subject_id}: {exc}") from exc
        if self.has(subject_id, "fat_fraction"):
            ff = sitk.Cast(
                self.read_image(subject_id, "fat_fraction", allow_empty=True), sitk.sitkFloat32
            )
            try:
                check_same_geometry(water, ff, names=("water", "fat_fraction"))
            except ImageError as exc:
                raise ImageError(f"subject {subject_id}: {exc}") from exc
        else:
            ff = fat_fraction_image(water, fat)
        return DixonImages(subject_id, water, fat, ff)

    def liver_mask(self, subject_id: str) -> sitk.Image:
        """The subject's liver mask (uint8, 1 = liver), checked non-empty.

        A card with ``liver_label: N`` marks the column as a label map whose liver is value N
        (e.g. CHAOS: 1 liver, 2 and 3 kidneys, 4 spleen); otherwise any non-zero voxel is liver.
        """
        mask = self.read_image(subject_id, "liver_mask", allow_empty=True)
        label = self.card.get("liver_label")
        mask = mask == int(label) if label is not None else mask > 0
        if not np.any(sitk.GetArrayViewFromImage(mask)):
            raise ImageError(
                f"subject {subject_id}: liver_mask "
                f"{self.image_path(subject_id, 'liver_mask')} is empty"
            )
        self._check_on_image_grid(subject_id, mask, "liver_mask")
        return sitk.Cast(mask, sitk.sitkUInt8)

    def _check_on_image_grid(self, subject_id: str, image: sitk.Image, column: str) -> None:
        """A mask must lie on the grid of the image it delineates (same size is not enough: an
        origin 30 mm off would be used as if aligned)."""
        for reference in MASKED_IMAGE_COLUMNS:
            path = self.image_path(subject_id, reference)
            if path is None:
                continue
            problem = geometry_mismatch(geometry_of(read_header(path)), geometry_of(image))
            if problem:
                raise ImageError(
                    f"subject {subject_id}: {column} and {reference} differ in geometry: {problem}"
                )
            return

    # Validation ----------------------------------------------------------------------------------
    def problems(self, *, check_files: bool = True, check_geometry: bool = True) -> list[str]:
        """Every problem, one line each (empty list: the manifest is sound); see
        :mod:`liverfat.data.manifest_check`."""
        from liverfat.data.manifest_check import manifest_problems

        return manifest_problems(self, check_files=check_files, check_geometry=check_geometry)

    # Writing -------------------------------------------------------------------------------------
    def write(
        self, card_path: str | os.PathLike[str], *, subjects_name: str = "subjects.csv"
    ) -> Path:
        """Write this manifest (card + table) atomically; image paths stay valid.

        Used by engines that derive a manifest (e.g. adding atlas-made liver masks). The data root
        is written relative to the new card where possible.
        """
        card_path = Path(card_path)
        card_path.parent.mkdir(parents=True, exist_ok=True)
        card = dict(self.card)
        card["subjects"] = subjects_name
        card["data_root"] = os.path.relpath(self.root, card_path.parent.resolve())
        write_subject_table(self.subjects, card_path.parent / subjects_name)
        write_text_atomic(card_path, yaml.safe_dump(card, sort_keys=False))
        return card_path

    def with_liver_masks(
        self, masks: Mapping[str, str | None], card_path: str | os.PathLike[str]
    ) -> Manifest:
        """A copy whose ``liver_mask`` column holds ``masks`` (subject -> absolute path; empty
        where a subject has none), written at ``card_path``. The masks are binary, so a label
        value on the card (``liver_label``) is dropped."""
        card = {k: v for k, v in self.card.items() if k != "liver_label"}
        return self.with_paths("liver_mask", masks, card_path, card=card)

    def with_paths(
        self,
        column: str,
        paths: Mapping[str, str | None],
        card_path: str | os.PathLike[str],
        *,
        card: dict[str, Any] | None = None,
    ) -> Manifest:
        """A copy whose file column ``column`` (e.g. ``rois``) holds ``paths`` (subject -> path,
        stored absolute; empty where a subject has none), written at ``card_path``."""
        table = self.subjects.copy()
        table[column] = [
            str(Path(paths[s]).resolve()) if paths.get(s) else "" for s in table["subject_id"]
        ]
        card = dict(self.card) if card is None else card
        derived = Manifest(card=card, subjects=table, path=Path(card_path), root=self.root)
        derived.write(card_path)
        return derived


def is_manifest_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a manifest (a YAML dataset card or a folder) rather than a table."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in (".yaml", ".yml")


def _card_path(path: Path) -> Path:
    if path.is_dir():
        for name in CARD_NAMES:
            if (path / name).is_file():
                return path / name
        raise ManifestError(f"{path}: folder has no {' or '.join(CARD_NAMES)}")
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    return path


def _subset_chain(splits: dict[str, dict[str, Any]], name: str, ancestor: str) -> bool:
    """Whether split ``name`` is (transitively) a subset of ``ancestor``."""
    seen = set()
    parent = (splits.get(name) or {}).get("subset_of")
    while parent is not None and parent not in seen:
        if parent == ancestor:
            return True
        seen.add(parent)
        parent = (splits.get(parent) or {}).get("subset_of")
    return False


def write_subject_table(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a subject table CSV atomically (NaN as empty, compact floats)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.10g")


def target_entry(meaning: str, unit: str, high: float) -> dict[str, Any]:
    """A card's entry for one target: its meaning, unit and range ``[0, high]``."""
    return {"meaning": meaning, "unit": unit, "range": [0, high]}


def covariate_entries(notes: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """A card's ``covariates`` section: :data:`COVARIATE_ENTRIES`, with a dataset's ``notes``.

    A note replaces a key in place (``coding``) or adds one after the range (``from``). Every call
    builds new lists, so a card dumped to YAML never shares (and aliases) them.
    """
    notes = notes or {}
    return {
        name: {
            **{key: list(v) if isinstance(v, list) else v for key, v in entry.items()},
            **notes.get(name, {}),
        }
        for name, entry in COVARIATE_ENTRIES.items()
    }


def visit_entries(repeat_note: str) -> dict[int, str]:
    """A card's ``visits`` section: what each value of the ``visit`` column means; the repeat
    visit's entry ends with ``repeat_note`` (what differs between the visits)."""
    return {
        2: "first imaging visit (UK Biobank instance 2)",
        3: f"repeat imaging visit (UK Biobank instance 3): {repeat_note}",
    }


def split_entries(a: str, b: str, c: str) -> dict[str, dict[str, str]]:
    """A card's ``splits`` section for the A / B / C design, given each split's meaning.

    A holds the subjects with reference values, B those without, and C (the comparison set) is a
    subset of B.
    """
    return {"A": {"meaning": a}, "B": {"meaning": b}, "C": {"meaning": c, "subset_of": "B"}}
