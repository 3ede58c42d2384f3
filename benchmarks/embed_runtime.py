"""``modelzip embed`` on a real text file: the TorchScript runtime against ONNX Runtime, one run.

The real all-MiniLM-L6-v2 compressed with the built-in ``w8a8`` recipe (calibrated on the
``english`` val split; on 1 and 2 threads), and the fp32 model (2 threads), each embed all
8,000 ``english`` sentences (real sentences from PyTorch's documentation, every split; one per
line in a UTF-8 file, up to 128 tokens, padded per batch of 32: 250 batches, above
``AUTO_MIN_BATCHES``) with ``modelzip.embed.embed_file`` and each ``--runtime``: ``torch``
(traced and frozen by TorchScript), ``onnxruntime`` (``modelzip export``'s ONNX bytes, checked
against the model, in an ONNX Runtime session) and ``auto`` (both built on the first batch, the
faster kept). Wall time per call includes tokenizing, tracing or exporting and writing the
``.npy``; rounds are interleaved (torch, onnxruntime, auto, torch, ...) so that load on the
shared machine hits all alike; the table gives the median of the rounds and the ratio to the
``torch`` runtime at the same thread count; the min cosine is between each embedding and the
``torch`` runtime's of the same sentence.

Run: ``PYTHONPATH=src python benchmarks/embed_runtime.py [--mzip Q.mzip]`` (about 15 minutes on
2 idle cores; ``--mzip`` reuses a w8a8 MiniLM file made by an earlier run instead of compressing
again); writes ``benchmarks/results/embed_runtime.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import modelzip as mz
from modelzip.embed import embed_file
from modelzip.eval.machine import machine
from modelzip.zoo.corpus import english_splits

OUT = Path(__file__).parent / "results" / "embed_runtime.md"
RUNTIMES = ("torch", "onnxruntime", "auto")
ROUNDS = 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mzip", help="a w8a8 MiniLM .mzip to reuse")
    args = ap.parse_args()
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="mz-embed-bench-"))
    torch.set_num_threads(1)
    text = work / "all.txt"
    splits = english_splits()
    sentences = [*splits["test"], *splits["val"], *splits["train"]]
    text.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    q = Path(args.mzip) if args.mzip else work / "q.mzip"
    if not args.mzip:
        data = mz.load_data("english", batch_size=64)
        t0 = time.perf_counter()
        mz.compress(mz.load_model("zoo:minilm"), data, "w8a8", out=q, measure_latency=False)
        print(f"compressed in {time.perf_counter() - t0:.0f} s", flush=True)
    cases = [
        ("w8a8 (.mzip)", str(q), 1),
        ("w8a8 (.mzip)", str(q), 2),
        ("fp32 (zoo:minilm)", "zoo:minilm", 2),
    ]
    rows = []
    for label, spec, threads in cases:
        torch.set_num_threads(threads)
        times: dict[str, list[float]] = {r: [] for r in RUNTIMES}
        chosen: dict[str, str] = {}
        outs: dict[str, np.ndarray] = {}
        for _ in range(ROUNDS):
            for rt in RUNTIMES:
                out = work / f"e-{rt}.npy"
                t0 = time.perf_counter()
                info = embed_file(spec, text, out, runtime=rt)
                times[rt].append(time.perf_counter() - t0)
                used = str(info["runtime"])
                if "onnx_setup_s" in info:
                    used += f"; ONNX export and check {info['onnx_setup_s']} s"
                if "why" in info:
                    used += f"; {info['why']}"
                chosen[rt] = used
                outs[rt] = np.load(out)
        base = statistics.median(times["torch"])
        for rt in RUNTIMES:
            med = statistics.median(times[rt])
            cos = float((outs[rt] * outs["torch"]).sum(1).min())
            rows.append(
                f"| {label} | {threads} | {rt} | {med:.2f} s | {base / med:.2f}x | "
                f"{cos:.5f} | {chosen[rt]} |"
            )
            print(rows[-1], flush=True)
    m = machine()
    lines = [
        "# `modelzip embed`: TorchScript against ONNX Runtime on 8,000 real sentences",
        "",
        f"Measured by `benchmarks/embed_runtime.py` in one run "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; CPU: {m['cpu']} "
        f"(flags: {', '.join(m['cpu_flags'])}; {m['cores']} cores); torch {torch.__version__}; "
        "1-minute load "
        f"average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end). "
        f"Each time is the median of {ROUNDS} interleaved calls of `embed_file` on the 8,000 "
        "sentences (loading the model, tokenizing, "
        "tracing or exporting, embedding, writing the `.npy`); speed-up = `torch` runtime's "
        "time / this runtime's time at the same thread count.",
        "",
        "| model | threads | runtime | wall | speed-up vs torch | min cosine to torch's | used |",
        "|---|---:|---|---:|---:|---:|---|",
        *rows,
        "",
    ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
