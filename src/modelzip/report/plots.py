"""The report's plots: matplotlib figures rendered to inline, accessible SVG (no JavaScript).

Each function takes parts of the report record (plain JSON) and returns an ``<svg>`` string
with a ``<title>``/``<desc>`` and ``role="img"``, sized by CSS, text kept as text.
"""

from __future__ import annotations

import functools
import html
import io
import re
from collections.abc import Callable
from typing import Any, TypeVar, cast

from modelzip.report.summary import metric_label

#: Colour-blind-safe palette (Okabe & Ito).
BLUE, ORANGE, GREEN, RED, PURPLE, GREY = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#7f7f7f",
)
#: Inches of a full-width plot: the page's column (about 1040 px), so 9 pt text shows at
#: about 12 px on a laptop screen.
WIDE = 10.5
CYCLE = [BLUE, ORANGE, GREEN, RED, PURPLE, "#56B4E9", "#F0E442", GREY]


def available() -> bool:
    """Whether matplotlib is installed (``pip install 'modelzip[report]'``)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


F = TypeVar("F", bound=Callable[..., str])


def _styled(fn: F) -> F:
    """Run a plot function under the report's matplotlib style (never the global rcParams)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        import matplotlib
        from cycler import cycler

        rc: Any = {
            "svg.fonttype": "none",
            "svg.hashsalt": "modelzip",
            "font.size": 9,
            "axes.titlesize": 9,
            "axes.labelsize": 9,
            "xtick.labelsize": 8,
            "ytick.labelsize": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": cycler(color=CYCLE),
        }
        with matplotlib.rc_context(rc):
            return fn(*args, **kwargs)

    return cast(F, wrapper)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Any, title: str, desc: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r'\s(width|height)="[\d.]+pt"', "", text, count=2)
    head_end = text.index(">") + 1
    attrs = ' role="img" aria-labelledby="t d" class="plot"'
    head = text[: head_end - 1] + attrs + ">"
    label = f"<title>{html.escape(title)}</title><desc>{html.escape(desc)}</desc>"
    return head + label + text[head_end:]


def _uid(svg: str, key: str) -> str:
    """Give the svg's ids (title/desc and matplotlib's clip paths) a per-plot prefix."""
    svg = svg.replace('aria-labelledby="t d"', f'aria-labelledby="{key}-t {key}-d"', 1)
    svg = svg.replace("<title>", f'<title id="{key}-t">', 1)
    svg = svg.replace("<desc>", f'<desc id="{key}-d">', 1)
    svg = re.sub(r'id="([^"]+)"', lambda m: f'id="{key}-{m.group(1)}"', svg)
    svg = svg.replace(f'id="{key}-{key}-', f'id="{key}-')
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{key}-{m.group(1)})", svg)
    return re.sub(r'xlink:href="#([^"]+)"', lambda m: f'xlink:href="#{key}-{m.group(1)}"', svg)


def _bytes_axis(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=2, numticks=14))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _short(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return str(n)


def _kb(n: float) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1024**2 else f"{n / 1024**2:,.2f} MiB"


@_styled
def bytes_by_layer(layers: list[dict[str, Any]], total: int) -> str:
    """Horizontal bars: stored bytes per layer (largest first), labelled with share."""
    from modelzip.report.console import wrap_name

    rows = sorted(layers, key=lambda r: -r["bytes"])[:24]
    # long names wrap after dots (never cut), so the bars keep their width
    names = ["\n".join(line.strip() for line in wrap_name(r["layer"], 36)) for r in rows][::-1]
    lines = sum(n.count("\n") + 1 for n in names)
    fig = _figure(WIDE, 0.8 + 0.2 * lines + 0.08 * len(rows))
    ax = fig.add_subplot()
    values = [r["bytes"] / 1024 for r in rows][::-1]
    ax.barh(range(len(rows)), values, color=BLUE)
    ax.set_yticks(range(len(rows)), names)
    for i, r in enumerate(rows[::-1]):
        ax.text(
            r["bytes"] / 1024, i, f" {_kb(r['bytes'])} ({r['share']:.1%})", va="center", fontsize=8
        )
    ax.set_xlabel("stored KiB in the .mzip")
    ax.set_xlim(0, max(values) * 1.35 if values else 1)
    biggest = rows[0] if rows else None
    desc = (
        f"{len(layers)} layers; the largest, {biggest['layer']}, stores "
        f"{biggest['bytes']:,} bytes ({biggest['share']:.1%} of {total:,})"
        if biggest
        else "no layers"
    )
    return _uid(_svg(fig, "Stored bytes by layer", desc), "bytes")


@_styled
def accuracy_vs_size(record: dict[str, Any]) -> str:
    """Accuracy against file size: baseline, each stage, the compressed file, and a search's
    Pareto front when the record has one."""
    fig = _figure(WIDE, 3.6)
    ax = fig.add_subplot()
    b, c = record["baseline"], record["compressed"]
    path = [(b["bytes"], b["accuracy"], "fp32 baseline")]
    path += [(s["bytes"], s["accuracy"], f"{s['stage']}: {s['method']}") for s in record["stages"]]
    xs, ys = [p[0] for p in path], [100 * p[1] for p in path]
    ax.plot(xs, ys, "-o", color=BLUE, label="after each stage", zorder=3)
    for x, y, label in zip(xs, ys, (p[2] for p in path), strict=True):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 5), fontsize=8)
    ax.plot(
        [c["bytes"]],
        [100 * c["accuracy"]],
        "*",
        ms=16,
        color=ORANGE,
        mec="black",
        mew=0.5,
        zorder=4,
        label=".mzip (final)",
    )
    pareto = record.get("pareto") or []
    if pareto:
        pts = sorted((p["bytes"], 100 * p["accuracy"]) for p in pareto)
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            "--s",
            drawstyle="steps-post",
            color=GREEN,
            ms=4,
            label="search Pareto front",
        )
    ax.set_xscale("log", base=2)
    ax.margins(x=0.12, y=0.12)
    _bytes_axis(ax.xaxis)
    ax.set_xlabel("file size (log scale)")
    ax.set_ylabel(f"{metric_label(c)} (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    desc = (
        f"baseline {b['bytes']:,} bytes at {b['accuracy']:.2%}; final {c['bytes']:,} bytes at "
        f"{c['accuracy']:.2%}" + (f"; Pareto front of {len(pareto)} points" if pareto else "")
    )
    return _uid(_svg(fig, "Accuracy against file size", desc), "accsize")


