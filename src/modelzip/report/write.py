"""Write a run's report.json, report.md and report.html (atomically), from one record."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.codec.format import write_atomic
from modelzip.report.record import build_record
from modelzip.report.summary import headline, latency_ratio, metric_label, summary_rows

__all__ = ["markdown", "summary_rows", "write_reports"]


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def markdown(result: dict[str, Any], title: str = "modelzip report") -> str:
    """A Markdown report for a pull request: headline, before/after table, machine, stages,
    per-layer table, stage notes, sensitivity and Pareto points when present, recipe."""
    lines = [f"# {title}", "", headline(result) + ".", ""]
    lines += ["| metric | baseline (fp32) | compressed |", "|---|---:|---:|"]
    lines += [f"| {m} | {b} | {c} |" for m, b, c in summary_rows(result)]
    lines.append(f"| ratio (fp32 bytes / .mzip bytes) | 1.00x | {result['ratio']:.2f}x |")
    env = result.get("environment")
    if env:
        flags = ", ".join(env.get("cpu_flags") or []) or "none of note"
        lines += [
            "",
            f"Measured on {env['cpu']} ({flags}), {env['threads']} torch threads of "
            f"{env.get('cores', '?')} cores, torch {env.get('torch', '?')}.",
        ]
    lines += [
        "",
        "## Stages",
        "",
        f"| # | method | {metric_label(result['compressed'])} | nonzero | bytes | seconds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in result["stages"]:
        lines.append(
            f"| {s['stage']} | {s['method']} | {s['accuracy']:.2%} | {s['nonzero']:,} | "
            f"{s['bytes']:,} | {s['seconds']:.1f} |"
        )
    if result.get("layers"):
        lines += [
            "",
            "## Layers",
            "",
            "| layer | params | sparsity | bits | bits/w | codec | bytes | share |",
            "|---|---:|---:|---:|---:|---|---:|---:|",
        ]
        for r in result["layers"]:
            bits = "fp32" if r["bits"] is None else r["bits"]
            lines.append(
                f"| `{_md_cell(r['layer'])}` | {r['params']:,} | {r['sparsity']:.1%} | {bits} | "
                f"{r['bits_per_weight']:.2f} | {_md_cell(r['codec'])} | {r['bytes']:,} | "
                f"{r['share']:.1%} |"
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
    sens = result.get("sensitivity")
    if sens and sens.get("layers"):
        cols = [f"{s:.0%}" for s in sens["sparsities"]]
        lines += ["", "## Sensitivity (one layer pruned at a time)", ""]
        lines.append("| layer | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for name, row in sens["layers"].items():
            accs = " | ".join(f"{a:.2%}" for a in row["accuracy"])
            lines.append(f"| `{_md_cell(name)}` | {accs} |")
    if result.get("pareto"):
        lines += ["", "## Pareto front", "", "| bytes | accuracy |", "|---:|---:|"]
        for p in sorted(result["pareto"], key=lambda p: p["bytes"]):
            lines.append(f"| {p['bytes']:,} | {p['accuracy']:.2%} |")
    lines += ["", "## Recipe", "", "```json", json.dumps(result["recipe"], indent=2), "```", ""]
    return "\n".join(lines)


def write_record(
    record: dict[str, Any], folder: str | Path, *, html: bool = True
) -> dict[str, str]:
    """Write a finished record as report.json, report.md and (``html``) report.html."""
    from modelzip.report.html import render_html

    folder = Path(folder)
    paths = {"json": str(folder / "report.json"), "md": str(folder / "report.md")}
    if html:
        paths["html"] = str(folder / "report.html")
    body = dict(record)
    body["reports"] = paths
    write_atomic(paths["json"], (json.dumps(body, indent=2, default=str) + "\n").encode())
    write_atomic(paths["md"], markdown(body).encode())
    if html:
        write_atomic(paths["html"], render_html(body).encode())
    return paths


def write_reports(
    result: dict[str, Any],
    folder: str | Path,
    *,
    before: nn.Module | Mapping[str, torch.Tensor] | None = None,
    sensitivity: Mapping[str, Any] | None = None,
    pareto: list[dict[str, Any]] | None = None,
    html: bool = True,
) -> dict[str, str]:
    """Write report.json, report.md and report.html of a compress result under ``folder``.

    Call it in the process that measured: it records this machine as the one the latency
    ran on (unless the result has an ``environment``). The per-layer parts come from the
    ``.mzip`` under ``result["out"]``; ``before`` adds the "before" weight histograms.
    Returns the written paths.
    """
    from modelzip.eval.machine import machine

    out = result.get("out")
    blob = Path(out).read_bytes() if out and Path(out).is_file() else None
    record = build_record(
        result,
        mzip=blob,
        before=before,
        environment=result.get("environment") or machine(),
        sensitivity=sensitivity,
        pareto=pareto,
    )
    ratio = latency_ratio(record)
    if ratio is not None:
        record["latency_ratio"] = ratio
    return write_record(record, folder, html=html)
