"""The built-in ``w8a8`` recipe on CNNs: LeNet-5 and a residual CNN with BatchNorm, on
fashion-mnist (10,000 test images: one image is 0.01 point, so "within 0.2 points" can be told
from noise) and on the small sets (mnist5k, digits), in PyTorch and exported to int8 ONNX (QDQ)
in ONNX Runtime.

For each model and each of the recipes ``w8a8`` and ``w7a8`` (7-bit weights, which the int8
kernels of CPUs without VNNI run exactly): test accuracy of fp32 and of the .mzip (loaded back),
how many static layers run the engine's int8 kernels on this CPU, file bytes, median
latency at batch 1 and 256 (1 thread) as a ratio to fp32 PyTorch, and the exported int8 ONNX
model's agreement with modelzip (argmax on the test split) and latency in ONNX Runtime next to
the fp32 ONNX model. One interleaved run.

Run: ``PYTHONPATH=src python benchmarks/cnn_int8.py [--out FILE.md]`` (a few minutes).
Writes ``benchmarks/results/cnn_int8.md`` (or ``--out``: e.g. one file per kind of CPU).
"""

from __future__ import annotations

import copy
import itertools
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

import modelzip as mz
from modelzip.eval.evaluate import accuracy
from modelzip.eval.machine import machine
from modelzip.export import export_onnx, ort_kernels_saturate, ort_session
from modelzip.nn import int8_runtime
from modelzip.testing.user_models import ResidualCNN, residual_cnn
from modelzip.train import Trainer

OUT = Path(__file__).parent / "results" / "cnn_int8.md"
ROUNDS = 3
warnings.filterwarnings("ignore")


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


#: The recipes compared: w8a8, and w7a8 (7-bit weights: exact on the engine's int8 kernels and
#: in ORT's default session on CPUs without VNNI too).
RECIPES = ("w8a8", "w7a8")


def session(path: Path, recipe: str = "w8a8") -> ort.InferenceSession:
    """fp32 and w8a8 in ``ort_session`` (``session.x64quantprecision`` where ORT's int8 kernels
    saturate); w7a8 in ORT's default session, as any ORT user would run it."""
    return ort_session(path, threads=1, precise=False if recipe == "w7a8" else None)


def engine_share(model: torch.nn.Module) -> str:
    """How many of the static int8 layers run the engine's int8 kernels here (not the fp32
    reference), e.g. ``5/5``."""
    from modelzip.nn.quantized import _QuantBase

    layers = [m for m in model.modules() if isinstance(m, _QuantBase)]
    return f"{sum(m.uses_engine() for m in layers)}/{len(layers)}"


def _arg(flag: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(flag) + 1]) if flag in sys.argv else default


#: The fashion-mnist residual CNN's training (``--res-epochs N --res-images N``); the defaults
#: are the committed tables' (2 epochs on 15,000 images left it at 69%, under-trained).
RES_EPOCHS = _arg("--res-epochs", 3)
RES_IMAGES = _arg("--res-images", 54_000)


