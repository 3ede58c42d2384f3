"""``modelzip inspect`` as plain text that reads at any width (80 columns and up).

Names are never cut: a layer or tensor name that does not fit its column gets a line of its
own (broken after a ``.`` when longer than the line, continued with a 4-space indent), and
its numbers follow on the next line. Numbers never wrap.
"""

from __future__ import annotations

import shutil
import textwrap
from typing import Any

from modelzip.codec.inspect import layer_summary

CONT = "    "
MIN_NAME = 12


def terminal_width(default: int = 80) -> int:
    """The width to format for (``COLUMNS`` when set, else the terminal's, else 80)."""
    return max(40, shutil.get_terminal_size((default, 24)).columns)


def wrap_name(name: str, width: int, indent: str = "") -> list[str]:
    """``name`` on lines of at most ``width``, broken after dots (continuations indented)."""
    first = width - len(indent)
    if len(name) <= first:
        return [indent + name]
    parts = [p + "." for p in name.split(".")]
    parts[-1] = parts[-1][:-1]
    lines, cur, room = [], "", first
    for part in parts:
        while len(part) > room:  # a segment longer than a line: hard break, rare
            if cur:
                lines.append(cur)
                cur, room = "", width - len(indent) - len(CONT)
                continue
            lines.append(part[:room])
            part, room = part[room:], width - len(indent) - len(CONT)
        if len(cur) + len(part) > room:
            lines.append(cur)
            cur, room = part, width - len(indent) - len(CONT)
        else:
            cur += part
    if cur:
        lines.append(cur)
    return [indent + (CONT if i else "") + line for i, line in enumerate(lines)]


def _table(
    header: list[str],
    rows: list[tuple[str, list[str], list[str]]],
    width: int,
    *,
    align: str,
) -> list[str]:
    """Rows of (name, cells, extra lines): the name column takes what the cells leave."""
    ncell = len(header) - 1
    widths = [len(h) for h in header[1:]]
    for _, cells, _ in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
    cells_w = sum(widths) + 2 * ncell
    longest = max([len(header[0])] + [len(n) for n, _, _ in rows])
    name_w = max(MIN_NAME, min(longest, width - cells_w))

    def line(name: str, cells: list[str]) -> str:
        body = "".join(
            "  " + (c.rjust(w) if a == "r" else c.ljust(w))
            for c, w, a in zip(cells, widths, align, strict=True)
        )
        return (name.ljust(name_w) + body).rstrip()

    out = [line(header[0], header[1:])]
    for name, cells, extra in rows:
        if len(name) <= name_w:
            out.append(line(name, cells))
        else:
            out += wrap_name(name, width)
            out.append(line("", cells))
        out += extra
    return out


def format_inspect(
    info: dict[str, Any],
    detail: dict[str, dict[str, Any]] | None = None,
    *,
    tensors: bool = False,
    width: int | None = None,
) -> str:
    """The text ``modelzip inspect`` prints: a per-layer summary, or with ``tensors`` every
    tensor grouped under its layer, with its codecs."""
    width = width or terminal_width()
    title = (
        f"{info['file']}: {info['bytes']:,} bytes, format v{info['version']}, "
        f"payload {info['payload_bytes']:,} B, metadata {info['metadata_bytes']:,} B "
        f"({info['metadata_fraction']:.2%})"
    )
    lines = textwrap.wrap(title, width, break_long_words=True, break_on_hyphens=False)
    lines.append("")
    layers = layer_summary(info, detail)
    if not tensors:
        rows: list[tuple[str, list[str], list[str]]] = [
            (
                r["layer"],
                [
                    f"{r['params']:,}",
                    f"{r['sparsity']:.1%}",
                    "fp" if r["bits"] is None else str(r["bits"]),
                    f"{r['bits_per_weight']:.2f}",
                    f"{r['bytes']:,}",
                    f"{r['share']:.1%}",
                ],
                [],
            )
            for r in layers
        ]
        header = ["layer", "params", "sparsity", "bits", "bits/w", "bytes", "share"]
        lines += _table(header, rows, width, align="rrrrrr")
        lines += [
            "",
            f"{len(layers)} layers. bits: the value grid (quantizer bits, log2 of the codebook",
            "size; fp: floats); bits/w: stored bits per weight. Per tensor: --tensors",
        ]
        return "\n".join(lines) + "\n"
    by_name = {t["name"]: t for t in info["tensors"]}
    trows: list[tuple[str, list[str], list[str]]] = []
    for r in layers:
        trows.append(
            (
                r["layer"],
                [
                    "layer",
                    "",
                    f"{r['params']:,}",
                    f"{r['bytes']:,}",
                    f"{r['bits_per_weight']:.2f}",
                    f"{r['sparsity']:.1%}",
                    "",
                ],
                [],
            )
        )
        for leaf in r["tensors"]:
            full = f"{r['layer']}.{leaf}" if f"{r['layer']}.{leaf}" in by_name else leaf
            t = by_name[full]
            codecs = textwrap.wrap(
                "codecs: " + ", ".join(t["codecs"]),
                width,
                initial_indent=CONT + "  ",
                subsequent_indent=CONT + "  " + " " * 8,
                break_long_words=True,
                break_on_hyphens=False,
            )
            trows.append(
                (
                    "  " + leaf,
                    [
                        t["kind"],
                        "x".join(map(str, t["shape"])) or "scalar",
                        f"{t['elements']:,}",
                        f"{t['bytes']:,}",
                        f"{t['bits_per_weight']:.2f}",
                        f"{t['sparsity']:.1%}",
                        f"{t['entropy_bytes']:,.0f}",
                    ],
                    codecs,
                )
            )
    header = ["layer / tensor", "kind", "shape", "params", "bytes", "bits/w", "sparsity", "entropy"]
    lines += _table(header, trows, width, align="llrrrrr")
    lines += ["", "entropy: order-0 entropy of the stored integer codes, in bytes"]
    return "\n".join(lines) + "\n"
