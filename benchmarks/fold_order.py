"""When structured pruning folds BatchNorm: first, after the recipe (the default), or never.

The user-model fixtures with BatchNorm (residual CNN, depthwise CNN, concat net with a
BatchNorm after the concatenation), trained 15 epochs on digits, then ``prune`` (pattern
channel, 50%) and ``finetune`` (8 epochs, lr 1e-3) with ``fold_bn: first | after | off``.
Reported: test accuracy (360 images, 0.28 pp each) of the model loaded back from its bytes,
BatchNorms left in it, and .mzip bytes. Rows go to a JSON-lines log as they finish.

Run: ``PYTHONPATH=src python benchmarks/fold_order.py [--seeds 0,1,2]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import modelzip as mz
from modelzip.recipe import Recipe
from modelzip.testing import user_models as um
from modelzip.train import Trainer

OUT = Path(__file__).parent / "results"
MODELS = ("residual_cnn", "depthwise_cnn", "concat_net")
VARIANTS = ("first", "after", "off")


def trained(name: str, data: Any, seed: int) -> nn.Module:
    model = getattr(um, name)()
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()  # type: ignore[operator]
    Trainer(progress=False, seed=seed).fit(model, data.train, epochs=15, lr=3e-3)
    return model.eval()


def recipe(fold: str) -> Recipe:
    return Recipe.from_dict(
        {
            "stages": [
                {"method": "prune", "pattern": "channel", "sparsity": 0.5, "fold_bn": fold},
                {"method": "finetune", "epochs": 8, "lr": 1e-3},
            ]
        }
    )


def render(rows: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["fold_bn"]), []).append(r)
    lines = [
        "# Structured pruning: when BatchNorm is folded",
        "",
        "`benchmarks/fold_order.py`: fixture trained 15 epochs on digits, then `prune` "
        "(pattern channel, 50%, L1) and `finetune` (8 epochs, lr 1e-3) with `fold_bn` "
        "first / after (the default: BatchNorm kept for ranking and fine-tuning, folded after "
        "the recipe's last stage) / off. Test accuracy on 360 digits images (0.28 pp each) of "
        "the model decoded from its .mzip bytes; mean ± sd over seeds. One thread; shared "
        "2-core machine (timings are not compared here).",
        "",
        "| model | fold_bn | seeds | fp32 accuracy | pruned accuracy | change (pp) | "
        "BatchNorms left | .mzip bytes |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for (model, fold), rs in groups.items():
        acc = [100 * r["accuracy"] for r in rs]
        delta = [100 * (r["accuracy"] - r["baseline"]) for r in rs]
        sd = f" ± {statistics.stdev(delta):.2f}" if len(rs) > 1 else ""
        lines.append(
            f"| {model} | {fold} | {','.join(str(r['seed']) for r in rs)} | "
            f"{statistics.mean(100 * r['baseline'] for r in rs):.2f}% | "
            f"{statistics.mean(acc):.2f}% | {statistics.mean(delta):+.2f}{sd} | "
            f"{rs[0]['norms']} | {int(statistics.mean(r['bytes'] for r in rs)):,} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--log", type=Path, default=OUT / "fold_order.jsonl")
    p.add_argument("--render", action="store_true", help="only render the log")
    args = p.parse_args()
    torch.set_num_threads(1)
    if not args.render:
        for seed in [int(s) for s in args.seeds.split(",")]:
            data = mz.load_data("digits", seed=seed)
            for name in MODELS:
                model = trained(name, data, seed)
                for fold in VARIANTS:
                    t0 = time.time()
                    res = mz.compress(model, data, recipe(fold), seed=seed, measure_latency=False)
                    row = {
                        "model": name,
                        "fold_bn": fold,
                        "seed": seed,
                        "baseline": res["baseline"]["accuracy"],
                        "accuracy": res["compressed"]["accuracy"],
                        "bytes": res["compressed"]["bytes"],
                        "norms": sum(
                            isinstance(m, nn.modules.batchnorm._BatchNorm)
                            for m in res["model"].modules()
                        ),
                        "seconds": round(time.time() - t0, 1),
                    }
                    with args.log.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    text = render(rows)
    (OUT / "fold_order.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
