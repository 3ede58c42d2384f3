"""One self-contained HTML page per run: summary card, stage and layer tables, inline SVG plots.

No scripts, no external resources (a Content-Security-Policy forbids loading any), real table
markup with scoped headers, plots with titles and descriptions, a print stylesheet.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from modelzip.report import plots
from modelzip.report.summary import fmt_bytes, headline, metric_label, summary_cells

CSS = """
:root { --ink:#1b1f24; --muted:#57606a; --line:#d0d7de; --bg:#f6f8fa; --accent:#0072B2; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--ink); background:#fff; }
main { max-width: 1080px; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 1.25rem 0 .4rem; }
.sub { color: var(--muted); margin: 0; }
.card { border:1px solid var(--line); border-radius:10px; padding:1rem 1.25rem;
  background:var(--bg); margin-top:1rem; }
.headline { font-size:1.15rem; margin:.25rem 0 .75rem; }
.big { font-size:1.6rem; font-weight:700; color:var(--accent); }
.grid { display:grid; grid-template-columns: minmax(0,1.3fr) minmax(0,1fr); gap:1.25rem; }
@media (max-width: 820px) { .grid { grid-template-columns: 1fr; } }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
caption { text-align:left; color:var(--muted); font-size:.85rem; padding-bottom:.3rem; }
th, td { padding: .3rem .55rem; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { text-align:left; font-weight:600; border-bottom: 2px solid var(--ink); }
td.n, th.n { text-align: right; white-space: nowrap; }
tbody th { text-align:left; font-weight:500; }
.codec { white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
tbody th.name { min-width: 15rem; }
.name { overflow-wrap:anywhere; font-family: ui-monospace,SFMono-Regular,Menlo,monospace;
  font-size:.85rem; }
.bar { display:inline-block; height:.55rem; background:var(--accent); border-radius:2px;
  margin-left:.35rem; vertical-align:middle; }
dl.env { display:grid; grid-template-columns:max-content 1fr; gap:.15rem .8rem; margin:0; }
dl.env dt { color:var(--muted); } dl.env dd { margin:0; }
figure { margin: 1rem 0; }
figure svg.plot { width:100%; height:auto; max-width: 100%; }
figcaption { color:var(--muted); font-size:.85rem; }
.hists { display:grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap:1rem; }
.note { color:var(--muted); font-size:.9rem; }
pre { background:var(--bg); border:1px solid var(--line); padding:.75rem; overflow:auto;
  font-size:.8rem; }
@media print {
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  .card { background: none; }
  section, figure, table { break-inside: avoid; }
  .scroll { overflow: visible; }
  h2 { break-after: avoid; }
  details { display: block; } details > summary { display: none; }
  a { color: inherit; text-decoration: none; }
}
"""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _name(value: str) -> str:
    """A layer name that breaks after dots and underscores on a narrow screen, never cut."""
    return re.sub(r"([._])", r"\1<wbr>", _e(value))


def _summary(record: dict[str, Any]) -> str:
    rows = []
    for label, cells in summary_cells(record):
        tds = []
        for cell in cells:
            if cell is None:
                tds.append('<td class="n">—</td>')
                continue
            key, value, text = cell
            tds.append(
                f'<td class="n" data-key="{_e(key)}" data-value="{_e(json.dumps(value))}">'
                f"{_e(text)}</td>"
            )
        rows.append(f'<tr><th scope="row">{_e(label)}</th>{"".join(tds)}</tr>')
    env = record.get("environment")
    if env:
        flags = ", ".join(env.get("cpu_flags") or []) or "none of note"
        env_html = (
            '<dl class="env">'
            f'<dt>CPU</dt><dd data-key="environment.cpu" '
            f'data-value="{_e(json.dumps(env["cpu"]))}">{_e(env["cpu"])}</dd>'
            f"<dt>CPU flags</dt><dd>{_e(flags)}</dd>"
            f'<dt>threads</dt><dd data-key="environment.threads" '
            f'data-value="{_e(json.dumps(env["threads"]))}">{_e(env["threads"])}</dd>'
            f"<dt>cores</dt><dd>{_e(env.get('cores', '?'))}</dd>"
            f"<dt>torch</dt><dd>{_e(env.get('torch', '?'))}</dd>"
            f"<dt>Python</dt><dd>{_e(env.get('python', '?'))}</dd>"
            "</dl>"
        )
    else:
        env_html = '<p class="note">The machine was not recorded in this run.</p>'
    lat = record.get("latency_ratio")
    lat_note = (
        "Latency: median of repeated forward passes on this machine, in one run; the ratio is "
        "compressed / baseline (below 1 is faster)."
        if lat
        else "Latency was not measured in this run."
    )
    return f"""
<section class="card" id="summary" aria-labelledby="summary-h">
<h2 id="summary-h" style="margin-top:0;border:0">Summary</h2>
<p class="headline">{headline(record, html=True)}</p>
<div class="grid">
<table>
<caption>Baseline (fp32 <code>torch.save</code> file) against the compressed <code>.mzip</code>,
measured on the test split</caption>
<thead><tr><th scope="col">metric</th><th scope="col" class="n">baseline (fp32)</th>
<th scope="col" class="n">compressed</th></tr></thead>
<tbody>{"".join(rows)}</tbody>
</table>
<div><h3 style="margin-top:0">Measured on</h3>{env_html}<p class="note">{lat_note}</p></div>
</div>
</section>"""


def _stages(record: dict[str, Any]) -> str:
    b = record["baseline"]
    metric = html.escape(metric_label(record["compressed"]))
    rows = [
        '<tr><th scope="row">0</th><td>fp32 baseline</td>'
        f'<td class="n">{b["accuracy"]:.2%}</td><td class="n">—</td>'
        f'<td class="n">{b["nonzero"]:,}</td><td class="n">{b["bytes"]:,}</td>'
        '<td class="n">—</td></tr>'
    ]
    prev = b["accuracy"]
    for s in record["stages"]:
        delta = 100 * (s["accuracy"] - prev)
        prev = s["accuracy"]
        rows.append(
            f'<tr><th scope="row">{s["stage"]}</th><td>{_e(s["method"])}</td>'
            f'<td class="n">{s["accuracy"]:.2%}</td><td class="n">{delta:+.2f}</td>'
            f'<td class="n">{s["nonzero"]:,}</td><td class="n">{s["bytes"]:,}</td>'
            f'<td class="n">{s["seconds"]:.1f}</td></tr>'
        )
    notes = []
    for s in record["stages"]:
        for key, value in (s.get("notes") or {}).items():
            if key == "layer_sparsity" or not value:
                continue
            text = json.dumps(value, indent=1) if not isinstance(value, str) else value
            notes.append(
                f"<h3>Stage {s['stage']} ({_e(s['method'])}): {_e(key)}</h3><pre>{_e(text)}</pre>"
            )
    notes_html = (
        f"<details><summary>Stage notes ({len(notes)})</summary>{''.join(notes)}</details>"
        if notes
        else ""
    )
    return f"""
<section id="stages" aria-labelledby="stages-h">
<h2 id="stages-h">Stages</h2>
<table>
<caption>{metric.capitalize()} and size after each stage (bytes: the model as a .mzip at that
point)</caption>
<thead><tr><th scope="col">#</th><th scope="col">method</th>
<th scope="col" class="n">{metric}</th><th scope="col" class="n">change (points)</th>
<th scope="col" class="n">nonzero</th><th scope="col" class="n">bytes</th>
<th scope="col" class="n">seconds</th></tr></thead>
<tbody>{"".join(rows)}</tbody>
</table>{notes_html}
</section>"""


def _layers(record: dict[str, Any]) -> str:
    layers = record.get("layers")
    if not layers:
        return (
            '<section id="layers"><h2>Layers</h2><p class="note">No per-layer data: this run '
            "record has no <code>layers</code> and its .mzip was not found.</p></section>"
        )
    top = max(r["share"] for r in layers) or 1
    rows = []
    for r in layers:
        bits = "fp32" if r["bits"] is None else str(r["bits"])
        codec = "<br>".join(_e(c) for c in r["codec"].split(", "))
        width = 4 * r["share"] / top
        rows.append(
            f'<tr><th scope="row" class="name">{_name(r["layer"])}</th>'
            f'<td class="name">{_e(", ".join(r["tensors"]))}</td>'
            f'<td class="n">{r["params"]:,}</td><td class="n">{r["sparsity"]:.1%}</td>'
            f'<td class="n">{bits}</td><td class="n">{r["bits_per_weight"]:.2f}</td>'
            f'<td class="name codec">{codec}</td><td class="n">{r["bytes"]:,}</td>'
            f'<td class="n">{r["share"]:.1%}<span class="bar" style="width:{width:.2f}rem">'
            "</span></td></tr>"
        )
    f = record.get("file") or {}
    foot = (
        f'<p class="note">File: {f.get("bytes", 0):,} bytes = payloads '
        f"{f.get('payload_bytes', 0):,} + metadata {f.get('metadata_bytes', 0):,} "
        f"(format v{_e(f.get('version', '?'))}). Bits: the value grid (quantizer bits or "
        "log2 of the codebook size); bits/w: stored bits per weight after coding.</p>"
        if f
        else ""
    )
    return f"""
<section id="layers" aria-labelledby="layers-h">
<h2 id="layers-h">Layers</h2>
<table>
<caption>Where the bytes go, layer by layer (share: of the whole file)</caption>
<thead><tr><th scope="col">layer</th><th scope="col">tensors</th>
<th scope="col" class="n">params</th><th scope="col" class="n">sparsity</th>
<th scope="col" class="n">bits</th><th scope="col" class="n">bits/w</th>
<th scope="col">codec</th><th scope="col" class="n">bytes</th>
<th scope="col" class="n">share</th></tr></thead>
<tbody>{"".join(rows)}</tbody>
</table>{foot}
</section>"""


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _plots(record: dict[str, Any]) -> str:
    if not plots.available():
        return (
            '<section id="plots"><h2>Plots</h2><p class="note">Plots need matplotlib: '
            "<code>pip install 'modelzip[report]'</code>, then "
            "<code>modelzip report report.json -o report.html</code>.</p></section>"
        )
    parts = ['<section id="plots" aria-labelledby="plots-h"><h2 id="plots-h">Plots</h2>']
    layers = record.get("layers")
    if layers:
        total = (record.get("file") or {}).get("bytes", record["compressed"]["bytes"])
        parts.append(
            _figure(
                plots.bytes_by_layer(layers, total),
                "Stored bytes per layer in the .mzip, largest first, with the share of the file.",
            )
        )
    front = " and the search's Pareto front" if record.get("pareto") else ""
    parts.append(
        _figure(
            plots.accuracy_vs_size(record),
            f"Test accuracy against file size: the fp32 baseline, each stage{front}.",
        )
    )
    hists = record.get("histograms") or []
    if hists:
        figs = "".join(
            _figure(
                plots.histogram(h, f"hist{i}"),
                f"{h['tensor']}: after (bars, nonzero weights)"
                + (", before (line)" if h.get("before") else "")
                + (", codebook centroids (red)" if h.get("centroids") else ""),
            )
            for i, h in enumerate(hists)
        )
        parts.append(f'<h3>Weights before and after</h3><div class="hists">{figs}</div>')
    smap = record.get("sparsity_map")
    if smap:
        parts.append(
            _figure(
                plots.sparsity_pattern(smap),
                f"Which weights of {smap['tensor']} remain: fraction kept per block of "
                f"{smap['block'][0]} x {smap['block'][1]} weights.",
            )
        )
    sens = record.get("sensitivity")
    if sens and sens.get("layers"):
        parts.append(
            _figure(
                plots.sensitivity_curves(sens),
                "Accuracy when one layer alone is pruned to each sparsity (the others intact).",
            )
        )
    parts.append("</section>")
    return "".join(parts)


def render_html(record: dict[str, Any], title: str = "modelzip report") -> str:
    """The report page of a record (``build_record``) as one HTML string."""
    recipe = record.get("recipe")
    recipe_text = recipe if isinstance(recipe, str) else json.dumps(recipe, indent=2)
    sub = " · ".join(
        _e(x)
        for x in (
            f"model {record.get('model_spec', '?')}",
            f"data {record.get('data', '?')}",
            f"seed {record.get('seed', '?')}",
            f"file {record['out']}" if record.get("out") else "",
        )
        if x
    )
    size = fmt_bytes(record["compressed"]["bytes"])
    body = "\n".join((_summary(record), _stages(record), _layers(record), _plots(record)))
    # narrow screens scroll a wide table sideways instead of the whole page
    body = body.replace("<table>", '<div class="scroll"><table>').replace(
        "</table>", "</table></div>"
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>{_e(title)}: {record["ratio"]:.1f}x smaller, {size}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header><h1>{_e(title)}</h1><p class="sub">{sub}</p></header>
{body}
<section id="recipe" aria-labelledby="recipe-h"><h2 id="recipe-h">Recipe</h2>
<pre>{_e(recipe_text)}</pre></section>
<p class="note">Written by modelzip. The same data is in report.json (machine-readable) and
report.md.</p>
</main>
</body>
</html>
"""
