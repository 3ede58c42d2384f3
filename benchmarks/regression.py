"""Regression models: every built-in recipe on real tabular regression data, R^2 and ratio.

Data (both real, both offline from the package registries):

- ``diamonds``: the 53,940 diamonds of ggplot2's classic table, as the ``plotnine`` wheel ships
  it (``plotnine/data/diamonds.csv``; the wheel is fetched with ``pip download --no-deps`` into
  the cache folder and the CSV read from inside it, nothing installed). Target: log price;
  inputs: carat, depth, table, x, y, z and the ordered grades cut, color, clarity as ranks
  (9 features), all standardised. Model: a 9-256-256-128-1 MLP (101k weights), 20 epochs of
  Adam. modelzip's split: 70% train, 10% val, 20% test (10,788 rows).
- ``diabetes``: scikit-learn's bundled diabetes table (442 rows, 10 features), the user-model
  fixture ``regression_mlp`` (10-64-32-1), 60 epochs; its 89-row test split is noisy.

Each row: the same trained model compressed by one recipe; R^2 of the model loaded back from
its .mzip bytes on the test split, against the fp32 model's. Peer on the same model: PyTorch's
``torch.ao.quantization.quantize_dynamic`` (int8 Linear weights, dynamic activations).

    python benchmarks/regression.py --seeds 0,1,2 --out benchmarks/results/regression.md
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import modelzip as mz
from modelzip.recipe import builtin_recipes
from modelzip.testing import user_models as um
from modelzip.train import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from lenet_lowbit import cpu_line  # noqa: E402

PLOTNINE = "plotnine==0.15.9"
GRADES = {
    "cut": ["Fair", "Good", "Very Good", "Premium", "Ideal"],
    "color": ["J", "I", "H", "G", "F", "E", "D"],
    "clarity": ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"],
}


def diamonds_npz(cache: Path, out: Path) -> Path:
    """The diamonds table as ``x`` (9 standardised features) and ``y`` (standardised log price)."""
    import pandas as pd

    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("plotnine-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", PLOTNINE, "--no-deps", "-q", "-d", cache],
            check=True,
        )
        wheels = sorted(cache.glob("plotnine-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as whl:
        df = pd.read_csv(io.BytesIO(whl.read("plotnine/data/diamonds.csv")))
    for col, order in GRADES.items():
        df[col] = df[col].map({g: i for i, g in enumerate(order)})
    cols = ["carat", "cut", "color", "clarity", "depth", "table", "x", "y", "z"]
    x = df[cols].to_numpy(np.float64)
    y = np.log(df["price"].to_numpy(np.float64))
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    np.savez(out, x=x.astype(np.float32), y=y.astype(np.float32))
    return out


def diamonds_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(9, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 1),
    )


SETS: dict[str, dict[str, Any]] = {
    "diamonds": {"factory": diamonds_mlp, "epochs": 20, "lr": 1e-3},
    "diabetes": {"factory": um.regression_mlp, "epochs": 60, "lr": 2e-3},
}


def trained(name: str, data: Any, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = SETS[name]["factory"]()
    Trainer(progress=False, seed=seed).fit(
        model,
        data.train,
        epochs=SETS[name]["epochs"],
        lr=SETS[name]["lr"],
        loss_fn=data.task.loss_fn(),
    )
    return model.eval()


def saved_bytes(model: nn.Module) -> int:
    """``torch.save(model.state_dict())`` bytes (a quantized module's packed weights too)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def torch_ao_row(model: nn.Module, data: Any) -> dict[str, Any]:
    q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return {
        "r2": round(data.task.score(q, data.test), 5),
        "ratio": round(saved_bytes(model) / saved_bytes(q), 3),
    }


def run(name: str, path: Path, seeds: list[int], log: Path) -> None:
    for seed in seeds:
        data = mz.load_data(str(path), seed=seed)
        model = trained(name, data, seed)
        base = data.task.score(model, data.test)
        rows = {"torch.ao quantize_dynamic (int8)": torch_ao_row(model, data)}
        for recipe in builtin_recipes():
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "r.mzip"
                res = mz.compress(model, data, recipe, out=out, seed=seed, measure_latency=False)
                back = mz.load(out, model=SETS[name]["factory"]())
                r2 = data.task.score(back, data.test)
            rows[recipe] = {
                "r2": round(r2, 5),
                "ratio": round(res["ratio"], 3),
                "wall_s": round(time.perf_counter() - t0, 1),
            }
            print(name, seed, recipe, rows[recipe], flush=True)
        with log.open("a") as f:
            line = {"data": name, "seed": seed, "sizes": data.sizes, "baseline": base, "rows": rows}
            f.write(json.dumps(line) + "\n")


def render(log: Path, out: Path, header: str) -> None:
    runs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    lines = [
        "# Regression models: built-in recipes on real tabular regression data",
        "",
        header,
        "",
        "R^2 on the test split of the model loaded back from its .mzip; change in points "
        "(R^2 x 100) against the same fp32 model; ratio = fp32 `torch.save` bytes / .mzip bytes "
        "(torch.ao's row: its own `torch.save`). Mean over seeds, the spread is min..max.",
    ]
    for name in dict.fromkeys(r["data"] for r in runs):
        mine = [r for r in runs if r["data"] == name]
        seeds = [r["seed"] for r in mine]
        base = [r["baseline"] for r in mine]
        lines += [
            "",
            f"## {name} (seeds {', '.join(map(str, seeds))}; splits {mine[0]['sizes']})",
            "",
            f"fp32 test R^2: {statistics.mean(base):.4f} ({min(base):.4f}..{max(base):.4f})",
            "",
            "| recipe | ratio | R^2 after | change (points) | change spread |",
            "|---|---:|---:|---:|---|",
        ]
        for recipe in mine[0]["rows"]:
            got = [r["rows"][recipe]["r2"] for r in mine]
            ratio = [r["rows"][recipe]["ratio"] for r in mine]
            delta = [100 * (g - r["baseline"]) for g, r in zip(got, mine, strict=True)]
            lines.append(
                f"| {recipe} | {statistics.mean(ratio):.1f}x | {statistics.mean(got):.4f} | "
                f"{statistics.mean(delta):+.2f} | {min(delta):+.2f}..{max(delta):+.2f} |"
            )
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="diamonds,diabetes")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/modelzip/bench"))
    ap.add_argument("--log", default="regression-runs.jsonl")
    ap.add_argument("--out", default=None, help="render the log to this markdown file")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    log = Path(args.log)
    if not args.render_only:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.data.split(","):
                path = (
                    diamonds_npz(Path(args.cache), Path(tmp) / "diamonds.npz")
                    if name == "diamonds"
                    else um.write_regression_npz(Path(tmp) / "diabetes.npz")
                )
                run(name, path, [int(s) for s in args.seeds.split(",")], log)
    if args.out:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        header = (
            f"Produced by `benchmarks/regression.py` ({when}). "
            f"CPU: {cpu_line()}; torch {torch.__version__}, 1 thread."
        )
        render(log, Path(args.out), header)


if __name__ == "__main__":
    main()
