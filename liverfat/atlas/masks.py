"""Liver masks made by the atlas, handed to other engines through a derived manifest.

Subjects without a drawn liver mask (all of UK Biobank) get the atlas engine's fused, warped
template masks, written as NIfTI and referenced from the ``liver_mask`` column of a new manifest
that, say, the radiomics engine then reads to place its ROIs (engines share data only through
files). ``liverfat atlas register`` runs :func:`manifest_with_atlas_masks`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from liverfat.atlas.engine import AtlasEngine
from liverfat.atlas.jobs import NO_READOUT
from liverfat.data.manifest import Manifest
from liverfat.errors import LiverfatError

#: Name of the derived manifest's card in the output folder.
CARD_NAME = "manifest.yaml"
#: Folder of the output folder holding the masks (``SUBJECT_liver_mask.nii.gz``: the fused,
#: un-eroded mask on the subject's grid).
MASK_FOLDER = "masks"


@dataclass(frozen=True)
class AtlasMasks:
    """A manifest whose ``liver_mask`` column holds atlas masks, and how each subject fared.

    Attributes
    ----------
    manifest:
        The derived manifest, written at ``manifest.path``: the same card and subjects, with
        ``liver_mask`` the absolute path of each subject's atlas mask (empty where it failed).
    readout:
        :meth:`AtlasEngine.raw_readout` of the subjects, indexed by subject_id (``status``,
        ``message``, ``mask``, the raw fat readout ``value`` in %).
    """

    manifest: Manifest
    readout: pd.DataFrame

    @property
    def written(self) -> list[str]:
        """Ids of the subjects whose atlas mask was written."""
        return [s for s in self.manifest.subject_ids if self.manifest.has(s, "liver_mask")]

    @property
    def failures(self) -> dict[str, str]:
        """Subject id -> one-line message of each subject without an atlas mask."""
        failed = self.readout.loc[[s for s in self.readout.index if s not in set(self.written)]]
        return {str(sid): str(message) for sid, message in failed["message"].items()}

    @property
    def without_readout(self) -> list[str]:
        """Ids of the subjects with a mask but no fat readout (no fat fraction in the scan)."""
        return [str(s) for s in self.readout.index[self.readout["status"] == NO_READOUT]]


def manifest_with_atlas_masks(
    engine: AtlasEngine,
    manifest: Manifest,
    folder: str | os.PathLike[str],
    *,
    progress: str | None = "atlas register",
) -> AtlasMasks:
    """Register ``engine``'s templates to every subject; write a manifest with their masks.

    Parameters
    ----------
    engine:
        A fitted :class:`AtlasEngine` (its templates chosen) with ``save_masks=True`` and a
        ``work_dir``. The masks are written into ``folder/masks/`` (:data:`MASK_FOLDER`) and
        the manifest refers to them. Finished subjects are not registered again (the engine
        resumes).
    manifest:
        The subjects to give masks (an existing ``liver_mask`` column is replaced).
    folder:
        Where the derived card (:data:`CARD_NAME`) and its subject table go.
    progress:
        Label of the progress bar (None: none).
    """
    if not engine.save_masks:
        raise LiverfatError("atlas masks need an engine with save_masks=True")
    if engine.work_dir is None:
        raise LiverfatError("atlas masks need an engine with a work_dir (the masks live there)")
    out = Path(folder)
    engine.set_params(mask_dir=str(out / MASK_FOLDER))
    readout = engine.raw_readout(manifest, progress=progress)
    masks = readout["mask"].dropna().to_dict() if "mask" in readout else {}
    derived = manifest.with_liver_masks(masks, out / CARD_NAME)
    return AtlasMasks(derived, readout)
