"""What a search leaves behind: trade-off points, the Pareto front, the pick, the plot.

Pure functions over trial records (dicts with ``number``, ``objective`` (the value being
minimised: bytes or a latency ratio), ``bytes``, ``accuracy`` (val), ``feasible``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("modelzip")


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both ``objective`` (lower) and ``accuracy`` (higher).

    Example:
        >>> pts = [{"objective": 10, "accuracy": 0.9}, {"objective": 20, "accuracy": 0.8}]
        >>> [p["objective"] for p in pareto_front(pts)]
        [10]
    """
    front = []
    for p in points:
        dominated = any(
            q["objective"] <= p["objective"]
            and q["accuracy"] >= p["accuracy"]
            and (q["objective"] < p["objective"] or q["accuracy"] > p["accuracy"])
            for q in points
        )
        if not dominated:
            front.append(p)
    # one point per (objective, accuracy): the earliest trial
    seen: set[tuple[float, float]] = set()
    unique = []
    for p in sorted(front, key=lambda p: (p["objective"], -p["accuracy"], p["number"])):
        key = (p["objective"], p["accuracy"])
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def pick(
    points: list[dict[str, Any]], floor: float, *, target: float | None = None
) -> tuple[dict[str, Any] | None, bool]:
    """The best policy within the budget (lowest objective, then highest accuracy), and True;
    else the one closest to the floor (smallest shortfall, then lowest objective), and False.

    With a ``target`` above the floor (floor plus a margin for val noise), the best policy at
    or above the target is taken first; one between floor and target only when none is.
    """
    if not points:
        return None, False
    eps = 1e-9  # accuracies are counts / n: 0.925 must pass a floor computed as 0.928 - 0.003
    ok = [p for p in points if p["accuracy"] >= floor - eps]
    safe = [p for p in ok if target is not None and p["accuracy"] >= target - eps]
    if safe:
        ok = safe
    if ok:
        return min(ok, key=lambda p: (p["objective"], -p["accuracy"], p["number"])), True
    return min(points, key=lambda p: (floor - p["accuracy"], p["objective"], p["number"])), False


def plot_front(
    points: list[dict[str, Any]],
    front: list[dict[str, Any]],
    *,
    floor: float,
    baseline: float,
    objective: str,
    folder: Path,
    best: dict[str, Any] | None = None,
) -> list[str]:
    """pareto.png and pareto.svg: every trial, the front, the accuracy floor. Returns the
    paths written ([] when matplotlib is not installed: the JSON holds the same data)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no Pareto plot (pip install 'modelzip[search]')")
        return []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [p["objective"] for p in points]
    ax.scatter(xs, [100 * p["accuracy"] for p in points], s=14, c="0.6", label="trials")
    fr = sorted(front, key=lambda p: p["objective"])
    ax.plot(
        [p["objective"] for p in fr],
        [100 * p["accuracy"] for p in fr],
        "o-",
        c="tab:blue",
        ms=5,
        label="Pareto front",
    )
    ax.axhline(100 * floor, c="tab:red", ls="--", lw=1, label="accuracy floor")
    ax.axhline(100 * baseline, c="0.3", ls=":", lw=1, label="baseline")
    if best is not None:
        ax.scatter(
            [best["objective"]],
            [100 * best["accuracy"]],
            marker="*",
            s=160,
            c="tab:orange",
            zorder=5,
            label="chosen",
        )
    if objective == "bytes":
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        # plain numbers: the default 10^k labels go through mathtext, the slow part of a plot
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(".mzip bytes")
    else:
        ax.set_xlabel("latency / baseline latency (batch N)")
    ax.set_ylabel("val accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written = []
    for ext in ("png", "svg"):
        path = folder / f"pareto.{ext}"
        tmp = folder / f".pareto.tmp.{ext}"
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)
        written.append(str(path))
    plt.close(fig)
    return written


__all__ = ["pareto_front", "pick", "plot_front"]
