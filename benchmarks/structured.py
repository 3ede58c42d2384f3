"""Structured pruning benchmark (issue 15), measured in one run; writes results/structured.md.

Every model loses 50% of its prunable channels/neurons (``prune`` with ``pattern: channel``,
BatchNorm folded first, L1 importance per layer; the output layer is kept) and is fine-tuned:

- LeNet-5 (zoo) on mnist5k; the user-model fixtures ``residual_cnn``, ``concat_net``,
  ``depthwise_cnn`` on digits (8x8); ``tabular_mlp`` on the breast-cancer table;
- the real MiniLM (``zoo:minilm``): half of the attention heads and of the MLP neurons of
  every layer, fine-tuned against the original's embeddings (cosine).

Reported per model: params, MACs (Conv/Linear multiply-accumulates per sample, from a forward
pass), accuracy after fine-tuning (decoded back from the .mzip bytes), CPU latency at batch 1
and 256 against the unpruned model (interleaved medians, same process), and the check
``latency ratio >= 0.8 x MAC ratio``.

Run: ``PYTHONPATH=src python benchmarks/structured.py`` (about 10 minutes on 2 CPU cores;
``--quick`` skips MiniLM).
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import modelzip as mz
from modelzip.context import Context
from modelzip.eval.latency import median_ms
from modelzip.graph import fold_batchnorm
from modelzip.recipe import Recipe
from modelzip.testing import user_models as um
from modelzip.train import Trainer

OUT = Path(__file__).parent / "results"
FIXTURES = "src/modelzip/testing/user_models.py"


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of every Conv/Linear per sample on input ``x``."""
    total = 0

    def hook(m: nn.Module, args: Any, out: torch.Tensor) -> None:
        nonlocal total
        per_out = m.weight.shape[1] * (m.weight[0, 0].numel() if isinstance(m, nn.Conv2d) else 1)
        total += out.numel() // len(x) * per_out

    hs = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in hs:
        h.remove()
    return total


