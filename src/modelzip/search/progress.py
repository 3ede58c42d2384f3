"""The live display of a search: trials done, best within the budget, front, time left."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def time_left(
    mean_trial_s: float | None,
    trials_left: int,
    *,
    workers: int = 1,
    elapsed_s: float = 0.0,
    budget_s: float | None = None,
) -> float | None:
    """The estimated time left: the trials still to run at the mean trial's duration, but
    with a time budget no longer than what is left of it plus one trial (no new trial
    starts after the budget; the ones in flight finish).

    Example:
        >>> time_left(60.0, 100, elapsed_s=500.0, budget_s=600.0)
        160.0
    """
    if mean_trial_s is None:
        return None
    by_count = mean_trial_s * max(0, trials_left) / max(1, workers)
    if budget_s is None:
        return by_count
    return min(by_count, max(0.0, budget_s - elapsed_s) + mean_trial_s)


@dataclass
class SearchStatus:
    """What the display shows; the runner updates it after every trial event."""

    done: int = 0
    total: int = 0
    pruned: int = 0
    running: int = 0
    best: str = "none within the budget yet"
    front: int = 0
    elapsed: float = 0.0
    eta: float | None = None
    last: str = ""


class LiveDisplay:
    """A rich live table on stderr; silent when disabled (``--json``, not a terminal)."""

    def __init__(self, title: str, *, enabled: bool) -> None:
        self.title = title
        self.enabled = enabled and sys.stderr.isatty()
        self._live: Live | None = None
        self._status = SearchStatus()
        self._at = time.monotonic()

    def __enter__(self) -> LiveDisplay:
        if self.enabled:
            self._live = Live(self, console=Console(stderr=True), refresh_per_second=1)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def update(self, status: SearchStatus) -> None:
        self._status, self._at = status, time.monotonic()
        if self._live is not None:
            self._live.refresh()

    def __rich__(self) -> Table:
        # the clock keeps moving between trial events
        since = time.monotonic() - self._at
        st = self._status
        eta = None if st.eta is None else max(0.0, st.eta - since)
        return self._render(replace(st, elapsed=st.elapsed + since, eta=eta))

    def _render(self, st: SearchStatus) -> Table:
        table = Table(title=self.title, show_header=False)
        table.add_column("what")
        table.add_column("value")
        table.add_row(
            "trials", f"{st.done}/{st.total} done ({st.pruned} stopped early), {st.running} running"
        )
        table.add_row("best within budget", st.best)
        table.add_row("Pareto front", f"{st.front} policies")
        table.add_row("elapsed", _duration(st.elapsed))
        table.add_row("estimated left", _duration(st.eta))
        if st.last:
            table.add_row("last trial", st.last)
        return table


__all__ = ["LiveDisplay", "SearchStatus", "time_left"]