def main() -> None:
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="cnn-int8-"))
    rows = []
    cases = []
    fashion = mz.load_data("fashion-mnist")
    cases.append(
        ("LeNet-5 / fashion-mnist", mz.load_model("zoo:lenet5", data=fashion), fashion, None)
    )
    torch.manual_seed(0)
    res28 = ResidualCNN(side=28)
    # RES_IMAGES of the training images for RES_EPOCHS (full-resolution residual blocks are slow
    # to train on one thread); the accuracy change is measured on the full 10,000-image test split
    subset = torch.utils.data.Subset(fashion.train.dataset, range(RES_IMAGES))
    train = torch.utils.data.DataLoader(subset, batch_size=64, shuffle=True)
    Trainer(progress=False).fit(res28, train, epochs=RES_EPOCHS, lr=3e-3)
    cases.append(
        ("residual CNN + BN / fashion-mnist", res28.eval(), fashion, lambda: ResidualCNN(side=28))
    )
    mnist = mz.load_data("mnist5k")
    cases.append(("LeNet-5 / mnist5k", mz.load_model("zoo:lenet5", data=mnist), mnist, None))
    digits = mz.load_data("digits")
    res = residual_cnn()
    Trainer(progress=False).fit(res, digits.train, epochs=15, lr=3e-3)
    cases.append(("residual CNN + BN / digits", res.eval(), digits, residual_cnn))
    for (name, fp32, data, skeleton), recipe in itertools.product(cases, RECIPES):
        path = work / "m.mzip"
        mz.compress(copy.deepcopy(fp32), data, recipe, out=path, measure_latency=False)
        q = mz.load(path, model=skeleton()) if skeleton else mz.load(path)
        x_test = torch.cat([x for x, _ in data.test])
        export_onnx(fp32, work / "f.onnx", example=x_test[:1])
        export_onnx(q, work / "q.onnx", example=x_test[:1])
        s_f, s_q = session(work / "f.onnx"), session(work / "q.onnx", recipe)
        with torch.inference_mode():
            ours = q(x_test).numpy()
        theirs = s_q.run(None, {"input": x_test.numpy()})[0]
        agree = float((ours.argmax(1) == theirs.argmax(1)).mean())
        acc_f, acc_q = accuracy(fp32, data.test), accuracy(q, data.test)
        acc_ort = float((theirs.argmax(1) == torch.cat([y for _, y in data.test]).numpy()).mean())
        lat: dict[tuple[str, int], float] = {}
        for _ in range(ROUNDS):
            for b in (1, 256):
                xb = torch.cat([x_test] * (1 + 256 // len(x_test)))[:b]
                reps = 50 if b == 1 else 10
                for k, m in (("fp32", fp32), ("int8", q)):
                    with torch.inference_mode():
                        t = median_ms(lambda m=m, xb=xb: m(xb), reps)
                    lat[(k, b)] = min(lat.get((k, b), 1e9), t)
                for k, s in (("ort fp32", s_f), ("ort int8", s_q)):
                    feed = {"input": xb.numpy()}
                    t = median_ms(lambda s=s, feed=feed: s.run(None, feed), reps)
                    lat[(k, b)] = min(lat.get((k, b), 1e9), t)
        rows.append(
            f"| {name} | {recipe} | {acc_f:.4f} | {acc_q:.4f} ({100 * (acc_q - acc_f):+.2f} pt) | "
            f"{path.stat().st_size:,} | {engine_share(q)} | "
            + " | ".join(f"{lat[('int8', b)] / lat[('fp32', b)]:.2f}x" for b in (1, 256))
            + f" | {agree:.4f} | {acc_ort:.4f} | "
            + " | ".join(
                f"{lat[('ort int8', b)]:.3f} / {lat[('ort fp32', b)]:.3f} ms" for b in (1, 256)
            )
            + " |"
        )
        print(rows[-1])
    flags = int8_runtime.cpu_flags()
    keep = sorted(f for f in flags if "vnni" in f or "amx" in f or f == "avx2")
    lines = [
        "# w8a8 on CNNs: PyTorch int8 and exported int8 ONNX in ONNX Runtime",
        "",
        f"CPU: {machine()['cpu']}; flags: {', '.join(keep)}; 1 thread; the machine was shared "
        "with other jobs. Test sets: fashion-mnist 10,000 images (0.01 pt each), mnist5k 1,000, "
        f"digits 360 (0.28 pt each). The fashion-mnist residual CNN trained {RES_EPOCHS} epochs on "
        f"{RES_IMAGES:,} training images. "
        f"int8 kernels: {int8_runtime.describe()['why']}.",
        "",
        "ONNX Runtime sessions: fp32 and w8a8 with `session.x64quantprecision` "
        + ("on" if ort_kernels_saturate() else "off")
        + " (on only where ORT's int8 kernels saturate), w7a8 in ORT's default session.",
        "",
        "| model | recipe | fp32 acc | int8 acc | .mzip bytes | static layers on int8 kernels "
        "| int8/fp32 b1 | int8/fp32 b256 | ORT int8 argmax = modelzip | ORT int8 acc | "
        "ORT int8 / fp32 b1 | ORT int8 / fp32 b256 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    out = Path(sys.argv[sys.argv.index("--out") + 1]) if "--out" in sys.argv else OUT
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
