"""``modelzip report RUN.json -o report.html``: re-render a finished run's page from its JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelzip.codec.format import write_atomic
from modelzip.errors import ConfigError
from modelzip.report.record import build_record, complete_from_file
from modelzip.report.summary import latency_ratio

REQUIRED = ("baseline", "compressed", "ratio", "stages")


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def load_run(path: Path) -> dict[str, Any]:
    """A run record from ``report.json`` or ``modelzip compress --json`` output, checked."""
    run = _read_json(path, "run JSON")
    if not isinstance(run, dict):
        raise ConfigError(
            f"{path}: expected a JSON object (a compress run), got {type(run).__name__}"
        )
    missing = [k for k in REQUIRED if k not in run]
    if missing:
        raise ConfigError(
            f"{path}: not a compress run record, missing {', '.join(missing)}; give the "
            "report.json that `compress --report DIR` writes or the output of `compress --json`"
        )
    for side in ("baseline", "compressed"):
        if not isinstance(run[side], dict) or not {"accuracy", "bytes"} <= set(run[side]):
            raise ConfigError(f"{path}: {side} must be an object with accuracy and bytes")
    return run


def render_report(
    run: Path,
    output: Path,
    *,
    sensitivity: Path | None = None,
    pareto: Path | None = None,
) -> Path:
    """Write the HTML page of ``run`` to ``output``; returns the path written.

    The per-layer parts come from the record, or from the ``.mzip`` it names under ``out``
    when the record has none (a ``compress --json`` output). ``sensitivity`` and ``pareto``
    add curves and a Pareto front (each a JSON file) to those the record holds.
    """
    from modelzip.report.html import render_html

    if output.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"-o must name an .html file, got {output}")
    record = complete_from_file(load_run(run), run.parent)
    record = build_record(
        record,
        sensitivity=_read_json(sensitivity, "sensitivity JSON") if sensitivity else None,
        pareto=_read_json(pareto, "pareto JSON") if pareto else None,
    )
    if "latency_ratio" not in record and (ratio := latency_ratio(record)) is not None:
        record["latency_ratio"] = ratio
    write_atomic(output, render_html(record).encode())
    return output
