"""Sensitivity analysis and automated policy search."""

from modelzip.search.sensitivity import sensitivity

__all__ = ["sensitivity"]
