"""The built-in ``w8a8`` recipe on torchvision's CNNs (models no one here wrote), with and
without the end-to-end output check (``min_output_sqnr_db``, ``modelzip.quant.guard``).

Each model (torchvision's own definitions, 10 classes, at 3x32x32) is trained for 2 epochs
(AdamW, lr 2e-3, seed 0) on the mnist5k train split padded to 32x32 and repeated to 3
channels, given to modelzip as a user's ``.npz``; then the ``w8a8`` recipe runs twice on it,
once with the check off (``min_output_sqnr_db: 0``) and once as built in (20 dB). Printed per
run: test accuracy of fp32 and int8, the model's output SQNR to float on
the calibration batches, the layers given float inputs back, and compression time.

Needs torchvision's model code, which is not a modelzip dependency: ``pip install --no-deps
--target DIR torchvision`` and ``PYTHONPATH=DIR``. A torchvision built for another torch
fails to load its C++ operators (``torchvision::nms``) at import; the models here need none,
so the script stubs the module that registers them.

Run: ``PYTHONPATH=src:DIR python benchmarks/vision_int8.py [MODEL ...]`` (about 10 minutes).
Writes ``benchmarks/results/vision_int8.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import modelzip as mz
from modelzip.bundle import DataBundle
from modelzip.eval.evaluate import accuracy
from modelzip.eval.machine import machine
from modelzip.recipe import Recipe

OUT = Path(__file__).parent / "results" / "vision_int8.md"
warnings.filterwarnings("ignore")


def _models() -> dict[str, Callable[[], nn.Module]]:
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    import torchvision.models as tv

    return {
        "efficientnet_b0": lambda: tv.efficientnet_b0(num_classes=10),
        "mobilenet_v2 (width 0.5)": lambda: tv.mobilenet_v2(num_classes=10, width_mult=0.5),
        "shufflenet_v2_x0_5": lambda: tv.shufflenet_v2_x0_5(num_classes=10),
        "regnet_x_400mf": lambda: tv.regnet_x_400mf(num_classes=10),
        "densenet (12, 2-2-2)": lambda: tv.DenseNet(
            growth_rate=12, block_config=(2, 2, 2), num_init_features=24, num_classes=10
        ),
    }


def rgb32(folder: Path) -> DataBundle:
    """mnist5k as 3x32x32 (zero-padded, the gray channel repeated), as a user's ``.npz``."""
    src = mz.load_data("mnist5k", batch_size=500)
    xs, ys = zip(*[b for split in (src.train, src.val, src.test) for b in split], strict=True)
    x = nn.functional.pad(torch.cat(xs), (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    path = folder / "mnist5k-rgb32.npz"
    np.savez(path, x=x.numpy(), y=torch.cat(ys).numpy())
    return mz.load_data(str(path), batch_size=64)


def train(model: nn.Module, data: DataBundle) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    model.train()
    for _ in range(2):
        for x, y in data.train:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def with_floor(floor: float) -> Recipe:
    rec = Recipe.load("w8a8")
    stage = rec.stages[-1]
    acts = stage.activations.model_copy(update={"min_output_sqnr_db": floor})
    return dataclasses.replace(
        rec, stages=(*rec.stages[:-1], stage.model_copy(update={"activations": acts}))
    )


def main() -> None:
    torch.set_num_threads(2)
    data = rgb32(Path(tempfile.mkdtemp(prefix="vision-int8-")))
    models = _models()
    names = [a for a in sys.argv[1:] if a in models] or list(models)
    m = machine()
    keep = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    flags = [f for f in keep if f in m.get("cpu_flags", ())]
    lines = [
        "# w8a8 on torchvision CNNs, with and without the end-to-end output check",
        "",
        f"CPU: {m.get('cpu')}; flags: {', '.join(flags)}; {m.get('threads')} threads for "
        "training and compression. "
        "Data: mnist5k padded to 3x32x32, as an `.npz` (splits "
        f"{', '.join(f'{k} {v:,}' for k, v in data.sizes.items())}: one test image is "
        f"{100 / data.sizes['test']:.2g} point). Each model trained 2 epochs from scratch "
        "(seed 0). `check off`: "
        "`min_output_sqnr_db: 0`; `check 20 dB`: the built-in recipe.",
        "",
        "| model | fp32 test | recipe | int8 test | delta (points) | output SQNR dB | "
        "layers back on float inputs | compress s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        model = train(models[name](), data)
        base = accuracy(model, data.test)
        for label, floor in (("check off", 0.0), ("check 20 dB", 20.0)):
            t0 = time.perf_counter()
            res = mz.compress(copy.deepcopy(model), data, with_floor(floor), measure_latency=False)
            secs = time.perf_counter() - t0
            notes = res["stages"][-1]["notes"]
            guard = notes.get("output_guard", {})
            back = len(guard.get("restored", {}))
            total = back + sum(1 for v in notes["layers"].values() if v.get("int8_kernel") is True)
            acc = accuracy(res["model"], data.test)
            sqnr = (
                f"{guard['before_db']} -> {notes['output_sqnr_db']}"
                if back
                else f"{notes['output_sqnr_db']}"
            )
            row = (
                f"| {name} | {base:.3f} | {label} | {acc:.3f} | {100 * (acc - base):+.1f} | "
                f"{sqnr} | {back} of {total} | {secs:.0f} |"
            )
            print(row, flush=True)
            lines.append(row)
    OUT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
