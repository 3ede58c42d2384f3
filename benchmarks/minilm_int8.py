"""int8 all-MiniLM-L6-v2: modelzip's int8 modes against torch.ao and ONNX Runtime, one run.

On the real pretrained MiniLM (``zoo:minilm``) and the 2,000 evaluation sentences of the
``english`` data set (real sentences from PyTorch's documentation; calibration uses its separate
val split), each variant is measured for bytes on disk, mean / min cosine to the fp32
embeddings, top-10 nearest-neighbour overlap over the 2,000 sentences, and median latency at
batch 1 and batch 32 (32 tokens) on 1 and 2 threads, as a ratio to fp32 PyTorch at the same
thread count. Latencies are interleaved round by round so that load on the (shared) machine
hits every variant alike.

Variants: fp32 PyTorch; modelzip ``w8a8`` (the built-in recipe: per-layer auto mode, here
dynamic per-token int8 with SmoothQuant and a block-32 Hadamard rotation, int8 embedding rows),
``w7a8`` (the same with 7-bit weights: int8 products that cannot saturate in int16, so ORT's
plain session is exact on CPUs without VNNI; on such CPUs both exports are also timed in ORT's
default session, where only the 7-bit one is exact),
the same without the rotation, with and without 16-bit rows for the layers causing 70% of the
error (the recipe before the rotation), modelzip dynamic without
SmoothQuant, modelzip static (calibrated per-tensor uint8 + bias correction), modelzip ``w8a8``
exported to int8 ONNX and run in ONNX Runtime; ``torch.ao.quantization.quantize_dynamic``; ONNX
Runtime fp32, and ORT ``quantize_dynamic`` (per-channel int8) without and with the ORT
transformers optimizer, and with ``reduce_range`` (ORT's 7-bit weights for CPUs without VNNI).

Run: ``PYTHONPATH=src python benchmarks/minilm_int8.py [--quick] [--out FILE.md]`` (about 15
minutes on 2 idle cores; ``--quick``: only the w8a8 mode, 2 calibration batches).
Writes ``benchmarks/results/minilm_int8.md`` (or ``--out``: e.g. one file per kind of CPU).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import modelzip as mz
from modelzip import export
from modelzip.context import Context
from modelzip.eval.latency import inference_form
from modelzip.eval.retrieval import fidelity
from modelzip.export import export_onnx
from modelzip.nn import int8_runtime
from modelzip.recipe import Recipe
from modelzip.registry import get_method
from modelzip.train import Trainer

OUT = Path(__file__).parent / "results" / "minilm_int8.md"
ROUNDS = 3
THREADS = (1, 2)
warnings.filterwarnings("ignore")


def recipe(**acts: object) -> Recipe:
    """A one-stage quantize recipe with the given activation options."""
    return Recipe.from_dict(
        {
            "stages": [
                {
                    "method": "quantize",
                    "bits": 8,
                    "granularity": "channel",
                    "activations": {"bits": 8, "observer": "mse", **acts},
                    "bias_correction": acts.get("mode") == "static",
                    "embeddings": True,
                }
            ]
        }
    )


W8A8 = "modelzip w8a8 (auto)"
SEVEN = "modelzip w7a8 (7-bit weights)"
FAST = "modelzip w8a8 unrotated, int8 rows only"
PREVIOUS = "modelzip w8a8 unrotated, 16-bit rows (the previous recipe)"
FROZEN = " (TorchScript frozen)"
ONNX = " -> int8 ONNX in ORT"
PLAIN = ", ORT default session"
ORT_REDUCED = "ORT quantize_dynamic per-channel, reduce_range (7-bit weights)"


def w8a8_with(name: str, **acts: object) -> Recipe:
    """The built-in w8a8 recipe with some activation options changed."""
    rec = Recipe.load("w8a8")
    stage = rec.stages[-1]
    last = stage.model_copy(update={"activations": stage.activations.model_copy(update=acts)})
    return dataclasses.replace(rec, stages=(*rec.stages[:-1], last), name=name)


def ort_session(path: Path, threads: int, *, ours: bool):  # noqa: ANN201  (onnxruntime types)
    """modelzip's export in ``modelzip.export.ort_session`` (ORT's precision option only on
    CPUs whose int8 kernels saturate); ORT's own models with ORT's default options, as a user
    of ORT runs them (the option cost them 1.7-1.9x on an EPYC with VNNI)."""
    return export.ort_session(path, threads, precise=None if ours else False)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def cpu_line() -> str:
    name = ""
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    flags = int8_runtime.cpu_flags()
    keep = sorted(f for f in flags if "vnni" in f or "amx" in f or f in ("avx2", "avx512f"))
    return f"{name}; flags: {', '.join(keep)}"


def main() -> None:
    load_start = os.getloadavg()[0]
    torch.set_num_threads(1)  # compression and fidelity; latency sets 1 and 2 threads itself
    data = mz.load_data("english", batch_size=64)
    fp32 = mz.load_model("zoo:minilm").eval()
    x_eval = torch.cat([x for x, _ in data.test])
    x1, x32 = x_eval[:1], x_eval[:32]
    buf = io.BytesIO()
    torch.save(fp32.state_dict(), buf)
    fp32_bytes = len(buf.getvalue())
    work = Path(tempfile.mkdtemp(prefix="minilm-int8-"))

    torch_models: dict[str, torch.nn.Module] = {"fp32 PyTorch": fp32}
    sizes: dict[str, int] = {"fp32 PyTorch": fp32_bytes}
    notes: dict[str, str] = {}
    modes: dict[str, str | Recipe] = {W8A8: "w8a8", SEVEN: "w7a8"}
    if "--quick" not in sys.argv:  # the other modes (each ~1 min on an idle 2-core machine)
        # without the Hadamard rotation: int8 rows only (the speed end), and the recipe before
        # the rotation (16-bit rows, two int8 passes, for the layers causing 70% of the error)
        modes[FAST] = w8a8_with("w8a8-unrotated", rotate=0)
        modes[PREVIOUS] = w8a8_with("w8a8-rows16", rotate=0, rows="auto", rows16_share=0.7)
        modes["modelzip dynamic, no SmoothQuant"] = recipe(mode="dynamic", smoothquant=False)
        modes["modelzip static + bias corr."] = recipe(mode="static")
    cal = 2 if "--quick" in sys.argv else 8
    for name, rec in modes.items():
        t0 = time.perf_counter()
        path = work / f"{len(sizes)}.mzip"
        model = copy.deepcopy(fp32)
        kept: dict[str, str] = {}
        for stage in Recipe.load(rec).stages:  # the recipe's stages, without compress's evals
            ctx = Context(data=data, trainer=Trainer(progress=False))
            if "calibration_batches" in type(stage).model_fields:
                stage = stage.model_copy(update={"calibration_batches": cal})
            model = get_method(stage.method).apply(model, stage, ctx)
            kept.update(ctx.notes.get("kept_float", {}))
        mz.save(model, path)
        torch_models[name] = mz.load(path)
        sizes[name] = path.stat().st_size
        notes[name] = f"{time.perf_counter() - t0:.0f} s to compress; {len(kept)} layer(s) float"
        print(name, sizes[name], notes[name], file=sys.stderr, flush=True)

    # the same models traced and frozen (``modelzip.eval.latency.inference_form``): what
    # ``modelzip embed`` runs; it removes most of the per-layer Python overhead at batch 1
    for name in [n for n in torch_models if n == "fp32 PyTorch" or n.startswith("modelzip")]:
        torch_models[name + FROZEN] = inference_form(torch_models[name], x1)
        sizes[name + FROZEN] = sizes[name]

    qa = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8
    )
    buf = io.BytesIO()
    torch.save(qa.state_dict(), buf)
    torch_models["torch.ao quantize_dynamic"] = qa
    sizes["torch.ao quantize_dynamic"] = len(buf.getvalue())

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    onnx_files: dict[str, Path] = {}
    export_onnx(torch_models[W8A8], work / "mz.onnx", example=x1)
    onnx_files[W8A8 + ONNX] = work / "mz.onnx"
    export_onnx(torch_models[SEVEN], work / "mz7.onnx", example=x1)
    onnx_files[SEVEN + ONNX] = work / "mz7.onnx"
    export_onnx(fp32, work / "fp32.onnx", example=x1)
    onnx_files["ORT fp32"] = work / "fp32.onnx"
    quantize_dynamic(
        str(work / "fp32.onnx"), str(work / "q.onnx"), per_channel=True, weight_type=QuantType.QInt8
    )
    onnx_files["ORT quantize_dynamic per-channel"] = work / "q.onnx"
    quantize_dynamic(  # ORT's advice for CPUs without VNNI: 7-bit weights
        str(work / "fp32.onnx"),
        str(work / "q7.onnx"),
        per_channel=True,
        reduce_range=True,
        weight_type=QuantType.QInt8,
    )
    onnx_files[ORT_REDUCED] = work / "q7.onnx"
    opt = optimizer.optimize_model(
        str(work / "fp32.onnx"), model_type="bert", num_heads=12, hidden_size=384
    )
    opt.save_model_to_file(str(work / "opt.onnx"))
    quantize_dynamic(
        str(work / "opt.onnx"),
        str(work / "optq.onnx"),
        per_channel=True,
        weight_type=QuantType.QInt8,
        # The optimizer's fused ops (SkipLayerNormalization, BiasGelu) have no ONNX shape
        # inference, so the quantizer needs the element type it cannot infer for their outputs.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    onnx_files["ORT optimizer + quantize_dynamic"] = work / "optq.onnx"
    for name, path in onnx_files.items():
        sizes[name] = path.stat().st_size

    # --- fidelity on the 2,000 evaluation sentences ---------------------------------------
    with torch.inference_mode():
        ref = torch.cat([fp32(x_eval[i : i + 64]) for i in range(0, len(x_eval), 64)])
    fid: dict[str, dict[str, float]] = {}
    for name, model in torch_models.items():
        with torch.inference_mode():
            emb = torch.cat([model(x_eval[i : i + 64]) for i in range(0, len(x_eval), 64)])
        fid[name] = fidelity(emb.float(), ref)
    sessions = {
        name: {t: ort_session(p, t, ours=name.startswith("modelzip")) for t in THREADS}
        for name, p in onnx_files.items()
    }
    if export.ort_kernels_saturate():  # what a user's own ORT session (no option) gives here
        for name in (W8A8 + ONNX, SEVEN + ONNX):
            sessions[name + PLAIN] = {
                t: ort_session(onnx_files[name], t, ours=False) for t in THREADS
            }
            sizes[name + PLAIN] = sizes[name]
    for name, by_t in sessions.items():
        s = by_t[2]
        outs = [
            s.run(None, {"input": x_eval[i : i + 64].numpy()})[0] for i in range(0, len(x_eval), 64)
        ]
        fid[name] = fidelity(torch.from_numpy(np.concatenate(outs)).float(), ref)

    # --- latency, interleaved ------------------------------------------------------------
    lat: dict[tuple[str, int, int], list[float]] = {}
    for _ in range(ROUNDS):
        for t in THREADS:
            torch.set_num_threads(t)
            for b, xb in ((1, x1), (32, x32)):
                reps = 20 if b == 1 else 5
                for name, model in torch_models.items():
                    with torch.inference_mode():
                        ms = median_ms(lambda m=model, xb=xb: m(xb), reps)
                    lat.setdefault((name, t, b), []).append(ms)
                for name, by_t in sessions.items():
                    feed = {"input": xb.numpy()}
                    ms = median_ms(lambda s=by_t[t], f=feed: s.run(None, f), reps)
                    lat.setdefault((name, t, b), []).append(ms)

    def ms(name: str, t: int, b: int) -> float:
        return min(lat[(name, t, b)])

    names = list(torch_models) + list(sessions)
    lines = [
        "# int8 all-MiniLM-L6-v2: modelzip vs torch.ao and ONNX Runtime",
        "",
        f"CPU: {cpu_line()}; {os.cpu_count()} cores, 1-minute load average {load_start:.1f} at "
        f"the start and {os.getloadavg()[0]:.1f} at the end (other jobs on the machine slow the "
        "2-thread timings most). "
        f"Evaluation: {len(x_eval)} `english` test sentences (real sentences from PyTorch's "
        "documentation), 32 tokens; calibration on its separate val split. Latency: best of "
        f"{ROUNDS} interleaved medians; ratio = variant / fp32 PyTorch at the same threads. "
        f"Calibration batches (of 64 sentences) per modelzip mode: {cal}"
        + (" (`--quick`: only the w8a8 mode)." if "--quick" in sys.argv else "."),
        f"int8 kernels here: {int8_runtime.describe()['why']} "
        f"(matmul kernel `{int8_runtime.matmul_kernel()}`).",
        "ONNX Runtime sessions: modelzip's export with `session.x64quantprecision` "
        + (
            "on (ORT's u8 x s8 kernels pair products in int16 on this CPU)"
            if export.ort_kernels_saturate()
            else "off (ORT's int8 kernels accumulate in int32 on this CPU: the option is not "
            "needed and costs time)"
        )
        + "; ORT's own models with ORT's default options.",
        "",
        "| variant | bytes | x fp32 file | cos mean | cos min | top-10 overlap | "
        + " | ".join(f"b{b} {t}t" for t in THREADS for b in (1, 32))
        + " |",
        "|---|---|---|---|---|---|" + "---|" * (2 * len(THREADS)),
    ]
    for name in names:
        f = fid[name]
        cells = []
        for t in THREADS:
            for b in (1, 32):
                v = ms(name, t, b)
                cells.append(f"{v:.2f} ms ({v / ms('fp32 PyTorch', t, b):.2f}x)")
        lines.append(
            f"| {name} | {sizes[name]:,} | {sizes[name] / fp32_bytes:.3f} | "
            f"{f['cosine_mean']:.5f} | {f['cosine_min']:.4f} | {f['top10_overlap']:.4f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "Notes: " + "; ".join(f"{k}: {v}" for k, v in notes.items()) + "."]
    for mode in (W8A8, SEVEN):
        best = fid[mode]
        lines += [
            "",
            f"## Targets ({mode})",
            "",
            f"- mean cosine >= 0.998: {best['cosine_mean']:.5f} "
            f"({'met' if best['cosine_mean'] >= 0.998 else 'MISSED'})",
            f"- top-10 overlap >= 0.97: {best['top10_overlap']:.4f} "
            f"({'met' if best['top10_overlap'] >= 0.97 else 'MISSED'})",
            f"- file <= 0.26x fp32: {sizes[mode] / fp32_bytes:.3f}x "
            f"({'met' if sizes[mode] <= 0.26 * fp32_bytes else 'MISSED'})",
        ]
        # the exact forms only: a plain ORT session is exact here for 7-bit weights alone
        forms = [mode, mode + FROZEN, mode + ONNX]
        if mode == SEVEN and mode + ONNX + PLAIN in sessions:
            forms.append(mode + ONNX + PLAIN)
        for t in THREADS:
            for b in (1, 32):
                ours = min(ms(f, t, b) for f in forms)
                ort_q = min(
                    ms("ORT quantize_dynamic per-channel", t, b),
                    ms("ORT optimizer + quantize_dynamic", t, b),
                    ms(ORT_REDUCED, t, b),
                )
                verdict = "met" if ours <= ort_q else "MISSED"
                lines.append(
                    f"- latency b{b}, {t} thread(s), no slower than ORT int8: modelzip "
                    f"{ours:.2f} ms vs ORT int8 best {ort_q:.2f} ms ({verdict})"
                )
    out = Path(sys.argv[sys.argv.index("--out") + 1]) if "--out" in sys.argv else OUT
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