def latency(base: nn.Module, small: nn.Module, x: torch.Tensor) -> dict[str, dict[str, float]]:
    reps = -(-256 // len(x))
    xs = {"b1": x[:1], "b256": x.repeat(reps, *([1] * (x.dim() - 1)))[:256]}
    lat: dict[str, dict[str, list[float]]] = {k: {} for k in xs}
    for _ in range(5):  # interleaved, so both models see the same machine load
        for key, inp in xs.items():
            for label, model in (("unpruned", base), ("pruned", small)):
                lat[key].setdefault(label, []).append(median_ms(model, inp, repeats=20))
    return {k: {lbl: statistics.median(v) for lbl, v in d.items()} for k, d in lat.items()}


def stages(epochs: int, extra: dict[str, Any] | None = None) -> Recipe:
    """Prune half the channels, fine-tune (BatchNorm kept), then fold BatchNorm."""
    prune = {"method": "prune", "pattern": "channel", "sparsity": 0.5, **(extra or {})}
    finetune = {"method": "finetune", "epochs": epochs, "lr": 1e-3}
    return Recipe.from_dict({"stages": [prune, finetune, {"method": "fold_bn"}]})


def run_one(label: str, model: nn.Module, data: Any, recipe: Recipe) -> dict[str, Any]:
    t0 = time.time()
    base = copy.deepcopy(model).eval()
    r = mz.compress(model, data, recipe, measure_latency=False)
    small = r["model"].eval()
    x = data.example(64)
    fold_batchnorm(base, x[:2])  # the unpruned model timed with BatchNorm folded too
    lat = latency(base, small, x)
    m_base, m_small = macs(base, x), macs(small, x)
    speed = {k: v["unpruned"] / v["pruned"] for k, v in lat.items()}
    mac_ratio = m_base / m_small
    metric = data.task.metric
    row = {
        "model": label,
        "data": data.name,
        "metric": metric,
        "params": [r["baseline"]["params"], r["compressed"]["params"]],
        "macs": [m_base, m_small],
        "score": [r["baseline"][metric], r["compressed"][metric]],
        "latency_ms": lat,
        "speedup": speed,
        "mac_ratio": mac_ratio,
        "met": {k: speed[k] >= 0.8 * mac_ratio for k in speed},
        "channels": r["stages"][0]["notes"].get("channels", {}),
        "seconds": time.time() - t0,
    }
    print(
        json.dumps({k: row[k] for k in ("model", "score", "speedup", "mac_ratio")}),
        file=sys.stderr,
        flush=True,
    )
    return row


def trained(spec: str, data: Any, epochs: int) -> nn.Module:
    model = mz.load_model(spec)
    ctx = Context(data=data, trainer=Trainer(progress=False))
    ctx.fit(model, epochs=epochs, lr=3e-3)
    return model.eval()


def peer_row(label: str, spec: str, data: Any, epochs: int) -> dict[str, Any]:
    """The same trained fixture pruned by Torch-Pruning (MetaPruner, L1 magnitude, 50% of
    channels per layer, output layer ignored), fine-tuned the same way, timed the same way."""
    import torch_pruning as tp

    model = trained(spec, data, 15)
    base = copy.deepcopy(model).eval()
    x = data.example(64)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    row: dict[str, Any] = {"model": label}
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            x[:2],
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=0.5,
            ignored_layers=[head],
        )
        pruner.step()
        ctx = Context(data=data, trainer=Trainer(progress=False))
        ctx.fit(model, epochs=epochs, lr=1e-3)
        model.eval()
        row["score"] = [
            mz.evaluate(base, data, measure_latency=False)["accuracy"],
            mz.evaluate(model, data, measure_latency=False)["accuracy"],
        ]
    except Exception as exc:  # a peer that cannot handle the model is a result too
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return row
    fold_batchnorm(base, x[:2])
    fold_batchnorm(model, x[:2])
    lat = latency(base, model, x)
    row["params"] = [sum(p.numel() for p in m.parameters()) for m in (base, model)]
    row["macs"] = [macs(base, x), macs(model, x)]
    row["latency_ms"] = lat
    row["speedup"] = {k: v["unpruned"] / v["pruned"] for k, v in lat.items()}
    row["mac_ratio"] = row["macs"][0] / row["macs"][1]
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    torch.set_num_threads(1)  # shared 2-core machine: one thread, no oversubscription
    quick = "--quick" in sys.argv
    t0 = time.time()
    if "--peer" in sys.argv:  # add the Torch-Pruning rows to the last run's results
        saved = json.loads((OUT / "structured.json").read_text(encoding="utf-8"))
        digits = mz.load_data("digits")
        saved["peer"] = [
            peer_row(name, f"{FIXTURES}:{name}", digits, 8)
            for name in ("residual_cnn", "concat_net", "depthwise_cnn")
        ]
        saved["meta"]["peer_date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        (OUT / "structured.json").write_text(json.dumps(saved, indent=1), encoding="utf-8")
        md = markdown(saved["rows"], saved["meta"], saved["peer"])
        (OUT / "structured.md").write_text(md, encoding="utf-8")
        print(md)
        return
    rows: list[dict[str, Any]] = []
    only = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--only=")), None)
    if only:  # rerun some models, keep the other rows of the last run
        saved = json.loads((OUT / "structured.json").read_text(encoding="utf-8"))["rows"]
        rows = [r for r in saved if r["model"] not in only]

    def wanted(label: str) -> bool:
        return only is None or label in only

    if wanted("LeNet-5 (zoo)"):
        mnist = mz.load_data("mnist5k")
        lenet = mz.load_model("zoo:lenet5", data=mnist)
        rows.append(run_one("LeNet-5 (zoo)", lenet, mnist, stages(6)))
    digits = mz.load_data("digits")  # the fixtures' 8x8 images (mnist5k's 28x28 is ~12x the work)
    for name in ("residual_cnn", "concat_net", "depthwise_cnn"):
        if wanted(name):
            model = trained(f"{FIXTURES}:{name}", digits, 15)
            rows.append(run_one(name, model, digits, stages(8)))
    if wanted("tabular_mlp"):
        with tempfile.TemporaryDirectory() as tmp:
            table = mz.load_data(str(um.write_tabular_npz(Path(tmp) / "cancer.npz")))
            model = trained(f"{FIXTURES}:tabular_mlp", table, 30)
            rows.append(run_one("tabular_mlp", model, table, stages(20)))
    if not quick and wanted("MiniLM-L6 (heads + MLP)"):
        text = mz.load_data("sentences")
        minilm = mz.load_model("zoo:minilm")
        heads_mlp = {
            "layers": ["re:.*attention\\.self\\.(query|key|value)", "re:.*intermediate\\.dense"]
        }
        rows.append(run_one("MiniLM-L6 (heads + MLP)", minilm, text, stages(2, heads_mlp)))
    order = ["LeNet-5 (zoo)", "residual_cnn", "concat_net", "depthwise_cnn", "tabular_mlp"]
    rows.sort(key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": round(time.time() - t0),
        "rerun": only or [],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "structured.json").write_text(
        json.dumps({"rows": rows, "meta": meta}, indent=1), encoding="utf-8"
    )
    md = markdown(rows, meta)
    (OUT / "structured.md").write_text(md, encoding="utf-8")
    print(md)


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    simd = [f for f in flags if f.startswith(("avx512", "avx2", "amx")) or f in ("avx_vnni",)]
    return f"{info.get('Model name', '?').strip()} ({', '.join(sorted(simd)[:8])})"


def markdown(
    rows: list[dict[str, Any]], meta: dict[str, Any], peer: list[dict[str, Any]] | None = None
) -> str:
    rerun = f"; rows {', '.join(meta['rerun'])} rerun after a change" if meta.get("rerun") else ""
    lines = [
        "# Structured pruning benchmark",
        "",
        f"Measured by `benchmarks/structured.py` in one run ({meta['date']}; CPU: {meta['cpu']}; "
        f"torch {meta['torch']}, {meta['threads']} thread; {meta['seconds']} s"
        f"{rerun}"
        "). The machine was "
        "shared with other jobs, so latencies are medians of 5 interleaved rounds "
        "(unpruned, pruned, ...) in the same process.",
        "",
        "Every model: `prune` with `pattern: channel`, `sparsity: 0.5` (L1 importance, per "
        "layer, output layer kept; BatchNorms sliced and kept), `finetune`, then `fold_bn` "
        "(the unpruned model is timed with its BatchNorms folded too). Scores are measured on "
        "the model decoded back from its `.mzip` bytes (accuracy on the test split; MiniLM: "
        "mean cosine to the original's embeddings). MACs: Conv/Linear multiply-accumulates per "
        "sample (MiniLM: attention score products not counted).",
        "",
        "| model | data | params | MACs | score before -> after | latency b1 (ms) | "
        "latency b256 (ms) | MAC ratio | speedup b1 / b256 | >= 0.8 x MAC ratio (b1 / b256) |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lat, sp = r["latency_ms"], r["speedup"]
        met = " / ".join(
            "met" if r["met"][k] else f"MISSED ({sp[k] / r['mac_ratio']:.2f}x)"
            for k in ("b1", "b256")
        )
        lines.append(
            f"| {r['model']} | {r['data']} | {r['params'][0]:,} -> {r['params'][1]:,} | "
            f"{r['macs'][0]:,} -> {r['macs'][1]:,} | {r['score'][0]:.4f} -> {r['score'][1]:.4f} | "
            f"{lat['b1']['unpruned']:.3f} -> {lat['b1']['pruned']:.3f} | "
            f"{lat['b256']['unpruned']:.2f} -> {lat['b256']['pruned']:.2f} | "
            f"{r['mac_ratio']:.2f}x | {sp['b1']:.2f}x / {sp['b256']:.2f}x | {met} |"
        )
    lines += [
        "",
        "The last column is the issue's target (latency ratio at least 0.8 times the MAC "
        "ratio); where missed, the number in brackets is the achieved fraction of the MAC "
        "ratio. Channels after pruning:",
        "",
    ]
    for r in rows:
        ch = r["channels"]
        shown = ", ".join(f"{k} {v}" for k, v in list(ch.items())[:8])
        more = f" (+{len(ch) - 8} more)" if len(ch) > 8 else ""
        lines.append(f"- {r['model']}: {shown}{more}")
    lines.append("")
    if peer:
        lines += peer_markdown(rows, peer, meta)
    return "\n".join(lines)


def peer_markdown(
    rows: list[dict[str, Any]], peer: list[dict[str, Any]], meta: dict[str, Any]
) -> list[str]:
    ours = {r["model"]: r for r in rows}
    lines = [
        "## Against Torch-Pruning (same trained fixture, same fine-tuning)",
        "",
        f"torch-pruning 1.6 `MetaPruner` (L1 magnitude, `pruning_ratio` 0.5, output layer "
        f"ignored) on the same trained model, fine-tuned 8 epochs at 1e-3 like ours, timed the "
        f"same way with BatchNorm folded ({meta.get('peer_date', '')}; separate run, so the "
        "latencies of the two tables are not from the same minute of a shared machine).",
        "",
        "| model | modelzip accuracy | Torch-Pruning accuracy | modelzip MACs | "
        "Torch-Pruning MACs | Torch-Pruning speedup b1 / b256 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in peer:
        o = ours.get(p["model"], {})
        if "error" in p:
            lines.append(
                f"| {p['model']} | {o.get('score', [0, 0])[1]:.4f} | failed: {p['error']} | | | |"
            )
            continue
        lines.append(
            f"| {p['model']} | {o.get('score', [0, 0])[1]:.4f} | {p['score'][1]:.4f} | "
            f"{o.get('macs', [0, 0])[1]:,} | {p['macs'][1]:,} | "
            f"{p['speedup']['b1']:.2f}x / {p['speedup']['b256']:.2f}x |"
        )
    lines.append("")
    return lines


if __name__ == "__main__":
    main()
