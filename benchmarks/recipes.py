"""Every built-in recipe on the zoo pair and on the user-model fixtures: ratio and accuracy change.

Rows: each built-in recipe x {LeNet-300-100, LeNet-5} on mnist5k (seeds 0, 1, 2: mean and
spread) and on fashion-mnist (seed 0; its 10,000-image test split is precise enough), and on
the user-model fixtures (residual CNN, concat net, depthwise CNN on digits; tabular MLP on the
breast-cancer table). The fp32 baseline of each row is the same model trained the same way
(zoo baselines: ``modelzip.api.BASELINE_TRAINING``; fixtures: 15 epochs of Adam), and the
compressed accuracy is measured on the model loaded back from its .mzip bytes.

Rows are appended to a JSON-lines log as they finish, so a long run can be rendered at any
time (``--render``) and partial results committed.

    python benchmarks/recipes.py --part mnist5k --log runs.jsonl
    python benchmarks/recipes.py --part fashion --log runs.jsonl
    python benchmarks/recipes.py --part fixtures --log runs.jsonl
    python benchmarks/recipes.py --render runs.jsonl --out benchmarks/results/recipes.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import modelzip as mz
from modelzip.recipe import builtin_recipes
from modelzip.testing import user_models as um
from modelzip.train import Trainer

ZOO = ("lenet300", "lenet5")
FIXTURES = ("residual_cnn", "concat_net", "depthwise_cnn", "tabular_mlp")
#: Deep Compression's headline first, so the rows that matter most finish first.
FIRST = ("deep-compression", "default")


def recipe_order() -> list[str]:
    names = builtin_recipes()
    return [n for n in FIRST if n in names] + [n for n in names if n not in FIRST]


def _row(log: Path, **row: Any) -> None:
    with log.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def _compress(model: torch.nn.Module, data: Any, recipe: str, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = mz.compress(model, data, recipe, seed=seed, measure_latency=False)
    return {
        "baseline": round(res["baseline"]["accuracy"], 5),
        "compressed": round(res["compressed"]["accuracy"], 5),
        "delta_pp": round(100 * res["accuracy_delta"], 3),
        "ratio": res["ratio"],
        "bytes": res["compressed"]["bytes"],
        "seconds": round(time.perf_counter() - t0, 1),
        "notes": [s["notes"].get("budget") for s in res["stages"] if s["notes"].get("budget")],
    }


def run_zoo(
    data_name: str, seeds: list[int], log: Path, recipes: list[str], models: list[str]
) -> None:
    for model_name in models:
        for seed in seeds:
            data = mz.load_data(data_name, seed=seed)
            model = mz.load_model(f"zoo:{model_name}", data=data, seed=seed)
            for recipe in recipes:
                try:
                    out = _compress(model, data, recipe, seed)
                except mz.ModelzipError as exc:
                    out = {"error": str(exc)}
                _row(log, data=data_name, model=model_name, seed=seed, recipe=recipe, **out)


def run_fixtures(seeds: list[int], log: Path, recipes: list[str], models: list[str]) -> None:
    folder = Path(tempfile.mkdtemp())
    tab = mz.load_data(str(um.write_tabular_npz(folder / "breast_cancer.npz")))
    for name in models:
        for seed in seeds:
            data = tab if name == "tabular_mlp" else mz.load_data("digits", seed=seed)
            model = _trained_fixture(name, data, seed)
            for recipe in recipes:
                try:
                    out = _compress(model, data, recipe, seed)
                except mz.ModelzipError as exc:
                    out = {"error": str(exc)}
                _row(log, data=data.name, model=name, seed=seed, recipe=recipe, **out)


#: The ``default`` recipe before this work (one global ranking over every layer, no budget).
OLD_DEFAULT = """
stages:
  - {method: prune, sparsity: 0.8, scope: global}
  - {method: finetune, epochs: 8}
  - {method: quantize, bits: 8, granularity: channel}
