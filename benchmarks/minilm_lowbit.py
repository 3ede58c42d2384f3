"""4-bit and 3-bit all-MiniLM-L6-v2 (``zoo:minilm``): modelzip's low-bit methods vs a peer.

Data: the ``english`` set of real English sentences; calibration reads its ``val`` split
(1,000 sentences, of which ``calibration_batches`` x 64 are used) and every metric is measured
on its ``test`` split (2,000 other sentences). For each configuration: bytes on disk and the
ratio to the fp32 ``model.safetensors`` file, mean/min cosine of the sentence embeddings to
fp32, top-10 neighbour overlap (for each test sentence, its 10 nearest other test sentences by
cosine, fp32 vs compressed), time to compress (method + writing the file), time to load the
file, and the time to embed the test set with the loaded model relative to fp32.

The peer is HQQ (``hqq``, half-quadratic quantization, calibration-free), applied to the same
layers with the same group size; its size is a ``torch.save`` file of its packed 4-bit codes,
fp16 scales and zero points, and the remaining fp32 tensors. Install it with
``pip install --no-deps hqq termcolor`` (its other dependencies are GPU-side).

Run: ``HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/minilm_lowbit.py [--only NAME ...]``
(writes ``benchmarks/results/minilm_lowbit.md``; rows measured earlier are kept in
``benchmarks/results/minilm_lowbit.json`` so a run can be split).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import modelzip as mz
from modelzip import mzip
from modelzip.context import Context
from modelzip.recipe import Recipe
from modelzip.registry import get_method
from modelzip.train import Trainer
from modelzip.zoo.text import minilm_dir

RESULTS = Path(__file__).parent / "results"
KEEP_MARK = "<!-- notes: kept as they are when the script rewrites the table above -->"
CALIBRATION_BATCHES = 8
TUNE_STEPS = 40
MIXED: dict[str, Any] = {"group_size": 128, "bits_choices": [2, 3, 4, 5], "act_order": True}
TUNED: dict[str, Any] = {"tune_scales": TUNE_STEPS}
USED_ROWS_3: dict[str, Any] = {
    "name": "gptq-4bit",
    "bits": {"default": 4, "Embedding": 3},
    "used_rows_bits": 8,
    "rate_weight": 0.0,  # measured before the recipe's rate_weight: 0.2 (see NEAREST)
}
USED_5_2_TRAIN: dict[str, Any] = {
    **USED_ROWS_3,
    "bits": {"default": 4, "Embedding": 2},
    "used_rows_bits": 5,
    "calibration_split": "train",
    "calibration_batches": 64,
}
USED_3BIT_TRAIN: dict[str, Any] = {
    **USED_5_2_TRAIN,
    "bits": {"default": 3, "Embedding": 2},
    "scale_bits": 8,
}
LOG8_4: dict[str, Any] = {"name": "gptq-4bit", "scale_bits": 8}
LOG8_3: dict[str, Any] = {"name": "gptq-3bit", "scale_bits": 8}
#: The recipes' GPTQ before ``rate_weight: 0.2``: rows measured with it pin it, so a rerun
#: repeats what they measured.
NEAREST: dict[str, Any] = {"rate_weight": 0.0}
NEAREST_NAME = "nearest rounding (rate_weight 0)"
#: (name, stages): each a list of (method, fields) run in order.
CONFIGS: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = [
    # round-to-nearest rows use the recipes' own settings (same layers, groups, storage)
    ("RTN 4-bit (gptq-4bit settings)", [("recipe", {"name": "gptq-4bit", "algorithm": "rtn"})]),
    ("GPTQ 4-bit (recipe gptq-4bit)", [("recipe", {"name": "gptq-4bit"})]),
    (f"GPTQ 4-bit, {NEAREST_NAME}", [("recipe", {"name": "gptq-4bit", **NEAREST})]),
    ("GPTQ+AWQ 4-bit (recipe gptq-4bit + awq)", [("recipe", {"name": "gptq-4bit", "awq": True})]),
    (
        f"GPTQ+AWQ 4-bit, {NEAREST_NAME}",
        [("recipe", {"name": "gptq-4bit", "awq": True, **NEAREST})],
    ),
    ("RTN 3-bit (gptq-3bit settings)", [("recipe", {"name": "gptq-3bit", "algorithm": "rtn"})]),
    ("GPTQ 3-bit (recipe gptq-3bit)", [("recipe", {"name": "gptq-3bit"})]),
    (f"GPTQ 3-bit, {NEAREST_NAME}", [("recipe", {"name": "gptq-3bit", **NEAREST})]),
    # GPTQ's rounding traded against its codes' length: the recipes' 0.2 among other weights
    *(
        (
            f"GPTQ {b}-bit (recipe gptq-{b}bit), rate_weight {weight}",
            [("recipe", {"name": f"gptq-{b}bit", "rate_weight": weight})],
        )
        for b in (4, 3)
        for weight in (0.05, 0.1, 0.4)
    ),
    # the same with group scales as 8-bit log codes (scale_bits: 8)
    (
        "RTN 4-bit (gptq-4bit settings), 8-bit log scales",
        [("recipe", {"name": "gptq-4bit", "algorithm": "rtn", "scale_bits": 8})],
    ),
    ("GPTQ 4-bit (recipe gptq-4bit), 8-bit log scales", [("recipe", LOG8_4)]),
    (f"GPTQ 4-bit, {NEAREST_NAME}, 8-bit log scales", [("recipe", {**LOG8_4, **NEAREST})]),
    (
        "GPTQ+AWQ 4-bit (recipe gptq-4bit + awq), 8-bit log scales",
        [("recipe", {**LOG8_4, "awq": True})],
    ),
    (
        f"GPTQ+AWQ 4-bit, {NEAREST_NAME}, 8-bit log scales",
        [("recipe", {**LOG8_4, "awq": True, **NEAREST})],
    ),
    (
        "RTN 3-bit (gptq-3bit settings), 8-bit log scales",
        [("recipe", {"name": "gptq-3bit", "algorithm": "rtn", "scale_bits": 8})],
    ),
    ("GPTQ 3-bit (recipe gptq-3bit), 8-bit log scales", [("recipe", LOG8_3)]),
    (f"GPTQ 3-bit, {NEAREST_NAME}, 8-bit log scales", [("recipe", {**LOG8_3, **NEAREST})]),
    ("GPTQ mixed, average 3.25 bits", [("gptq", {"average_bits": 3.25, "group_size": 128})]),
    # codes fixed, scales/biases/norms tuned to fp32's outputs on the calibration batches
    (
        "GPTQ 4-bit + tune_scales",
        [("recipe", {"name": "gptq-4bit", "tune_scales": TUNE_STEPS, **NEAREST})],
    ),
    (
        "GPTQ 3-bit + tune_scales",
        [("recipe", {"name": "gptq-3bit", "tune_scales": TUNE_STEPS, **NEAREST})],
    ),
    # the embedding rows the calibration text looks up at 8 bits, the rarely used rest lower
    (
        "GPTQ 4-bit, used embedding rows 8-bit + tune_scales",
        [
            (
                "recipe",
                {"name": "gptq-4bit", "used_rows_bits": 8, "tune_scales": TUNE_STEPS, **NEAREST},
            )
        ],
    ),
    (
        "GPTQ 4-bit, embedding rest 3-bit, used rows 8-bit + tune_scales",
        [("recipe", {**USED_ROWS_3, "tune_scales": TUNE_STEPS})],
    ),
    (
        "GPTQ 4-bit, embedding rest 2-bit, used rows 8-bit + tune_scales",
        [("recipe", {**USED_ROWS_3, "bits": {"default": 4, "Embedding": 2}, **TUNED})],
    ),
    # every val sentence (1,000) calibrates, so more embedding rows count as used
    (
        "GPTQ 4-bit, embedding rest 3-bit, used rows 8-bit, 16 calibration batches + tune_scales",
        [("recipe", {**USED_ROWS_3, "calibration_batches": 16, **TUNED})],
    ),
    (
        "GPTQ 4-bit, embedding rest 2-bit, used rows 8-bit, 16 calibration batches + tune_scales",
        [
            (
                "recipe",
                {
                    **USED_ROWS_3,
                    "bits": {"default": 4, "Embedding": 2},
                    "calibration_batches": 16,
                    **TUNED,
                },
            )
        ],
    ),
    (
        "GPTQ 4-bit, embedding rest 2-bit, used rows 8-bit, 16 calibration batches"
        " + tune_scales 120 steps",
        [
            (
                "recipe",
                {
                    **USED_ROWS_3,
                    "bits": {"default": 4, "Embedding": 2},
                    "calibration_batches": 16,
                    "tune_scales": 3 * TUNE_STEPS,
                },
            )
        ],
    ),
    # the train split (5,000 other sentences) calibrates: more used rows, more data to tune on
    (
        "GPTQ 4-bit, embedding rest 2-bit, used rows 8-bit, 64 train batches + tune_scales",
        [
            (
                "recipe",
                {
                    **USED_ROWS_3,
                    "bits": {"default": 4, "Embedding": 2},
                    "calibration_split": "train",
                    "calibration_batches": 64,
                    **TUNED,
                },
            )
        ],
    ),
    (
        "GPTQ 4-bit, embedding rest 2-bit, used rows 5-bit, 64 train batches + tune_scales",
        [
            (
                "recipe",
                {
                    **USED_ROWS_3,
                    "bits": {"default": 4, "Embedding": 2},
                    "used_rows_bits": 5,
                    "calibration_split": "train",
                    "calibration_batches": 64,
                    **TUNED,
                },
            )
        ],
    ),
    (
        "GPTQ 4-bit, embedding rest 2-bit, used rows 5-bit, 64 train batches"
        " + tune_scales 120 steps",
        [
            (
                "recipe",
                {
                    **USED_ROWS_3,
                    "bits": {"default": 4, "Embedding": 2},
                    "used_rows_bits": 5,
                    "calibration_split": "train",
                    "calibration_batches": 64,
                    "tune_scales": 3 * TUNE_STEPS,
                },
            )
        ],
    ),
    # more tuning steps and every train sentence: the steps see new text, not repeats
    (
        "GPTQ 4-bit, embedding rest 2-bit, used rows 5-bit, 64 train batches"
        " + tune_scales 240 steps",
        [("recipe", {**USED_5_2_TRAIN, "tune_scales": 6 * TUNE_STEPS})],
    ),
    (
        "GPTQ 4-bit, embedding rest 2-bit, used rows 5-bit, all 78 train batches"
        " + tune_scales 240 steps",
        [("recipe", {**USED_5_2_TRAIN, "calibration_batches": 78, "tune_scales": 6 * TUNE_STEPS})],
    ),
    # group scales as 8-bit log codes instead of fp16 (scale_bits: 8)
    (
        "GPTQ 4-bit, embedding rest 2-bit, used rows 5-bit, 64 train batches"
        " + tune_scales 240 steps, 8-bit log scales",
        [("recipe", {**USED_5_2_TRAIN, "tune_scales": 6 * TUNE_STEPS, "scale_bits": 8})],
    ),
    (
        "GPTQ 4-bit, embedding rest 2-bit, used rows 6-bit, 64 train batches"
        " + tune_scales 240 steps, 8-bit log scales",
        [
            (
                "recipe",
                {
                    **USED_5_2_TRAIN,
                    "used_rows_bits": 6,
                    "tune_scales": 6 * TUNE_STEPS,
                    "scale_bits": 8,
                },
            )
        ],
    ),
    (
        "GPTQ 3-bit, embedding rest 2-bit, used rows 5-bit, 64 train batches"
        " + tune_scales 240 steps, 8-bit log scales",
        [
            (
                "recipe",
                {
                    **USED_5_2_TRAIN,
                    "bits": {"default": 3, "Embedding": 2},
                    "tune_scales": 6 * TUNE_STEPS,
                    "scale_bits": 8,
                },
            )
        ],
    ),
    # 3-bit: twice the tuning steps, at a constant rate or decayed along a cosine
    (
        "GPTQ 3-bit, embedding rest 2-bit, used rows 5-bit, 64 train batches"
        " + tune_scales 480 steps, 8-bit log scales",
        [("recipe", {**USED_3BIT_TRAIN, "tune_scales": 12 * TUNE_STEPS})],
    ),
    (
        "GPTQ 3-bit, embedding rest 2-bit, used rows 5-bit, 64 train batches"
        " + tune_scales 480 steps cosine lr 2e-3, 8-bit log scales",
        [
            (
                "recipe",
                {
                    **USED_3BIT_TRAIN,
                    "tune_scales": 12 * TUNE_STEPS,
                    "tune_lr": 2e-3,
                    "tune_schedule": "cosine",
                },
            )
        ],
    ),
    (
        "GPTQ 3-bit, used embedding rows 8-bit + tune_scales",
        [
            (
                "recipe",
                {"name": "gptq-3bit", "used_rows_bits": 8, "tune_scales": TUNE_STEPS, **NEAREST},
            )
        ],
    ),
    # bits per layer by each layer's measured effect on the embeddings, then tuned
    (
        "GPTQ mixed by end-to-end effect, average 3.25 bits, g128, tuned",
        [("gptq", {**MIXED, "average_bits": 3.25, "tune_scales": TUNE_STEPS})],
    ),
    (
        "GPTQ mixed by end-to-end effect, average 2.75 bits, g128, tuned",
        [("gptq", {**MIXED, "average_bits": 2.75, "tune_scales": TUNE_STEPS})],
    ),
    ("k-means 4-bit (cluster, Linear only)", [("cluster", {"bits": 4})]),
    (
        "k-means 4-bit per row (cluster per: row, Linear+Embedding)",
        [("cluster", {"bits": 4, "per": "row", "layers": ["Linear", "Embedding"]})],
    ),
]


def embed(model: nn.Module, batches: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    with torch.no_grad():
        out = torch.cat([model(x) for x in batches])
    return torch.nn.functional.normalize(out.float(), dim=1), time.perf_counter() - t0


def neighbour_overlap(ref: torch.Tensor, out: torch.Tensor, k: int = 10) -> float:
    def top(e: torch.Tensor) -> torch.Tensor:
        sim = e @ e.T
        sim.fill_diagonal_(-2.0)
        return sim.topk(k, dim=1).indices

    a, b = top(ref), top(out)
    hits = (a[:, :, None] == b[:, None, :]).any(dim=2).float().sum(dim=1)
    return float(hits.mean() / k)


def metrics(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    cos = (ref * out).sum(dim=1)
    return {
        "cosine_mean": round(float(cos.mean()), 5),
        "cosine_min": round(float(cos.min()), 5),
        "top10": round(neighbour_overlap(ref, out), 4),
    }


def apply_stages(model: nn.Module, stages: list, data: Any) -> tuple[nn.Module, dict]:
    notes: dict[str, Any] = {}
    for method, fields in stages:
        if method == "recipe":
            extra = {k: v for k, v in fields.items() if k != "name"}
            cfgs = [
                get_method(c.method).config.parse(
                    {k: v for k, v in {**c.to_dict(), **extra}.items() if k != "method"}
                )
                for c in Recipe.load(fields["name"]).stages
            ]
        else:
            cfgs = [get_method(method).config.parse(fields)]
        for cfg in cfgs:
            ctx = Context(data=data, trainer=Trainer(progress=False))
            model = get_method(cfg.method).apply(model, cfg, ctx)
            notes = dict(ctx.notes)
    return model, notes


def hqq_row(base: nn.Module, test: list[torch.Tensor], ref: torch.Tensor, fp32_bytes: int) -> dict:
    from hqq.core.quantize import BaseQuantizeConfig, Quantizer

    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    stored: dict[str, Any] = {}
    cfg = BaseQuantizeConfig(nbits=4, group_size=128)["weight_quant_params"]
    quantized = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear | nn.Embedding):
            w = mod.weight.detach()
            q, meta = Quantizer.quantize(w, device="cpu", compute_dtype=torch.float32, **cfg)
            stored[f"{name}.weight.q"] = q
            stored[f"{name}.weight.scale"] = meta["scale"].half()
            stored[f"{name}.weight.zero"] = meta["zero"].half()
            with torch.no_grad():
                mod.weight.copy_(Quantizer.dequantize(q, meta).reshape(w.shape))
            quantized.add(f"{name}.weight")
    for k, v in model.state_dict().items():
        if k not in quantized:
            stored[k] = v
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hqq.pt"
        torch.save(stored, path)
        size = path.stat().st_size
    seconds = time.perf_counter() - t0
    out, _ = embed(model, test)
    return {
        "bytes": size,
        "ratio": round(fp32_bytes / size, 2),
        **metrics(ref, out),
        "compress_s": round(seconds, 1),
        "load_s": None,
        "embed_vs_fp32": None,
    }


def cpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in flags.split()]
    return f"{fields.get('Model name', '?').strip()}; flags: {', '.join(wanted)}"


def write_markdown(rows: dict[str, dict], fp32_bytes: int, threads: int) -> None:
    lines = [
        "# Low-bit all-MiniLM-L6-v2 (`benchmarks/minilm_lowbit.py`)",
        "",
        f"CPU: {cpu_line()}; torch threads: {threads}. The machine was shared with other jobs",
        "while this ran, so the times are indicative; the ratios are from one run.",
        "",
        f"Data: `english` (real sentences). Calibration: {CALIBRATION_BATCHES} x 64 sentences of",
        "the `val` split; metrics on the 2,000 sentences of the `test` split (disjoint).",
        f"fp32 reference: `model.safetensors`, {fp32_bytes:,} bytes.",
        "",
        "| configuration | bytes | ratio vs fp32 | cosine mean | cosine min | top-10 overlap "
        "| compress s | load s | embed time vs fp32 | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['bytes']:,} | {r['ratio']}x | {r['cosine_mean']} | {r['cosine_min']}"
            f" | {r['top10']} | {r['compress_s']} | {r['load_s']} | {r['embed_vs_fp32']}"
            f" | {r.get('load_avg', '?')} |"
        )
    out = RESULTS / "minilm_lowbit.md"
    # the notes written by hand below the table survive a rerun
    kept = out.read_text(encoding="utf-8").partition(KEEP_MARK) if out.is_file() else ("", "", "")
    notes = f"\n{KEEP_MARK}{kept[2]}" if kept[1] else ""
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n" + notes, encoding="utf-8")
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="configuration names (prefixes) to run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--seed", type=int, default=0, help="order of the train split (rows named with it)"
    )
    parser.add_argument(
        "--store", default="minilm_lowbit.json", help="rows file under results/ (split runs)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = mz.load_data("english", seed=args.seed)
    test = [x for x, _ in data.test]
    fp32_bytes = (Path(minilm_dir()) / "model.safetensors").stat().st_size
    base = mz.load_model("zoo:minilm")
    ref, fp32_s = embed(base, test)
    store = RESULTS / args.store
    rows: dict[str, dict] = json.loads(store.read_text()) if store.is_file() else {}
    t0 = time.perf_counter()
    mz.load_model("zoo:minilm")
    rows["fp32"] = {
        "bytes": fp32_bytes,
        "ratio": 1.0,
        **metrics(ref, ref),
        "compress_s": 0,
        "load_s": round(time.perf_counter() - t0, 2),
        "embed_vs_fp32": 1.0,
    }
    wanted = args.only
    todo = [c for c in CONFIGS if not wanted or any(c[0].startswith(w) for w in wanted)]
    for config_name, stages in todo:
        name = config_name if args.seed == 0 else f"{config_name} [train order seed {args.seed}]"
        model = copy.deepcopy(base)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.mzip"
            t0 = time.perf_counter()
            model, notes = apply_stages(model, stages, data)
            size = mzip.save(model, path)
            compress_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            loaded, _ = mzip.load(path)
            load_s = time.perf_counter() - t0
        out, seconds = embed(loaded, test)
        _, again = embed(base, test)  # fp32 timed next to it (shared machine)
        rows[name] = {
            "bytes": size,
            "ratio": round(fp32_bytes / size, 2),
            **metrics(ref, out),
            "compress_s": round(compress_s, 1),
            "load_s": round(load_s, 2),
            "embed_vs_fp32": round(seconds / again, 2),
            "load_avg": round(os.getloadavg()[0], 1),
        }
        if "average_bits" in notes:
            rows[name]["average_bits"] = notes["average_bits"]
            rows[name]["bits"] = {n: v["bits"] for n, v in notes["layers"].items() if "bits" in v}
        tables = {
            n: v["rows_at_bits"] for n, v in notes.get("layers", {}).items() if "rows_at_bits" in v
        }
        if tables:
            rows[name]["rows_at_bits"] = tables
        if "tune" in notes:
            rows[name]["tune"] = notes["tune"]
        print(name, rows[name], flush=True)
        store.write_text(json.dumps(rows, indent=1))
        write_markdown(rows, fp32_bytes, args.threads)
    if not wanted or any("HQQ".startswith(w) or w.startswith("HQQ") for w in wanted):
        try:
            rows["HQQ 4-bit g128 (peer)"] = hqq_row(base, test, ref, fp32_bytes)
            print("HQQ", rows["HQQ 4-bit g128 (peer)"], flush=True)
        except ImportError as exc:
            print(f"HQQ not installed ({exc}); skipped", flush=True)
    store.write_text(json.dumps(rows, indent=1))
    write_markdown(rows, fp32_bytes, args.threads)


if __name__ == "__main__":
    main()
