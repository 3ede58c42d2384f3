"""One error tree for everything modelzip reports to a user.

Every error carries a one-line message that names the problem and, where there is a
choice, the valid choices. The CLI prints that line and exits with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ModelzipError(Exception):
    """Base of all errors modelzip raises on bad input."""


class ConfigError(ModelzipError):
    """A method config field has a bad value or is unknown."""


class RecipeError(ModelzipError):
    """A recipe cannot be read or names an unknown method."""


class DataError(ModelzipError):
    """A data set cannot be found, read, or does not fit the model."""


class ModelError(ModelzipError):
    """A model spec cannot be resolved or built."""


class FormatError(ModelzipError):
    """A .mzip file is truncated, corrupted, hostile or of an unknown version."""


class UnsupportedError(ModelzipError):
    """A method cannot handle the given layer or model."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' when a close match exists, else ''.

    Example:
        >>> did_you_mean("prnue", ["prune", "quantize"])
        " (did you mean 'prune'?)"
    """
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def choices_text(choices: Iterable[str], limit: int = 40) -> str:
    """Comma-separated, sorted list of valid choices, shortened past ``limit`` items."""
    items = sorted(set(choices))
    if len(items) > limit:
        return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"
    return ", ".join(items)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none): what a one-line
    error quotes of a library's multi-line one."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
