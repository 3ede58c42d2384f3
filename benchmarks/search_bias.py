"""How much of a search's pick is val luck: its candidates trained again, measured on test.

Runs one ``--at-least-recipe`` search (the code as it is) on mnist5k, keeps its study, then
trains every fully trained policy within the budget (smallest first, up to ``--limit``) again
with two other seeds, and evaluates all three runs of each on val and on test. The test split
is used here for the analysis only, never by the search. Output: one JSON line per policy in
``benchmarks/results/search_parts/bias_NET_sSEED.jsonl`` (the first line is the recipe's run).

Run: ``PYTHONPATH=src python benchmarks/search_bias.py lenet300 0 --trials 80 --epochs 12,3,2``
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import optuna
import torch

import modelzip as mz
from modelzip import api, pipeline
from modelzip.eval.evaluate import evaluate
from modelzip.recipe import Recipe
from modelzip.search.finish import _load_back
from modelzip.search.runner import STUDY_NAME, SearchConfig, search
from modelzip.search.space import Space

PARTS = Path(__file__).parent / "results" / "search_parts"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("net", choices=["lenet300", "lenet5"])
    ap.add_argument("seed", type=int)
    ap.add_argument("--trials", type=int, default=80)
    ap.add_argument("--epochs", default="12,3,2")
    ap.add_argument("--time-budget", type=float, default=10)
    ap.add_argument("--limit", type=int, default=25)
    ap.add_argument("--confirm", type=int, default=0, help="the search's own --confirm")
    ap.add_argument("--study", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    net, seed = args.net, args.seed
    folder = args.study or Path(tempfile.mkdtemp(prefix="mz-bias-"))
    data = mz.load_data("mnist5k", seed=seed)
    model = mz.load_model(f"zoo:{net}", data=data, seed=seed)
    reference = pipeline.frozen_copy(model)
    cfg = SearchConfig(
        max_drop=0.3,
        study=folder,
        progress=False,
        trials=args.trials,
        seed=seed,
        epochs=tuple(int(e) for e in args.epochs.split(",")),
        time_budget_min=args.time_budget,
        at_least_recipe=True,
        confirm=args.confirm,
    )
    res = search(model, data, cfg, model_spec=f"zoo:{net}")
    out = PARTS / f"bias_{net}_s{seed}.jsonl"
    log = out.open("w")
    rec = api.compress(
        model, data, Recipe.load("deep-compression"), seed=seed, measure_latency=False
    )
    head = {"kind": "recipe", "test": rec["compressed"]["accuracy"], "ratio": rec["ratio"]}
    log.write(json.dumps({**head, "floor": res["floor"], "target": res["target"]}) + "\n")
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{folder / 'study.db'}")
    space = Space.build(model, objective="bytes", schedule=cfg.schedule())

    def test_of(path: Path) -> float:
        deployed = _load_back(path, model)
        size = path.stat().st_size
        m = evaluate(
            deployed,
            data,
            split="test",
            file_bytes=size,
            measure_latency=False,
            reference=reference,
        )
        return float(m["accuracy"])

    done = [
        t
        for t in study.trials
        if t.state.name == "COMPLETE"
        and "bytes" in t.user_attrs
        and t.user_attrs["accuracy"] >= res["floor"] - 1e-9
    ]
    for t in sorted(done, key=lambda t: t.user_attrs["bytes"])[: args.limit]:
        row = {
            "kind": "candidate",
            "trial": t.number,
            "anchor": bool(t.user_attrs.get("anchor")),
            "bytes": t.user_attrs["bytes"],
            "ratio": t.user_attrs["ratio"],
            "val": [t.user_attrs["accuracy"]],
            "test": [test_of(folder / "trials" / f"trial-{t.number:05d}.mzip")],
        }
        for s in (seed + 1000, seed + 2000):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "t.mzip"
                recipe = space.recipe(t.params, fidelity=1.0)
                r = api.compress(
                    model,
                    data,
                    recipe,
                    out=path,
                    seed=s,
                    split="val",
                    measure_latency=False,
                    stage_metrics=False,
                )
                row["val"].append(r["compressed"]["accuracy"])
                row["test"].append(test_of(path))
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
