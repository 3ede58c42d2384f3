"""Progress bars for long steps: rich on stderr, with an estimate of the time left.

Shown only on a terminal and when asked for (``--json`` and pipes stay quiet); bars may nest
(a stage bar around a training bar). Transient: they leave nothing behind in the output.

Example:
    >>> with bar("calibrate", total=8, enabled=False) as advance:
    ...     for _ in range(8):
    ...         advance()
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def shown(enabled: bool) -> bool:
    """Whether a bar asked for (``enabled``) is drawn: only when stderr is a terminal."""
    return enabled and sys.stderr.isatty()


def progress(enabled: bool) -> Progress:
    """A rich Progress: spinner, description, bar, done/total, elapsed, estimated time left."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        disable=not shown(enabled),
        transient=True,
    )


@contextmanager
def bar(description: str, total: int | None, *, enabled: bool) -> Iterator[Callable[..., None]]:
    """A progress bar for one step; yields ``advance(n=1, description=None)``."""
    with progress(enabled) as p:
        task = p.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None) -> None:
            p.update(task, advance=n, description=description)

        yield advance
