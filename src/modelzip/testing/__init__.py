"""Contract test suites that every method (and codec) test subclasses."""

from modelzip.testing.contract import MethodContract

__all__ = ["MethodContract"]
