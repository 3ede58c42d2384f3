"""Distillation and low-rank factorization on mnist5k, mean of 3 seeds.

1. Students trained from scratch vs distilled from their teacher (same init, epochs, lr):
   784-100-10 (``zoo:lenet300-100``) from LeNet-300-100, and LeNet-5 with a quarter of the
   channels (``zoo:lenet5-quarter``) from LeNet-5.
2. LeNet-300-100 and LeNet-5 factorized to 2x and 4x fewer parameters (``lowrank`` with a
   global budget, and the per-layer ratio of the issue's recipe at 4x): accuracy right after
   factorization, after ``finetune`` and after ``distill`` recovery (3 epochs each), measured
   on the model decoded from the .mzip; CPU latency of the factorized vs the original model,
   measured in one run (seed 0).

Run: ``PYTHONPATH=src python benchmarks/distill_lowrank.py`` (writes
``benchmarks/results/distill_lowrank.md``). Baselines come from the modelzip cache
(trained once per seed). Everything runs on one CPU thread: on a small shared machine torch's
intra-op threads only spin against each other, and one thread keeps the latency ratios stable.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import modelzip as mz
from modelzip.eval.latency import median_ms
from modelzip.recipe import Recipe
from modelzip.source import ModelSource
from modelzip.train import Trainer

RESULTS = Path(__file__).parent / "results" / "distill_lowrank.md"
KD = {"alpha": 0.5, "temperature": 4.0}
#: (teacher, student, epochs, lr): students get the teacher's own baseline schedule.
#: Soft targets train slower than hard labels, so the MLP student (cheap) gets 40 epochs.
STUDENTS = [("lenet300", "lenet300-100", 40, 1e-3), ("lenet5", "lenet5-quarter", 12, 1e-3)]
#: (label, lowrank stage) for each model; recovery runs 3 epochs as in the issue's recipe.
LOWRANK = [
    ("2x global", {"method": "lowrank", "ratio": 0.5, "scope": "global"}),
    ("4x global", {"method": "lowrank", "ratio": 0.25, "scope": "global"}),
    ("4x per-layer", {"method": "lowrank", "ratio": 0.25}),
]
#: The per-layer rule is shown on the MLP only (the LeNet-5 runs dominate the time budget).
SKIP = {("lenet5", "4x per-layer")}
RECOVERY_EPOCHS = 3


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def accuracy(model: torch.nn.Module, data: Any) -> float:
    return mz.evaluate(model, data, measure_latency=False)["accuracy"]


_DATA: dict[int, Any] = {}


def fresh_data(seed: int) -> Any:
    """The mnist5k bundle of ``seed`` with its shuffle order restarted (every run sees the
    same batches; loading is slow, so the bundle itself is reused)."""
    if seed not in _DATA:
        _DATA[seed] = mz.load_data("mnist5k", seed=seed)
    _DATA[seed].train.generator.manual_seed(seed)
    return _DATA[seed]


def student_run(seed: int, teacher_name: str, student: str, epochs: int, lr: float):
    """Scratch vs distilled student from the same initial weights."""
    data = fresh_data(seed)
    teacher = mz.load_model(f"zoo:{teacher_name}", data=data, seed=seed)
    kw = {"in_shape": list(data.sample_shape), "num_classes": data.num_classes}
    torch.manual_seed(seed)  # the same seeding distill uses for its student
    scratch = ModelSource("zoo", student, kw).build()
    Trainer(progress=False, seed=seed).fit(scratch, data.train, epochs=epochs, lr=lr)
    stage = {"method": "distill", "student": f"zoo:{student}", "epochs": epochs, "lr": lr, **KD}
    recipe = Recipe.from_dict({"stages": [stage]})
    res = mz.compress(
        copy.deepcopy(teacher), fresh_data(seed), recipe, seed=seed, measure_latency=False
    )
    return {
        "teacher_acc": res["baseline"]["accuracy"],
        "scratch_acc": accuracy(scratch, data),
        "distilled_acc": res["compressed"]["accuracy"],
        "teacher_params": res["baseline"]["params"],
        "student_params": res["compressed"]["params"],
    }


def lowrank_run(seed: int, model_name: str, stage: dict[str, Any]):
    """Accuracy after factorization, after finetune, after distill (from the .mzip)."""
    teacher = mz.load_model(f"zoo:{model_name}", data=fresh_data(seed), seed=seed)
    out: dict[str, Any] = {}
    for recovery in ("finetune", "distill"):
        rec: dict[str, Any] = {"method": recovery, "epochs": RECOVERY_EPOCHS}
        if recovery == "distill":
            rec.update(KD)
        recipe = Recipe.from_dict({"stages": [stage, rec]})
        data = fresh_data(seed)
        res = mz.compress(copy.deepcopy(teacher), data, recipe, seed=seed, measure_latency=False)
        out["base_acc"] = res["baseline"]["accuracy"]
        out["base_params"] = res["baseline"]["params"]
        out["params"] = res["compressed"]["params"]
        out["factorized_acc"] = res["stages"][0]["accuracy"]
        out[f"{recovery}_acc"] = res["compressed"]["accuracy"]
        out["ranks"] = {k: v["rank"] for k, v in res["stages"][0]["notes"]["layers"].items()}
        out["model"] = res["model"]
    return out, teacher


def latency_ratios(original: torch.nn.Module, variants: dict[str, torch.nn.Module]) -> dict:
    """Median ms at batch 1 and 256 of the original and each variant, measured alternately
    (five rounds) so that load on the machine hits all of them alike; speedup = orig / variant.
    """
    sample = fresh_data(0).example(64)
    xs = {"b1": sample[:1], "bN": sample.repeat(4, 1, 1, 1)}
    models = {"original": original, **variants}
    times: dict[str, dict[str, list[float]]] = {k: {"b1": [], "bN": []} for k in models}
    for _ in range(5):
        for name, model in models.items():
            for b, x in xs.items():
                times[name][b].append(median_ms(model, x, repeats=7, budget_s=0.5))
    med = {k: {b: statistics.median(v[b]) for b in v} for k, v in times.items()}
    return {
        label: {
            "b1_ms": (med["original"]["b1"], med[label]["b1"]),
            "bN_ms": (med["original"]["bN"], med[label]["bN"]),
            "speedup_b1": med["original"]["b1"] / med[label]["b1"],
            "speedup_bN": med["original"]["bN"] / med[label]["bN"],
        }
        for label in variants
    }


def mean(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def std(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0


def pct(rows: list[dict[str, Any]], key: str) -> str:
    return f"{100 * mean(rows, key):.2f} ± {100 * std(rows, key):.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = list(range(args.seeds))

    student_rows: dict[str, list[dict[str, Any]]] = {}
    for teacher, student, epochs, lr in STUDENTS:
        for seed in seeds:
            log(f"[{time.perf_counter() - t0:6.0f}s] student {student} seed {seed}")
            row = student_run(seed, teacher, student, epochs, lr)
            student_rows.setdefault(f"{teacher} -> {student}", []).append(row)

    lowrank_rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    latencies: dict[tuple[str, str], dict[str, Any]] = {}
    for model_name in ("lenet300", "lenet5"):
        variants: dict[str, torch.nn.Module] = {}
        original = None
        for label, stage in LOWRANK:
            if (model_name, label) in SKIP:
                continue
            for seed in seeds:
                log(f"[{time.perf_counter() - t0:6.0f}s] lowrank {model_name} {label} seed {seed}")
                row, teacher = lowrank_run(seed, model_name, stage)
                model = row.pop("model")
                if seed == seeds[0]:
                    variants[label], original = model, teacher
                lowrank_rows.setdefault((model_name, label), []).append(row)
        log(f"[{time.perf_counter() - t0:6.0f}s] latency {model_name}")
        for label, lat in latency_ratios(original, variants).items():
            latencies[(model_name, label)] = lat

    seconds = time.perf_counter() - t0
    text = render(student_rows, lowrank_rows, latencies, seeds, seconds)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    log(f"wrote {args.out} in {seconds:.0f}s")
    return 0


def render(
    student_rows: dict[str, list[dict[str, Any]]],
    lowrank_rows: dict[tuple[str, str], list[dict[str, Any]]],
    latencies: dict[tuple[str, str], dict[str, Any]],
    seeds: list[int],
    seconds: float,
) -> str:
    lines = [
        "# Distillation and low-rank factorization (mnist5k)",
        "",
        f"`PYTHONPATH=src python benchmarks/distill_lowrank.py` — seeds {seeds}, mean ± std "
        f"of test accuracy (%), 1 CPU thread, {seconds:.0f} s in all. Distillation: "
        f"alpha={KD['alpha']}, T={KD['temperature']:g}; teacher = the cached zoo baseline of "
        "the same seed.",
        "",
        "## Students: from scratch vs distilled",
        "",
        "Same initial weights, epochs and learning rate for both; params ratio = teacher / "
        "student parameters.",
        "",
        "| teacher -> student | epochs | teacher acc | scratch acc | distilled acc | gain (pp) "
        "| params (teacher / student) | params ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    epochs = {f"{t} -> {s}": e for t, s, e, _ in STUDENTS}
    for name, rows in student_rows.items():
        gain = 100 * (mean(rows, "distilled_acc") - mean(rows, "scratch_acc"))
        tp, sp = rows[0]["teacher_params"], rows[0]["student_params"]
        lines.append(
            f"| {name} | {epochs[name]} | {pct(rows, 'teacher_acc')} | {pct(rows, 'scratch_acc')} "
            f"| {pct(rows, 'distilled_acc')} | {gain:+.2f} | {tp:,} / {sp:,} | {tp / sp:.2f}x |"
        )
    lines += [
        "",
        "## Low-rank factorization: accuracy before and after recovery",
        "",
        f"Recovery: {RECOVERY_EPOCHS} epochs of `finetune` or of `distill` (the original model "
        "as teacher). 'global' spends one parameter budget across layers by singular-value "
        "energy (`scope: global`); 'per-layer' keeps that ratio of every layer (the issue's "
        "`ratio: 0.25` recipe). Params ratio = original / factorized parameters (whole model). "
        "Latency: seed 0, the model decoded from the .mzip vs the original, median ms of five "
        "alternated rounds, batch 1 and batch 256; speedup = original / factorized (> 1 is "
        "faster).",
        "",
        "| model | factorization | params ratio | original acc | factorized | + finetune "
        "| + distill | ranks (seed 0) | b1 ms (orig / lr) | b256 ms (orig / lr) | speedup b1 "
        "| speedup b256 |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for (model_name, label), rows in lowrank_rows.items():
        lat = latencies[(model_name, label)]
        ratio = rows[0]["base_params"] / rows[0]["params"]
        ranks = ", ".join(f"{k}:{v}" for k, v in rows[0]["ranks"].items())
        lines.append(
            f"| {model_name} | {label} | {ratio:.2f}x | {pct(rows, 'base_acc')} "
            f"| {pct(rows, 'factorized_acc')} | {pct(rows, 'finetune_acc')} "
            f"| {pct(rows, 'distill_acc')} | {ranks} "
            f"| {lat['b1_ms'][0]:.3f} / {lat['b1_ms'][1]:.3f} "
            f"| {lat['bN_ms'][0]:.2f} / {lat['bN_ms'][1]:.2f} "
            f"| {lat['speedup_b1']:.2f}x | {lat['speedup_bN']:.2f}x |"
        )
    lines += [
        "",
        "Reading the tables:",
        "",
        "- Students: the gain column is distilled minus scratch accuracy; compare it with the "
        "std columns before calling it a gain or a loss. These teachers were trained to ~100% "
        "train accuracy on the same 3,500 images, so their soft targets on those images add "
        "little beyond the labels.",
        "- Low-rank 'per-layer' applies the ratio to every layer, the 10-class head included "
        "(rank 2 of 10 at 4x), which is what collapses its accuracy; the global budget keeps "
        "layers whose factors would save under 10% (`min_saving`) dense and spends the budget "
        "on the large, compressible `fc1`.",
        "- Latency: factorizing trades one large matmul for two thin ones, which pays at large "
        "batch; at batch 1 the extra layer's overhead cancels the saving. LeNet-5's time is in "
        "its convolutions, which stay dense here, so its latency barely moves.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