@_styled
def histogram(h: dict[str, Any], key: str) -> str:
    """Weight distribution of one tensor before (outline) and after (bars, nonzero values),
    with the codebook centroids as vertical lines."""
    fig = _figure(3.4, 2.4)
    ax = fig.add_subplot()
    edges = h["after"]["edges"]
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    width = edges[1] - edges[0]
    ax.bar(centers, h["after"]["counts"], width=width, color=BLUE, alpha=0.75, label="after")
    if h.get("before"):
        ax.step(edges[1:], h["before"]["counts"], where="pre", color=GREY, lw=1.2, label="before")
    # the zero slot of a pruned codebook is the pruned weights, not drawn here
    for i, v in enumerate(v for v in h.get("centroids") or [] if v != 0):
        ax.axvline(v, color=RED, lw=0.6, alpha=0.8, label="centroids" if i == 0 else None)
    from modelzip.report.console import wrap_name

    ax.set_title("\n".join(line.strip() for line in wrap_name(h["tensor"], 44)), fontsize=9)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.legend(fontsize=7, loc="upper right")
    cents = h.get("centroids")
    desc = (
        f"{h['tensor']}: {h['after']['values']:,} nonzero weights after "
        f"({h['zeros_after']:,} zeros not drawn)"
        + (f", {len(cents)} codebook centroids" if cents else "")
        + ("; before: all weights" if h.get("before") else "")
    )
    return _uid(_svg(fig, f"Weight histogram of {h['tensor']}", desc), key)


@_styled
def sparsity_pattern(m: dict[str, Any]) -> str:
    """The zero pattern of one weight matrix as block densities (white = all pruned)."""
    rows, cols = m["shape"]
    dens = m["density"]
    aspect = max(0.25, min(1.0, len(dens) / max(len(dens[0]), 1)))
    fig = _figure(WIDE, 1.0 + 4.0 * aspect)
    ax = fig.add_subplot()
    im = ax.imshow(
        dens,
        cmap="Blues",
        vmin=0,
        vmax=1,
        aspect="auto",
        interpolation="nearest",
        extent=(0, cols, rows, 0),
    )
    ax.set_xlabel(f"input column (blocks of {m['block'][1]})")
    ax.set_ylabel(f"output row (blocks of {m['block'][0]})")
    fig.colorbar(im, ax=ax, label="fraction kept", shrink=0.8)
    desc = (
        f"{m['tensor']} ({rows} x {cols}): {m['sparsity']:.1%} of the weights are zero; "
        "darker blocks keep more weights"
    )
    return _uid(_svg(fig, f"Sparsity pattern of {m['tensor']}", desc), "sparsity")


@_styled
def sensitivity_curves(sens: dict[str, Any]) -> str:
    """Accuracy per layer when that layer alone is pruned to each sparsity."""
    fig = _figure(WIDE, 3.6)
    ax = fig.add_subplot()
    xs = [100 * s for s in sens["sparsities"]]
    markers = "os^vD<>p"
    for i, (name, row) in enumerate(sens["layers"].items()):
        ax.plot(
            xs, [100 * a for a in row["accuracy"]], marker=markers[i % len(markers)], label=name
        )
    if isinstance(sens.get("baseline"), int | float):
        ax.axhline(100 * sens["baseline"], color=GREY, ls=":", lw=1, label="unpruned")
    ax.set_xlabel("sparsity of the one pruned layer (%)")
    ax.set_ylabel(f"{sens.get('metric_label', 'accuracy')} on {sens.get('split', 'val')} (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(sens["layers"]) > 6 else 1, loc="lower left")
    worst = min(sens["layers"].items(), key=lambda kv: kv[1]["accuracy"][-1], default=None)
    desc = (
        f"{len(sens['layers'])} layers over sparsities {sens['sparsities']}; most sensitive at "
        f"the highest sparsity: {worst[0]} ({worst[1]['accuracy'][-1]:.2%})"
        if worst
        else "no layers"
    )
    return _uid(_svg(fig, "Per-layer pruning sensitivity", desc), "sens")
