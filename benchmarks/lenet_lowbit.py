"""GPTQ vs round-to-nearest vs k-means at 4 and 3 bits on LeNet-300-100 and LeNet-5.

``mnist5k``, 3 seeds (each seed its own trained baseline), no fine-tuning after quantizing.
Every configuration quantizes every Linear/Conv weight: ``gptq`` with ``algorithm: gptq`` or
``rtn`` (same group-wise asymmetric grid and storage; group 128 at 4 bits, 64 at 3 bits, or
the largest divisor of a layer's width near that), and ``cluster`` (one k-means codebook per
layer). Calibration: 32 batches (2,048 images) of the ``train`` split (the 500-image
``val`` split has fewer rows than LeNet-300-100's 784 inputs, where GPTQ falls back to
rounding); accuracy: the ``test`` split, measured on the model decoded from the .mzip
file; bytes: the .mzip file, ratio to the fp32 ``torch.save`` file.

Run: ``PYTHONPATH=src python benchmarks/lenet_lowbit.py`` (writes
``benchmarks/results/lenet_lowbit.md``); ``--data fashion-mnist`` (seed 0: its 10,000 test
images tell apart differences that mnist5k's 1,000 cannot) writes ``lenet_lowbit_fashion.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import modelzip as mz
from modelzip import mzip
from modelzip.context import Context
from modelzip.eval.evaluate import accuracy
from modelzip.eval.size import torch_save_bytes
from modelzip.registry import get_method
from modelzip.train import Trainer

RESULTS = Path(__file__).parent / "results"
SEEDS = {"mnist5k": (0, 1, 2), "fashion-mnist": (0,)}
CALIBRATION: dict[str, Any] = {"calibration_batches": 32, "calibration_split": "train"}
GPTQ_4: dict[str, Any] = {"bits": 4, "group_size": 128, **CALIBRATION}
GPTQ_3: dict[str, Any] = {"bits": 3, "group_size": 64, **CALIBRATION}
#: GPTQ rows round rate-aware as the gptq-* recipes do (rate_weight 0.2); the "nearest
#: rounding" rows are plain GPTQ (rate_weight 0).
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("RTN 4-bit", "gptq", {"bits": 4, "group_size": 128, "algorithm": "rtn"}),
    (
        "GPTQ 4-bit",
        "gptq",
        {**GPTQ_4, "rate_weight": 0.2},
    ),
    ("GPTQ 4-bit, nearest rounding", "gptq", GPTQ_4),
    ("k-means 4-bit", "cluster", {"bits": 4}),
    ("RTN 3-bit", "gptq", {"bits": 3, "group_size": 64, "algorithm": "rtn"}),
    (
        "GPTQ 3-bit",
        "gptq",
        {**GPTQ_3, "rate_weight": 0.2},
    ),
    ("GPTQ 3-bit, nearest rounding", "gptq", GPTQ_3),
    ("k-means 3-bit", "cluster", {"bits": 3}),
]


def cpu_line() -> str:
    """CPU model and the SIMD flags that matter here (from ``lscpu``)."""
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in flags]
    return f"{fields.get('Model name', '?').strip()}; flags: {', '.join(wanted)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(SEEDS), default="mnist5k")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = mz.load_data(args.data)
    seeds = SEEDS[args.data]
    lines = [
        "# Low-bit LeNets without fine-tuning (`benchmarks/lenet_lowbit.py`)",
        "",
        f"{args.data}, test accuracy (%) mean and min..max over seeds "
        f"{', '.join(map(str, seeds))} (each its own trained",
        "baseline); bytes of the .mzip (seed 0) and ratio to the fp32 `torch.save` file. One",
        "torch thread; the machine was shared with other jobs.",
        f"CPU: {cpu_line()}.",
        "GPTQ calibrates on 32 batches (2,048 images) of the train split and rounds rate-aware",
        '(`rate_weight: 0.2`, as the gptq-* recipes); "nearest rounding" rows are plain GPTQ.',
        "Accuracy is measured on the model decoded from the .mzip. RTN and GPTQ rows use the",
        "same grid and storage (every layer at the row's width, same groups).",
        "",
        "| model | configuration | accuracy % | min..max | bytes | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for zoo in ("lenet300", "lenet5"):
        bases = {s: mz.load_model(f"zoo:{zoo}", data=data, seed=s) for s in seeds}
        fp32 = [100 * accuracy(bases[s], data.test) for s in seeds]
        fp32_bytes = torch_save_bytes(bases[0])
        lines.append(
            f"| {zoo} | fp32 | {statistics.mean(fp32):.2f} | {min(fp32):.2f}..{max(fp32):.2f} "
            f"| {fp32_bytes:,} | 1.0x |"
        )
        for name, method, fields in CONFIGS:
            accs, size = [], 0
            t0 = time.perf_counter()
            for s in seeds:
                m = get_method(method)
                ctx = Context(data=data, trainer=Trainer(progress=False, seed=s), seed=s)
                model = m.apply(copy.deepcopy(bases[s]), m.config.parse(fields), ctx)
                blob = mzip.to_bytes(model)
                back, _ = mzip.from_bytes(blob)
                accs.append(100 * accuracy(back, data.test))
                size = size or len(blob)
            row = (
                f"| {zoo} | {name} | {statistics.mean(accs):.2f} | {min(accs):.2f}..{max(accs):.2f}"
                f" | {size:,} | {fp32_bytes / size:.1f}x |"
            )
            print(row, f"({time.perf_counter() - t0:.0f} s)", flush=True)
            lines.append(row)
    name = "lenet_lowbit.md" if args.data == "mnist5k" else "lenet_lowbit_fashion.md"
    (RESULTS / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
