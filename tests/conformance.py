"""One conformance check that every engine passes (DESIGN.md, contract 3).

Use from an engine's tests::

    from tests.conformance import check_engine
    def test_conformance(phantom_manifest, tmp_path):
        check_engine(lambda: MyEngine(**small_settings), phantom_manifest, tmp_path,
                     targets=["liver_pdff_pct"])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from liverfat.data.manifest import Manifest
from liverfat.data.predictions import COLUMNS, PredictionsTable


def check_engine(
    make_engine: Callable[[], object],
    manifest: Manifest,
    tmp_path: Path,
    *,
    targets: Sequence[str],
    folds: int = 2,
) -> None:
    """fit / predict / cross_validate / save / load, and a broken subject becomes a failed row."""
    engine = make_engine()
    _check_constructor(engine)
    assert not [a for a in vars(engine) if a.endswith("_") and not a.startswith("_")], (
        "constructor must not set fitted attributes"
    )

    train = manifest.select(split="A")
    assert engine.fit(train) is engine, "fit must return self"
    assert [a for a in vars(engine) if a.endswith("_") and not a.startswith("_")], (
        "fit sets no attribute_"
    )

    table = engine.predict(manifest)
    assert isinstance(table, PredictionsTable)
    assert list(table.frame.columns) == COLUMNS
    for target in targets:
        rows = table.frame[table.frame["target"] == target]
        assert set(rows["subject_id"]) == set(manifest.subject_ids), (
            f"{target}: a subject has no row"
        )
    assert table.run.get("method"), "run.json must name the method"

    # save / load reproduce the predictions exactly.
    engine.save(tmp_path / "engine")
    loaded = type(engine).load(tmp_path / "engine")
    again = loaded.predict(manifest)
    pd.testing.assert_frame_equal(
        _sorted(table.frame), _sorted(again.frame), check_exact=False, rtol=1e-6
    )

    # Cross-validation: every subject with a reference gets exactly one out-of-fold row per target.
    oof = make_engine().cross_validate(train, folds=folds, seed=0)
    for target in targets:
        with_ref = set(train.target(target).dropna().index)
        rows = oof.frame[oof.frame["target"] == target]
        assert set(rows["subject_id"]) == with_ref
        assert not rows["subject_id"].duplicated().any()

    # A corrupt image for one subject gives a failed row naming it; the others still predict.
    broken = _with_corrupt_subject(manifest, tmp_path / "broken")
    sid = broken.subject_ids[0]
    result = engine.predict(broken).frame
    bad = result[result["subject_id"] == sid]
    assert (bad["status"] == "failed").all() and bad["message"].str.contains(sid).all(), bad
    good = result[result["subject_id"] != sid]
    assert (good["status"] != "failed").mean() > 0.8
    assert np.isfinite(good.loc[good["status"] == "ok", "value"]).all()


def _check_constructor(engine: object) -> None:
    signature = inspect.signature(type(engine).__init__)
    for name, parameter in signature.parameters.items():
        if name == "self" or parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, f"{name} must be keyword-only"
        assert hasattr(engine, name), f"constructor must store {name} unchanged"


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["subject_id", "method", "target"]).reset_index(drop=True)


def _with_corrupt_subject(manifest: Manifest, folder: Path) -> Manifest:
    """A copy of ``manifest`` whose first subject's images are truncated files."""
    folder.mkdir(parents=True)
    table = manifest.subjects.copy()
    sid = table["subject_id"].iloc[0]
    for column in manifest.image_columns:
        source = manifest.image_path(sid, column)
        if source is None:
            continue
        target = folder / f"{sid}_{column}.nii.gz"
        target.write_bytes(source.read_bytes()[:200])
        table.loc[0, column] = str(target)
    copy = Manifest(
        card=dict(manifest.card), subjects=table, path=manifest.path, root=manifest.root
    )
    # Other subjects keep their paths relative to the original root; absolute paths win in joins.
    return copy
