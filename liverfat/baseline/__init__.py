"""The covariate-only baseline engine (ordinary least squares on age, sex, height, weight)."""

from liverfat.baseline.engine import LinearBaseline

__all__ = ["LinearBaseline"]
