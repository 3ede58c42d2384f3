"""The run report: one self-contained HTML page, report.json and report.md from one record,
checked in a real headless Chromium when one is installed."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

import modelzip as mz
from modelzip.cli import main
from modelzip.report import build_record, markdown
from modelzip.report.html import render_html

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A real demo run (the quick recipe on digits): its folder and stdout."""
    folder = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "--quick", "--out", str(folder)])
    assert code == 0
    return folder, buf.getvalue()


def _get(record: dict, key: str):
    for part in key.split("."):
        record = record[part]
    return record


def _number(text: str) -> float:
    return float(re.match(r"[-\d,]+(\.\d+)?", text.strip()).group().replace(",", ""))


def test_demo_writes_the_three_reports_and_prints_the_html_path(demo):
    folder, stdout = demo
    assert "ratio" in stdout and "accuracy" in stdout  # the before/after table
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["lenet300-digits.mzip", "report.html", "report.json", "report.md"]
    assert f"report: {(folder / 'report.html').resolve()}" in stdout.replace("\n", "")
    record = json.loads((folder / "report.json").read_text())
    assert record["environment"]["threads"] == torch.get_num_threads()
    assert record["environment"]["cpu"]
    assert record["file"]["bytes"] == (folder / "lenet300-digits.mzip").stat().st_size
    # the per-layer table accounts for every payload byte, shares add up with the metadata
    assert sum(r["bytes"] for r in record["layers"]) == record["file"]["payload_bytes"]
    assert [r["layer"] for r in record["layers"]] == ["fc1", "fc2", "fc3"]
    assert all(r["bits"] == 8 for r in record["layers"])  # quick ends with 8-bit weights
    md = (folder / "report.md").read_text()
    assert "## Layers" in md and "| `fc1` |" in md and record["environment"]["cpu"] in md
    assert "## Sensitivity" in md


def test_html_is_self_contained_and_accessible(demo):
    page = (demo[0] / "report.html").read_text()
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert not re.search(r"url\((?!#)", page)  # only in-document SVG references
    assert "default-src 'none'" in page  # the browser itself refuses any load
    assert "@media print" in page
    svgs = re.findall(r"<svg\b[^>]*>", page)
    assert len(svgs) >= 6  # bytes, accuracy/size, 3 histograms, sparsity map, sensitivity
    assert all('role="img"' in s and "aria-labelledby" in s for s in svgs)
    assert page.count("<title id=") == len(svgs)
    ths = re.findall(r"<th\b[^>]*>", page)
    assert ths and all("scope=" in th for th in ths)
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # plots do not clash on ids
    refs = re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', page)
    labels = [i for s in svgs for i in re.search(r'aria-labelledby="([^"]+)"', s)[1].split()]
    assert {a or b for a, b in refs} | set(labels) <= set(ids)  # every reference resolves


def test_report_command_reproduces_the_page_from_report_json(demo, tmp_path):
    folder, _ = demo
    out = tmp_path / "again.html"
    assert main(["report", str(folder / "report.json"), "-o", str(out)]) == 0
    assert out.read_text() == (folder / "report.html").read_text()


