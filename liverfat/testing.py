"""The conformance check every engine passes: the engine contract of docs/design.md, tested.

Public so that authors of plug-in engines (``engine: package.module:Class`` in a study) can run
it in their own tests::

    from liverfat.testing import check_engine

    def test_conformance(manifest, tmp_path):
        check_engine(lambda: MyEngine(**small_settings), manifest, tmp_path,
                     targets=["liver_pdff_pct"])

``manifest`` needs a split ``A`` with reference values (at least four subjects with one) and
at least one more subject; the phantom cohort (``liverfat phantom``) is such a manifest.
"""

from __future__ import annotations

import inspect
import json
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
    break_subject: Callable[[Manifest, Path], Manifest] | None = None,
) -> None:
    """fit / predict / cross_validate / save / load, parameters, a study's partition, and a
    broken subject becomes a failed row.

    ``break_subject(manifest, folder)`` returns a copy of the manifest whose first subject is
    broken for this engine; by default its image files are truncated (engines that read no
    images, such as the covariate baseline, pass their own, e.g. a missing covariate).
    """
    engine = make_engine()
    _check_constructor(engine)
    assert not _fitted_attributes(engine), "constructor must not set fitted attributes"
    _check_params(engine)
    train = manifest.select(split="A")
    table = _check_fit_predict(engine, train, manifest, targets)
    _check_persistence(engine, table, manifest, tmp_path / "engine")
    _check_cross_validation(make_engine, train, targets, folds)
    _check_given_partition(make_engine(), train, targets)
    broken = (break_subject or corrupt_first_subject)(manifest, tmp_path / "broken")
    _check_broken_subject(engine, broken)


def _check_fit_predict(
    engine: object, train: Manifest, manifest: Manifest, targets: Sequence[str]
) -> PredictionsTable:
    assert engine.fit(train) is engine, "fit must return self"
    assert _fitted_attributes(engine), "fit sets no attribute_"
    clone = engine.clone()
    assert not _fitted_attributes(clone), "clone() must give an unfitted engine"
    assert _params_equal(clone.get_params(), engine.get_params()), "clone() changed parameters"
    table = engine.predict(manifest)
    assert isinstance(table, PredictionsTable)
    assert list(table.frame.columns) == COLUMNS
    for target in targets:
        rows = table.frame[table.frame["target"] == target]
        assert set(rows["subject_id"]) == set(manifest.subject_ids), (
            f"{target}: a subject has no row"
        )
    assert table.run.get("method"), "run.json must name the method"
    return table


def _check_persistence(
    engine: object, table: PredictionsTable, manifest: Manifest, folder: Path
) -> None:
    """save / load reproduce the predictions exactly."""
    engine.save(folder)
    again = type(engine).load(folder).predict(manifest)
    pd.testing.assert_frame_equal(
        _sorted(table.frame), _sorted(again.frame), check_exact=False, rtol=1e-6
    )


def _check_cross_validation(
    make_engine: Callable[[], object], train: Manifest, targets: Sequence[str], folds: int
) -> None:
    """Every subject with a reference gets exactly one out-of-fold row per target."""
    oof = make_engine().cross_validate(train, folds=folds, seed=0)
    for target in targets:
        with_ref = set(train.target(target).dropna().index)
        rows = oof.frame[oof.frame["target"] == target]
        assert set(rows["subject_id"]) == with_ref
        assert not rows["subject_id"].duplicated().any()


def _check_broken_subject(engine: object, broken: Manifest) -> None:
    """The broken first subject gets failed rows naming it; the others still predict."""
    sid = broken.subject_ids[0]
    result = engine.predict(broken).frame
    bad = result[result["subject_id"] == sid]
    assert (bad["status"] == "failed").all() and bad["message"].str.contains(sid).all(), bad
    good = result[result["subject_id"] != sid]
    assert (good["status"] != "failed").mean() > 0.8
    assert np.isfinite(good.loc[good["status"] == "ok", "value"]).all()


def _constructor_names(engine: object) -> list[str]:
    """The constructor's named parameters (``self`` and ``**kwargs`` left out)."""
    signature = inspect.signature(type(engine).__init__)
    skip = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return [n for n, p in signature.parameters.items() if n != "self" and p.kind not in skip]


def _check_constructor(engine: object) -> None:
    parameters = inspect.signature(type(engine).__init__).parameters
    for name in _constructor_names(engine):
        kind = parameters[name].kind
        assert kind is inspect.Parameter.KEYWORD_ONLY, f"{name} must be keyword-only"
        assert hasattr(engine, name), f"constructor must store {name} unchanged"


def _fitted_attributes(engine: object) -> list[str]:
    return [a for a in vars(engine) if a.endswith("_") and not a.startswith("_")]


def _params_equal(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _check_params(engine: object) -> None:
    """get_params names the constructor's arguments; set_params and clone round-trip them."""
    params = engine.get_params()
    assert sorted(params) == sorted(_constructor_names(engine)), (
        "get_params must return every constructor argument"
    )
    rebuilt = type(engine)(**params)
    assert _params_equal(rebuilt.get_params(), params), "type(e)(**e.get_params()) differs"
    clone = engine.clone()
    assert clone is not engine and _params_equal(clone.get_params(), params)
    assert clone.set_params(**params) is clone, "set_params must return self"
    try:
        engine.set_params(no_such_parameter=1)
    except Exception:  # noqa: BLE001 - any clear error will do
        pass
    else:
        raise AssertionError("set_params must reject an unknown parameter")


def _check_given_partition(engine: object, train: Manifest, targets: Sequence[str]) -> None:
    """A study's partition is honoured: each subject is predicted by the fold that tests it."""
    scored = sorted(set().union(*(train.target(t).dropna().index for t in targets)))
    partition = [scored[0::2], scored[1::2]]
    oof = engine.cross_validate(train, folds=partition, seed=0)
    used = oof.run.get("folds")
    assert used is not None, "cross_validate must record its test folds in run['folds']"
    tested = [sorted(f) for f in used]
    assert tested == [sorted(p) for p in partition], f"engine used folds {tested}"
    assert set(oof.frame["subject_id"]) == set(scored)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["subject_id", "method", "target"]).reset_index(drop=True)


def corrupt_first_subject(manifest: Manifest, folder: Path) -> Manifest:
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
