"""The engine base every liverfat engine shares (docs/design.md, "Engines").

An engine follows scikit-learn's estimator contract: the constructor takes keyword-only
arguments and only stores (and validates) them; ``fit(manifest)`` learns attributes ending in
``_``; ``predict(manifest)`` returns a predictions table; ``cross_validate(manifest, folds=,
seed=)`` gives out-of-fold predictions; ``save(dir)`` / ``load(dir)`` persist without pickle.
:class:`Engine` gives every engine the same parameter handling (``get_params``,
``set_params``, ``clone``, modelled on scikit-learn's ``BaseEstimator``) and the one place for
resumable state, the constructor's ``work_dir``. Plug-in engines may subclass it; the
conformance check :func:`liverfat.testing.check_engine` tells whether an engine holds the
contract.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any, Self

from liverfat.errors import LiverfatError


class Engine:
    """Parameter handling and working folder shared by every engine.

    Subclasses declare their parameters as keyword-only constructor arguments stored under the
    same names, and may define ``_validate()`` (called by :meth:`set_params`; constructors call
    it themselves) to reject bad values with one clear line.
    """

    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's keyword-only parameter names, in signature order."""
        names = []
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or parameter.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"{cls.__name__}.__init__: parameter {name} must be keyword-only")
            names.append(name)
        return names

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments as stored (``type(self)(**get_params())`` is a clone)."""
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params: Any) -> Self:
        """Change constructor arguments (validated as the constructor would); returns self."""
        unknown = set(params) - set(self.param_names())
        if unknown:
            raise LiverfatError(
                f"{type(self).__name__} has no parameter(s) {', '.join(sorted(unknown))}"
            )
        for name, value in params.items():
            setattr(self, name, value)
        validate = getattr(self, "_validate", None)
        if validate is not None:
            validate()
        return self

    def clone(self) -> Self:
        """An unfitted engine with the same parameters (deep-copied)."""
        return type(self)(**copy.deepcopy(self.get_params()))

    def params_json(self) -> dict[str, Any]:
        """The parameters as JSON values (tuples become lists, paths strings)."""
        return json.loads(json.dumps(self.get_params(), default=str))

    def work_path(self, *parts: str) -> Path | None:
        """A folder below ``work_dir`` for resumable state (created), or None without one."""
        work_dir = getattr(self, "work_dir", None)
        if work_dir is None:
            return None
        path = Path(work_dir, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def __repr__(self) -> str:
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = [
            f"{name}={value!r}"
            for name, value in self.get_params().items()
            if not _same(value, defaults.get(name))
        ]
        return f"{type(self).__name__}({', '.join(changed)})"


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - arrays and other objects without a plain ==
        return a is b
