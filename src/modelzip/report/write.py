"""Write a compress result as report.json and report.md (atomically)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelzip.codec.format import write_atomic


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, baseline, compressed) rows shared by the console table and the markdown."""
    b, c = result["baseline"], result["compressed"]
    rows = [
        ("accuracy", f"{b['accuracy']:.2%}", f"{c['accuracy']:.2%}"),
        ("bytes", _fmt_bytes(b["bytes"]), _fmt_bytes(c["bytes"])),
        ("params", f"{b['params']:,}", f"{c['params']:,}"),
        ("nonzero", f"{b['nonzero']:,}", f"{c['nonzero']:,}"),
        ("bits/weight", f"{b['bits_per_weight']:.2f}", f"{c['bits_per_weight']:.2f}"),
    ]
    if "latency_ms" in b and "latency_ms" in c:
        n = b["latency_ms"]["N"]
        rows.append(
            ("latency b1 (ms)", f"{b['latency_ms']['b1']:.3f}", f"{c['latency_ms']['b1']:.3f}")
        )
        rows.append(
            (f"latency b{n} (ms)", f"{b['latency_ms']['bN']:.3f}", f"{c['latency_ms']['bN']:.3f}")
        )
    return rows


def markdown(result: dict[str, Any], title: str = "modelzip report") -> str:
    """A readable Markdown report: headline, before/after table, stages, per-layer notes."""
    lines = [f"# {title}", ""]
    lines.append(
        f"**{result['ratio']:.1f}x smaller**, accuracy {result['baseline']['accuracy']:.2%} -> "
        f"{result['compressed']['accuracy']:.2%} ({100 * result['accuracy_delta']:+.2f} points) "
        f"on the test split of `{result['data']}`."
    )
    lines += ["", "| metric | baseline (fp32) | compressed |", "|---|---:|---:|"]
    lines += [f"| {m} | {b} | {c} |" for m, b, c in summary_rows(result)]
    lines += [
        "",
        "## Stages",
        "",
        "| # | method | accuracy | nonzero | bytes | seconds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in result["stages"]:
        lines.append(
            f"| {s['stage']} | {s['method']} | {s['accuracy']:.2%} | {s['nonzero']:,} | "
            f"{s['bytes']:,} | {s['seconds']:.1f} |"
        )
    for s in result["stages"]:
        notes = s.get("notes") or {}
        for key, value in notes.items():
            if isinstance(value, dict) and value:
                lines += ["", f"### Stage {s['stage']} ({s['method']}): {key}", ""]
                first = next(iter(value.values()))
                if isinstance(first, dict):
                    cols = list(first)
                    lines.append("| layer | " + " | ".join(cols) + " |")
                    lines.append("|---|" + "---:|" * len(cols))
                    for layer, row in value.items():
                        lines.append(
                            f"| {layer} | " + " | ".join(str(row.get(c, "")) for c in cols) + " |"
                        )
                else:
                    lines += ["| layer | value |", "|---|---:|"]
                    lines += [f"| {k} | {v} |" for k, v in value.items()]
    lines += ["", "## Recipe", "", "```json", json.dumps(result["recipe"], indent=2), "```", ""]
    return "\n".join(lines)


def write_reports(result: dict[str, Any], folder: str | Path) -> dict[str, str]:
    """Write report.json and report.md under ``folder``; returns their paths."""
    folder = Path(folder)
    clean = {k: v for k, v in result.items() if k != "model"}
    paths = {"json": str(folder / "report.json"), "md": str(folder / "report.md")}
    write_atomic(paths["json"], (json.dumps(clean, indent=2) + "\n").encode())
    write_atomic(paths["md"], markdown(clean).encode())
    return paths