def test_report_from_compress_json_reads_layers_from_the_mzip(demo, tmp_path):
    folder, _ = demo
    record = json.loads((folder / "report.json").read_text())
    bare = {k: v for k, v in record.items() if k not in ("layers", "histograms", "file")}
    run = tmp_path / "run.json"
    run.write_text(json.dumps(bare))
    pareto = tmp_path / "front.json"
    front = [{"bytes": 9000, "accuracy": 0.9}, {"bytes": 20000, "accuracy": 0.96}]
    pareto.write_text(json.dumps(front))
    out = tmp_path / "r.html"
    assert main(["report", str(run), "-o", str(out), "--pareto", str(pareto)]) == 0
    page = out.read_text()
    assert '<th scope="row" class="name">fc1</th>' in page  # per-layer table from the file
    assert "search Pareto front" in page and "Pareto front of 2 points" in page


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, [], "run JSON not found"),
        ("{not json", [], "not valid JSON"),
        ('{"baseline": {}}', [], "missing compressed, ratio, stages"),
        ("OK", ["--pareto", "PARETO"], "pareto[0] must be an object"),
        ("OK", ["-o", "x.png"], "-o must name an .html file"),
    ],
)
def test_report_command_bad_input_is_one_line_exit_2(
    demo, tmp_path, capsys, content, args, message
):
    run = tmp_path / "run.json"
    if content == "OK":
        shutil.copy(demo[0] / "report.json", run)
    elif content is not None:
        run.write_text(content)
    (tmp_path / "p.json").write_text('[{"bytes": -1, "accuracy": 0.5}]')
    args = [str(tmp_path / "p.json") if a == "PARETO" else a for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "r.html")]
    assert main(["report", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_codebook_centroids_and_sparsity_map_match_the_file(lenet300, digits, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "stages:\n  - {method: prune, sparsity: 0.7}\n  - {method: cluster, bits: 3}\n"
    )
    before = {k: v.clone() for k, v in lenet300.state_dict().items()}
    result = mz.compress(
        lenet300, digits, str(recipe), out=tmp_path / "c.mzip", measure_latency=False
    )
    deployed = result.pop("model")
    record = build_record(result, mzip=(tmp_path / "c.mzip").read_bytes(), before=before)
    hist = {h["tensor"]: h for h in record["histograms"]}
    w = deployed.fc1.weight.detach()
    h = hist["fc1.weight"]
    # the centroids drawn are exactly the values the stored weights take
    assert set(w[w != 0].tolist()) <= set(h["centroids"])
    assert len(h["centroids"]) <= 2**3 and 0.0 in h["centroids"]  # pruned: the zero slot
    assert sum(h["after"]["counts"]) == int((w != 0).sum())
    assert h["zeros_after"] == int((w == 0).sum())
    assert sum(h["before"]["counts"]) == before["fc1.weight"].numel()
    assert {r["layer"]: r["bits"] for r in record["layers"]} == {"fc1": 3, "fc2": 3, "fc3": 3}
    smap = record["sparsity_map"]
    target = deployed.get_parameter(smap["tensor"]).detach()
    dens = torch.tensor(smap["density"])
    br, bc = smap["block"]
    assert dens.shape == (-(-target.shape[0] // br), -(-target.shape[1] // bc))
    assert float(dens[0, 0]) == pytest.approx(float((target[:br, :bc] != 0).float().mean()))
    page = render_html(record)
    assert "codebook centroids" in page
    assert "## Layers" in markdown(record)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(demo, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no Chromium found (apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    folder, _ = demo
    record = json.loads((folder / "report.json").read_text())
    url = (folder / "report.html").resolve().as_uri()
    errors, requests = [], []
    with sync_api.sync_playwright() as p:
        # a fresh profile: launch_persistent_context is Playwright's way to give one
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=binary,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
            page.goto(url, wait_until="load")
            cells = page.eval_on_selector_all(
                "[data-key]",
                "els => els.map(e => [e.dataset.key, e.dataset.value, e.textContent])",
            )
            heading = page.text_content("h1")
            svg_boxes = page.eval_on_selector_all(
                "svg.plot", "els => els.map(e => e.getBoundingClientRect().width)"
            )
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    assert errors == []
    assert requests == [url]  # the page itself, nothing else
    assert heading == "modelzip report"
    shown = {key: (json.loads(value), text) for key, value, text in cells}
    for key in (
        "baseline.accuracy",
        "compressed.accuracy",
        "baseline.bytes",
        "compressed.bytes",
        "ratio",
        "latency_ratio.b1",
        "latency_ratio.bN",
        "environment.cpu",
        "environment.threads",
    ):
        assert key in shown, key
    for key, (value, text) in shown.items():
        assert value == _get(record, key), key
        if key == "environment.cpu":
            assert text == value
            continue
        # the text shows the value to the digits it prints (percent for accuracies)
        scale = 100 if key.endswith("accuracy") else 1
        digits = re.match(r"[-\d,]+(?:\.(\d+))?", text.strip())[1] or ""
        assert abs(_number(text) - scale * value) <= 0.5 * 10 ** -len(digits) + 1e-9, (key, text)
    assert len(svg_boxes) >= 6 and min(svg_boxes) > 200  # plots drawn at a readable size
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width == 1280 and height > 2000


def test_compress_sensitivity_needs_a_report_folder(capsys, tmp_path):
    args = ["compress", "zoo:lenet300", "--data", "digits", "--recipe", "quick"]
    assert main([*args, "-o", str(tmp_path / "o.mzip"), "--sensitivity"]) == 2
    err = capsys.readouterr().err
    assert "--report" in err and err.count("\n") == 1
    assert not (tmp_path / "o.mzip").exists()
