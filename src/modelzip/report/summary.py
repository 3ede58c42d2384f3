"""The numbers every report shows first, formatted once for the console, Markdown and HTML."""

from __future__ import annotations

from typing import Any

Cell = tuple[str, Any, str]  # (record key path, raw value, text shown)


def fmt_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def latency_ratio(result: dict[str, Any]) -> dict[str, Any] | None:
    """Compressed over baseline latency at batch 1 and batch N (below 1: faster), or None."""
    b, c = result["baseline"].get("latency_ms"), result["compressed"].get("latency_ms")
    if not b or not c or not b.get("b1") or not b.get("bN"):
        return None
    return {
        "b1": round(c["b1"] / b["b1"], 3),
        "bN": round(c["bN"] / b["bN"], 3),
        "N": b.get("N"),
    }


def metric_label(metrics: dict[str, Any]) -> str:
    """What the record's ``accuracy`` key holds, by the task's own metric key beside it."""
    from modelzip.task import TASKS

    for task in TASKS.values():
        if task.metric != "accuracy" and task.metric in metrics:
            return task.label
    return "accuracy"


def summary_cells(record: dict[str, Any]) -> list[tuple[str, list[Cell | None]]]:
    """(label, [baseline cell, compressed cell]) rows; each cell names the record key it shows."""
    b, c = record["baseline"], record["compressed"]
    metric = metric_label(c)

    def pair(key: str, fmt: Any) -> list[Cell | None]:
        return [
            (f"{side}.{key}", r[key], fmt(r[key])) if key in r else None
            for side, r in (("baseline", b), ("compressed", c))
        ]

    rows: list[tuple[str, list[Cell | None]]] = [
        (metric, pair("accuracy", lambda v: f"{v:.2%}")),
        ("bytes", pair("bytes", lambda v: f"{v:,} B ({fmt_bytes(v)})")),
        ("params", pair("params", lambda v: f"{v:,}")),
        ("nonzero", pair("nonzero", lambda v: f"{v:,}")),
        ("bits/weight", pair("bits_per_weight", lambda v: f"{v:.2f}")),
        (
            "ratio (fp32 / .mzip bytes)",
            [None, ("ratio", record["ratio"], f"{record['ratio']:.2f}x")],
        ),
    ]
    lb, lc = b.get("latency_ms"), c.get("latency_ms")
    if lb and lc:
        n = lb.get("N", "N")
        for k, label in (("b1", "latency, batch 1 (ms)"), ("bN", f"latency, batch {n} (ms)")):
            rows.append(
                (
                    label,
                    [
                        (f"baseline.latency_ms.{k}", lb[k], f"{lb[k]:.3f}"),
                        (f"compressed.latency_ms.{k}", lc[k], f"{lc[k]:.3f}"),
                    ],
                )
            )
    ratio = record.get("latency_ratio") or latency_ratio(record)
    if ratio:
        for k, label in (
            ("b1", "latency ratio, batch 1"),
            ("bN", f"latency ratio, batch {ratio.get('N')}"),
        ):
            rows.append((label, [None, (f"latency_ratio.{k}", ratio[k], f"{ratio[k]:.3g}x")]))
    return rows


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, baseline, compressed) text rows for the console table and the Markdown."""
    return [
        (label, *(cell[2] if cell else "" for cell in cells))  # type: ignore[misc]
        for label, cells in summary_cells(result)
        if not label.startswith("ratio")
    ]


def headline(record: dict[str, Any], *, html: bool = False) -> str:
    """``12.3x smaller, accuracy 97.2% -> 97.0% (-0.20 points) on the test split of digits``."""
    b, c = record["baseline"], record["compressed"]
    delta = 100 * (c["accuracy"] - b["accuracy"])
    ratio = f"{record['ratio']:.1f}x smaller"
    ratio = f'<span class="big">{ratio}</span>' if html else f"**{ratio}**"
    name = metric_label(c)
    data = record.get("data", "?")
    data = f"<code>{data}</code>" if html else f"`{data}`"
    return (
        f"{ratio}, {name} {b['accuracy']:.2%} → {c['accuracy']:.2%} ({delta:+.2f} points) "
        f"on the test split of {data}"
    )
