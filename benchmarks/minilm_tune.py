"""``tune_scales`` on all-MiniLM-L6-v2: GPTQ once, then tune in stages, test metrics after each.

The same data, calibration and metrics as ``benchmarks/minilm_lowbit.py`` (whose helpers it
imports): the codes come from one ``gptq`` run (``--bits``, ``--group-size``, act-order, 8 x 64
``val`` sentences), then ``_gptq_tune.tune`` runs on the same calibration batches until each
of ``--steps`` (cumulative; each stage starts a fresh Adam), and after each stage the 2,000
``test`` sentences are embedded and compared with fp32 (cosine mean/min, top-10 overlap). One
GPTQ run thus gives the whole curve, where the benchmark's rows pay for GPTQ once per setting.

Run: ``HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/minilm_tune.py --bits 4 --steps 30,100``
(appends to ``benchmarks/results/minilm_tune.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch
from minilm_lowbit import CALIBRATION_BATCHES, RESULTS, embed, metrics

import modelzip as mz
from modelzip.context import Context
from modelzip.methods import _gptq_tune as tuning
from modelzip.registry import get_method
from modelzip.train import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--steps", default="30,100", help="cumulative step counts")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = mz.load_data("english")
    test = [x for x, _ in data.test]
    base = mz.load_model("zoo:minilm")
    ref, _ = embed(base, test)
    fields = {"bits": args.bits, "group_size": args.group_size, "act_order": True}
    cfg = get_method("gptq").config.parse({**fields, "calibration_batches": CALIBRATION_BATCHES})
    ctx = Context(data=data, trainer=Trainer(progress=False))
    t0 = time.perf_counter()
    model = get_method("gptq").apply(copy.deepcopy(base), cfg, ctx)
    curve = [{"steps": 0, "seconds": round(time.perf_counter() - t0, 1)}]
    curve[0].update(metrics(ref, embed(model, test)[0]))
    print(curve[-1], flush=True)
    batches = [x for x, _ in data.val][:CALIBRATION_BATCHES]
    refs = tuning.reference_outputs(base, batches)
    assert refs is not None
    done = 0
    for total in [int(s) for s in args.steps.split(",") if s]:
        t0 = time.perf_counter()
        notes = tuning.tune(model, batches, refs, steps=total - done, lr=args.lr)
        done = total
        row = {"steps": total, "seconds": round(time.perf_counter() - t0, 1), "tune": notes}
        row.update(metrics(ref, embed(model, test)[0]))
        curve.append(row)
        print(row, flush=True)
    store = Path(RESULTS) / "minilm_tune.json"
    runs = json.loads(store.read_text()) if store.is_file() else []
    runs.append({"fields": fields, "lr": args.lr, "curve": curve})
    store.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
