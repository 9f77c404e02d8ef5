"""The dataset card's schema (pydantic): each malformed key is one line naming it.

Only the keys liverfat reads are checked; anything else a card carries (a description, units,
the phantom's grid) is kept as it is. Loading a card with a wrong type (``range: [0]``,
``splits: A``, ``liver_label: liver``) stops at load with ``card key targets.liver_pdff_pct.range:
...`` instead of a traceback wherever the value is first used.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError, model_validator

from liverfat.errors import ManifestError


class _Entry(BaseModel):
    """A target or covariate: what it means, its unit and its plausible range."""

    model_config = ConfigDict(extra="allow")
    meaning: str | None = None
    unit: str | None = None
    range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> _Entry:
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {list(self.range)}")
        return self


class _Split(BaseModel):
    model_config = ConfigDict(extra="allow")
    meaning: str | None = None
    subset_of: str | None = None


class _Card(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    subjects: str
    data_root: str | None = None
    liver_label: StrictInt | None = None
    targets: dict[str, _Entry | None]
    covariates: dict[str, _Entry | None] | None = None
    splits: dict[str, _Split | None]


def check_card(card: dict[str, Any], where: str) -> None:
    """Raise :class:`ManifestError` with one line naming the first malformed key of ``card``."""
    try:
        _Card.model_validate(card)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "(card)"
        message = error["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ManifestError(f"{where}: card key {key}: {message}{more}") from None
