"""Where the time of a channel-pruned model goes: the ops doing MACs vs everything else.

For LeNet-5 (also with ``round_to: 8``) and the user-model fixtures, 50% of the channels are
removed (``prune`` with ``pattern: channel``, BatchNorm folded into both models; the
fixtures' weights are untrained, which does not change dense kernels' timing), and the self
CPU time of every ATen op is taken from ``torch.profiler`` at batch 1 and 256 (one thread,
interleaved rounds). The ops doing the Conv/Linear multiply-accumulates fall with each
layer's MAC ratio at best; pooling, ReLU, adds, concatenation and the like fall with the
width (2x at 50% channels), so a model whose time sits there, or in a layer with a single
input channel, cannot reach a speedup near its MAC ratio.

Run: ``PYTHONPATH=src python benchmarks/structured_breakdown.py`` (a few minutes; writes
results/structured_breakdown.md).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import modelzip as mz
from modelzip.eval.latency import pinned_threads
from modelzip.graph import fold_batchnorm
from modelzip.recipe import Recipe
from modelzip.testing import user_models as um

sys.path.insert(0, str(Path(__file__).parent))
from structured import cpu  # noqa: E402

OUT = Path(__file__).parent / "results"
LAYERS = (nn.Conv2d, nn.Linear)


def layer_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    out: dict[str, int] = {}
    hs = []
    for name, m in model.named_modules():
        if isinstance(m, LAYERS):

            def hook(mod: nn.Module, args: Any, y: torch.Tensor, name: str = name) -> None:
                w = mod.weight
                per = w.shape[1] * (w[0, 0].numel() if isinstance(mod, nn.Conv2d) else 1)
                out[name] = y.numel() // len(x) * per

            hs.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model.eval()(x)
    for h in hs:
        h.remove()
    return out


#: ATen ops that do a layer's multiply-accumulates (the rest is "other").
MAC_OPS = (
    "aten::mkldnn_convolution",
    "aten::_convolution",
    "aten::convolution",
    "aten::conv2d",
    "aten::addmm",
    "aten::mm",
    "aten::linear",
    "aten::matmul",
    "aten::_slow_conv2d_forward",
    "aten::thnn_conv2d",
)


def profiled(model: nn.Module, x: torch.Tensor, calls: int) -> dict[str, float]:
    """Self CPU milliseconds per ATen op over ``calls`` forward passes (plus "total")."""
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(x)
    out = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    out["total"] = sum(out.values())
    return out


def split(times: dict[str, float]) -> tuple[float, float, dict[str, float]]:
    """(MAC-op ms, other ms, other ops by name)."""
    mac = sum(v for k, v in times.items() if k in MAC_OPS)
    other = {k: v for k, v in times.items() if k not in MAC_OPS and k != "total"}
    return mac, sum(other.values()), other


def breakdown(label: str, model: nn.Module, data: Any, **extra: Any) -> list[str]:
    base = copy.deepcopy(model).eval()
    recipe = Recipe.from_dict(
        {"stages": [{"method": "prune", "pattern": "channel", "sparsity": 0.5, **extra}]}
    )
    small = mz.compress(model, data, recipe, measure_latency=False)["model"].eval()
    x = data.example(64)
    fold_batchnorm(base, x[:2])
    xs = {"b1": x[:1], "b256": x.repeat(4, *([1] * (x.dim() - 1)))[:256]}
    mb, ms = layer_macs(base, x), layer_macs(small, x)
    mac_ratio = sum(mb.values()) / sum(ms.values())
    per_layer = ", ".join(f"{n} {mb[n] / ms[n]:.0f}x" for n in mb)
    lines = []
    for key, inp in xs.items():
        calls = 50 if key == "b1" else 5
        tb: dict[str, float] = defaultdict(float)
        ts: dict[str, float] = defaultdict(float)
        with pinned_threads(1):
            for _ in range(3):  # interleaved rounds, summed
                for k, v in profiled(base, inp, calls).items():
                    tb[k] += v
                for k, v in profiled(small, inp, calls).items():
                    ts[k] += v
        (mac_b, oth_b, ob), (mac_s, oth_s, _) = split(tb), split(ts)
        top = sorted(ob.items(), key=lambda kv: -kv[1])[:3]
        top_txt = ", ".join(
            f"{k.removeprefix('aten::')} {100 * v / tb['total']:.0f}%" for k, v in top
        )
        lines.append(
            f"| {label} | {key} | {tb['total'] / ts['total']:.2f}x | {mac_ratio:.2f}x | "
            f"{per_layer} | {100 * mac_b / tb['total']:.0f}% | {mac_b / mac_s:.2f}x | "
            f"{100 * oth_b / tb['total']:.0f}% | {oth_b / oth_s:.2f}x | {top_txt} |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    torch.set_num_threads(1)
    load = round(os.getloadavg()[0], 1)
    t0 = time.time()
    digits = mz.load_data("digits")
    mnist = mz.load_data("mnist5k")
    lenet = mz.load_model("zoo:lenet5", data=mnist)
    rows = breakdown("LeNet-5 (zoo)", copy.deepcopy(lenet), mnist)
    rows += breakdown("LeNet-5 (zoo), round_to 8", lenet, mnist, round_to=8)
    for name in ("residual_cnn", "concat_net", "depthwise_cnn"):
        rows += breakdown(name, getattr(um, name)(), digits)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = "\n".join(
        [
            "# Where a channel-pruned model's time goes",
            "",
            f"`benchmarks/structured_breakdown.py` ({stamp}; CPU: {cpu()}; "
            f"torch {torch.__version__}, 1 thread; {round(time.time() - t0)} s; "
            f"shared machine, load average {load} on 2 cores at the start). 50% of the channels "
            "removed, BatchNorm folded in both models, eager mode (fixtures untrained: dense "
            "kernels time the same). Self CPU time per ATen op from `torch.profiler` (3 "
            "interleaved rounds of 50 calls at batch 1, 5 at batch 256, summed), split into the "
            "ops that do the Conv/Linear multiply-accumulates (mkldnn_convolution, addmm, ...) "
            "and everything else (pooling, ReLU, adds, concatenation, mean, allocation). At 50% "
            "channels a layer's MACs fall 4x where both its input and output lose half, 2x where "
            "only one side does (the first conv, the head); the other ops fall with the width, "
            "2x.",
            "",
            "| model | batch | speedup | MAC ratio | MAC ratio per layer | MAC ops' share of "
            "unpruned time | MAC ops' speedup | other ops' share | other ops' speedup | "
            "largest other ops (share of unpruned time) |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---|",
            *rows,
            "",
        ]
    )
    (OUT / "structured_breakdown.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
