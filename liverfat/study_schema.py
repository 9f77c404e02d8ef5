"""The study file's schema (pydantic): each key of the wrong type is one line naming it.

:meth:`liverfat.study.Study.load` checks a study file against it before reading any value, so
``folds: abc``, ``engines:`` as a list or ``seed: abc`` stop with ``study key
engines.net.folds: ...`` rather than a traceback. The meaning of each key (pairs, splits that
exist, engines that can be built) is checked by the study itself.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, PositiveInt, StrictBool, ValidationError

from liverfat.errors import LiverfatError

Options = TypeVar("Options", bound=BaseModel)

Text = str | int | float  # YAML reads a name such as 2024 as a number


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: str
    settings: dict[str, Any] | None = None
    cross_validate: StrictBool = False
    folds: PositiveInt = 10
    predict_on: list[Text] | Text | None = None


class _Comparison(BaseModel):
    model_config = ConfigDict(extra="allow")
    pairs: list[str] = []
    review: list[str] | None = None


class _Executor(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: str = "serial"
    workers: PositiveInt | None = None
    scheduler: str | None = None


class _Study(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown keys get their own message
    name: Text | None = None
    manifest: str
    data_root: str | None = None
    target: str | None = None
    splits: dict[str, Text] | None = None
    engines: dict[str, _Stage]
    comparison: _Comparison | None = None
    truth: str | None = None
    out: str | None = None
    executor: _Executor | None = None
    seed: int = 0
    learning_curve: Any = None  # checked by liverfat.learning_curve, with its own messages
    grading: Any = None  # checked by liverfat.graders, with its own messages
    qc: Any = None  # checked by liverfat.study_qc, with its own messages
    repeatability: Any = None  # checked by liverfat.study_repeatability, with its own messages


def stage_options(model: type[Options], value: Any, where: str, name: str) -> Options:
    """A stage's study key (``qc:``, ``grading:``, ``repeatability:``; None: the defaults) as
    ``model``, or one line ``{where} {name}.{key}: {message}`` naming the wrong key."""
    try:
        return model.model_validate(value if value is not None else {})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        raise LiverfatError(f"{where} {name}{'.' + key if key else ''}: {message}") from None


def study_problem(raw: dict[str, Any]) -> str | None:
    """The first key of ``raw`` with a wrong type, as one line, or None."""
    try:
        _Study.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "(file)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"study key {key}: {error['msg']}{more}"
    return None