"""


def run_budget(seeds: list[int], log: Path) -> None:
    """``default`` before and after: the old recipe, the role/size rules without the budget,
    and the shipped recipe (rules + max_drop 0.5), on the residual CNN and the tabular MLP."""
    from modelzip.recipe import Recipe

    shipped = Recipe.load("default")
    variants = {
        "old default (global 80%, no budget)": Recipe.from_yaml(OLD_DEFAULT),
        "role/size rules, no budget": Recipe(shipped.stages, "default-rules", ""),
        "shipped default (rules + max_drop 0.5)": shipped,
    }
    folder = Path(tempfile.mkdtemp())
    tab = mz.load_data(str(um.write_tabular_npz(folder / "breast_cancer.npz")))
    for name in ("residual_cnn", "tabular_mlp"):
        for seed in seeds:
            data = tab if name == "tabular_mlp" else mz.load_data("digits", seed=seed)
            model = _trained_fixture(name, data, seed)
            for label, recipe in variants.items():
                res = mz.compress(model, data, recipe, seed=seed, measure_latency=False)
                budget = res["stages"][-1]["notes"].get("budget", {})
                _row(
                    log,
                    part="budget",
                    model=name,
                    seed=seed,
                    variant=label,
                    delta_pp=round(100 * res["accuracy_delta"], 3),
                    ratio=res["ratio"],
                    summary=budget.get("summary"),
                    val_drops=[a["val_drop_pp"] for a in budget.get("attempts", [])],
                )


def _trained_fixture(name: str, data: Any, seed: int) -> torch.nn.Module:
    model = mz.load_model(f"{um.__file__}:{name}")
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()  # type: ignore[operator]
    Trainer(progress=False, seed=seed).fit(model, data.train, epochs=15, lr=2e-3)
    return model.eval()


def render_budget(log: Path) -> str:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    out = [
        "## The `default` recipe before and after (accuracy budget)",
        "",
        "Test-split accuracy change in points, compressed vs fp32 (mean ± sd over seeds), "
        "ratio, and what the budget did (val drop of each attempt, pp).",
        "",
        "| model | variant | seeds | accuracy change (pp) | ratio | budget |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["variant"]), []).append(r)
    for (model, variant), rs in groups.items():
        notes = "; ".join(f"seed {r['seed']}: {r['val_drops']}" for r in rs if r.get("summary"))
        out.append(
            f"| {model} | {variant} | {','.join(str(r['seed']) for r in rs)} | "
            f"{_fmt([r['delta_pp'] for r in rs])} | "
            f"{statistics.mean(r['ratio'] for r in rs):.1f}x | {notes or '-'} |"
        )
    return "\n".join(out) + "\n"


def _cpu() -> str:
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor()
    keep = ("Model name", "CPU(s):", "Thread(s) per core")
    lines = [" ".join(ln.split()) for ln in info.splitlines() if ln.strip().startswith(keep)]
    flags = next((ln for ln in info.splitlines() if ln.startswith("Flags")), "")
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f" {f}" in flags]
    return "; ".join(lines) + f"; SIMD flags: {', '.join(simd)}"


def _fmt(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:+.{digits}f}"
    return f"{statistics.mean(values):+.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def render(log: Path) -> str:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["model"], r["recipe"]), []).append(r)
    out = [
        "# Every built-in recipe on the zoo and on user-model fixtures",
        "",
        "`python benchmarks/recipes.py` (see its docstring). Ratio = fp32 `torch.save` bytes / "
        ".mzip bytes; accuracy change in points (pp) on the test split, compressed model loaded "
        "back from its bytes vs the fp32 model trained the same way. mnist5k: 1,000 test images "
        "(0.1 pp each), mean ± standard deviation over seeds 0-2; fashion-mnist: 10,000 test "
        "images, seed 0; fixtures (seeds 0-2): digits 360 test images, breast-cancer table "
        "114.",
        "",
        f"Machine of the latest rows: {_cpu()} (older rows: see the notes at the end). torch "
        "threads: 1 per process. The machine was shared with other jobs while this ran (2 "
        "cores, several agents): wall times are indicative only.",
        "",
        "| data | model | recipe | seeds | fp32 accuracy | accuracy change (pp) | ratio | .mzip "
        "bytes | s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    errors = []
    for (data, model, recipe), rs in sorted(groups.items()):
        ok = [r for r in rs if "error" not in r]
        errors += [f"{data} / {model} / {recipe}: {r['error']}" for r in rs if "error" in r]
        if not ok:
            out.append(f"| {data} | {model} | {recipe} | - | - | fails (below) | - | - | - |")
            continue
        seeds = ",".join(str(r["seed"]) for r in ok)
        base = statistics.mean(r["baseline"] for r in ok)
        ratio = [r["ratio"] for r in ok]
        ratio_txt = f"{statistics.mean(ratio):.1f}x" + (
            f" ± {statistics.stdev(ratio):.1f}" if len(ratio) > 1 else ""
        )
        out.append(
            f"| {data} | {model} | {recipe} | {seeds} | {100 * base:.2f}% | "
            f"{_fmt([r['delta_pp'] for r in ok])} | {ratio_txt} | "
            f"{int(statistics.mean(r['bytes'] for r in ok)):,} | "
            f"{statistics.mean(r['seconds'] for r in ok):.0f} |"
        )
    if errors:
        out += ["", "Runs that failed (the recipe does not fit the model yet):", ""]
        out += [f"- {e}" for e in dict.fromkeys(errors)]  # once, not once per seed
    return "\n".join(out) + "\n"


def render_deep_compression(log: Path) -> str:
    """Deep Compression's setting: its recipe on fashion-mnist against fp32 trained the same way."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    names = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}
    out = [
        "## Deep Compression's setting on fashion-mnist (10,000 test images)",
        "",
        "| model | fp32 (trained the same way) | deep-compression | accuracy change | ratio |",
        "|---|---|---|---|---|",
    ]
    for model, label in names.items():
        found = [
            r
            for r in rows
            if r["data"] == "fashion-mnist"
            and r["model"] == model
            and r["recipe"] == "deep-compression"
            and "error" not in r
        ]
        if not found:
            out.append(f"| {label} | - | not run | MISSED | MISSED |")
            continue
        r = found[-1]
        fp32_bytes = r["ratio"] * r["bytes"]
        out.append(
            f"| {label} | {100 * r['baseline']:.2f}% | {100 * r['compressed']:.2f}% | "
            f"{r['delta_pp']:+.2f} pp | {r['ratio']:.1f}x ({r['bytes']:,} bytes vs "
            f"{fp32_bytes / 1e6:.2f} MB) |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("mnist5k", "fashion", "fixtures", "budget"))
    p.add_argument("--log", type=Path, default=Path("recipes-runs.jsonl"))
    p.add_argument("--recipes", default=None, help="comma-separated (default: all built-in)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds")
    p.add_argument("--models", default=None, help="comma-separated (default: all of the part)")
    p.add_argument("--render", type=Path, default=None, help="render a log to markdown")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--budget-log", type=Path, default=None, help="render: the budget part's log")
    p.add_argument("--notes", type=Path, default=None, help="render: markdown appended at the end")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    if args.render is not None:
        text = render(args.render)
        if args.budget_log is not None:
            text += "\n" + render_budget(args.budget_log)
        text += "\n" + render_deep_compression(args.render)
        if args.notes is not None:
            text += "\n" + args.notes.read_text()
        if args.out:
            args.out.write_text(text)
        print(text)
        return
    recipes = args.recipes.split(",") if args.recipes else recipe_order()
    models = args.models.split(",") if args.models else None
    default_seeds = "0" if args.part == "fashion" else "0,1,2"
    seeds = [int(s) for s in (args.seeds or default_seeds).split(",")]
    if args.part == "mnist5k":
        run_zoo("mnist5k", seeds, args.log, recipes, models or list(ZOO))
    elif args.part == "fashion":
        run_zoo("fashion-mnist", seeds, args.log, recipes, models or list(ZOO))
    elif args.part == "fixtures":
        run_fixtures(seeds, args.log, recipes, models or list(FIXTURES))
    elif args.part == "budget":
        run_budget(seeds, args.log)
    else:
        p.error("give --part or --render")


if __name__ == "__main__":
    main()
