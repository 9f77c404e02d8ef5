"""The engine base: parameters from the constructor signature, set_params, clone, work_dir."""

from __future__ import annotations

import pytest

from liverfat.engine import Engine
from liverfat.errors import LiverfatError


class Toy(Engine):
    def __init__(self, *, alpha: float = 1.0, names: tuple[str, ...] = ("a",), work_dir=None):
        self.alpha = alpha
        self.names = names
        self.work_dir = work_dir
        self._validate()

    def _validate(self) -> None:
        if self.alpha <= 0:
            raise LiverfatError(f"alpha must be positive, got {self.alpha}")


def test_params_clone_and_set_params(tmp_path):
    toy = Toy(alpha=2.0, names=["x", "y"])
    assert Toy.param_names() == ["alpha", "names", "work_dir"]
    assert toy.get_params() == {"alpha": 2.0, "names": ["x", "y"], "work_dir": None}
    toy.fitted_ = True
    clone = toy.clone()
    assert clone.get_params() == toy.get_params() and not hasattr(clone, "fitted_")
    assert clone.names is not toy.names  # deep-copied: changing one leaves the other
    assert toy.set_params(alpha=3.0) is toy and toy.alpha == 3.0
    with pytest.raises(LiverfatError, match="alpha must be positive"):
        toy.set_params(alpha=-1)
    with pytest.raises(LiverfatError, match="no parameter"):
        toy.set_params(beta=1)
    assert repr(Toy(alpha=5.0)) == "Toy(alpha=5.0)"
    assert Toy(names=("p",)).params_json() == {"alpha": 1.0, "names": ["p"], "work_dir": None}


def test_work_path_is_created_under_work_dir(tmp_path):
    assert Toy().work_path("cv") is None
    path = Toy(work_dir=str(tmp_path / "w")).work_path("cv")
    assert path == tmp_path / "w" / "cv" and path.is_dir()


def test_positional_parameters_are_refused():
    class Positional(Engine):
        def __init__(self, alpha=1.0):
            self.alpha = alpha

    with pytest.raises(TypeError, match="keyword-only"):
        Positional.param_names()
