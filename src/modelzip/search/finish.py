"""The end of a search: pick the policy, write its recipe and .mzip, test it once, report.

Files in the study folder: ``best.yaml`` / ``best.mzip`` (or ``closest.yaml`` /
``closest.mzip`` when no trial met the budget), ``search.json`` (the run record, with the
Pareto front under ``pareto``), ``pareto.png`` / ``pareto.svg``, ``trials/`` (each fully
trained trial's .mzip) and ``study.db`` (the Optuna record the search resumes from).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from modelzip.codec.format import write_atomic
from modelzip.search.confirm import SEED_OFFSET
from modelzip.search.output import pareto_front, pick, plot_front
from modelzip.search.space import Space
from modelzip.zoo.data import DataBundle

if TYPE_CHECKING:
    from modelzip.search.runner import SearchConfig


def points_of(trials: list[FrozenTrial], objective: str) -> list[dict[str, Any]]:
    """One trade-off point per fully trained trial (val-split accuracy)."""
    out = []
    for t in trials:
        if t.state != TrialState.COMPLETE or "bytes" not in t.user_attrs:
            continue
        a = t.user_attrs
        lat = a.get("latency_ratio")
        if objective != "bytes" and lat is None:
            continue
        point = {
            "trial": t.number,
            "number": t.number,
            "objective": lat["bN"] if objective != "bytes" and lat else a["bytes"],
            "bytes": a["bytes"],
            "ratio": a["ratio"],
            "accuracy": a["accuracy"],
            "split": "val",
        }
        if lat is not None:
            point["latency_ratio"] = lat
        out.append(point)
    return out


def front_of(trials: list[FrozenTrial], objective: str) -> list[dict[str, Any]]:
    return pareto_front(points_of(trials, objective))


def finish(
    study: optuna.Study,
    space: Space,
    model: nn.Module,
    data: DataBundle,
    cfg: SearchConfig,
    *,
    floor: float,
    target: float | None = None,
    base_val: dict[str, Any],
    folder: Path,
) -> dict[str, Any]:
    """Pick, write the files, evaluate the pick on the test split (once per pick), report."""
    from modelzip import pipeline
    from modelzip.eval.evaluate import evaluate
    from modelzip.eval.size import torch_save_bytes

    trials = study.get_trials(deepcopy=False)
    points = points_of(trials, cfg.objective)
    front = pareto_front(points)
    confirmation = None
    if cfg.confirm > 0:
        from modelzip.search.confirm import decide
        from modelzip.search.runner import confirm_options

        confirmation, missing = decide(study, **confirm_options(cfg, floor))
        confirmation["complete"] = not missing  # an interrupted search may not have run them
        chosen, met = pick_confirmed(points, floor, confirmation, target=target)
        target = confirmation["target"] if confirmation["target"] is not None else target
    else:
        chosen, met = pick(points, floor, target=target)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    counts["finished"] = counts["complete"] + counts["pruned"]
    counts["requested"] = cfg.trials
    latency = cfg.objective == "latency"
    reference = pipeline.frozen_copy(model)
    base_test = study.user_attrs.get("baseline_test")
    if base_test is None:
        base_test = evaluate(
            model,
            data,
            split="test",
            file_bytes=torch_save_bytes(model),
            measure_latency=latency,
            reference=reference,
        )
        study.set_user_attr("baseline_test", json.loads(json.dumps(base_test)))
    result: dict[str, Any] = {
        "model": study.user_attrs["setup"]["model"],
        "data": data.name,
        "objective": cfg.objective,
        # what "accuracy" means in every point: top-1, or for embedding models the mean
        # cosine similarity to the original model's embeddings (floor 1 - max_drop/100)
        "metric": data.task.metric,
        "max_drop": cfg.max_drop,
        "seed": cfg.seed,
        "baseline": {
            "val_accuracy": base_val["accuracy"],
            "test_accuracy": base_test["accuracy"],
            "bytes": base_test["bytes"],
            **({"latency_ms": base_test["latency_ms"]} if latency else {}),
        },
        "floor": round(floor, 6),
        "target": round(floor if target is None else target, 6),
        "trials": counts,
        "pareto": front,
        "points": points,
        "met_budget": met,
        "study": str(folder),
    }
    if confirmation is not None:
        result["confirmation"] = confirmation
    for old in ("best", "closest"):  # a rerun may turn a miss into a hit
        for ext in ("yaml", "mzip"):
            (folder / f"{old}.{ext}").unlink(missing_ok=True)
    if chosen is None:
        result["message"] = "no trial finished its full training: nothing to choose from"
        _write_json(folder / "search.json", result)
        return result
    label = "best" if met else "closest"
    number = chosen["trial"]
    recipe = space.recipe(study.trials[number].params, fidelity=1.0)
    shortfall = round(100 * (floor - chosen["accuracy"]), 3)
    name = data.task.label  # accuracy, cosine mean, R^2
    verdict = (
        f"meets the budget: val {name} {chosen['accuracy']:.2%} >= floor {floor:.2%}"
        if met
        else f"MISSES the budget by {shortfall} points: val {name} {chosen['accuracy']:.2%} "
        f"< floor {floor:.2%}"
    )
    confirmed = _confirmation_of(confirmation, number)
    if confirmation is not None:
        verdict += f"; {confirmed['note']}"
    header = (
        f"# modelzip search, trial {number}: {chosen['bytes']:,} bytes ({chosen['ratio']}x), "
        f"{verdict}.\n# Rerun: modelzip compress {result['model'] or 'MODEL'} --data {data.name}"
        f" --recipe {label}.yaml --seed {cfg.seed} -o out.mzip\n"
    )
    write_atomic(folder / f"{label}.yaml", (header + recipe.to_yaml()).encode())
    src = folder / "trials" / f"trial-{number:05d}.mzip"
    blob = src.read_bytes()
    shutil.copyfile(src, folder / f"{label}.mzip")
    test_key = f"test:{number}"
    test = study.user_attrs.get(test_key)
    if test is None:  # the one evaluation of the chosen policy on the test split
        deployed = _load_back(folder / f"{label}.mzip", model)
        test = evaluate(
            deployed,
            data,
            split="test",
            file_bytes=len(blob),
            measure_latency=latency,
            reference=reference,
        )
        test = json.loads(json.dumps(test))
        study.set_user_attr(test_key, test)
    pick_record = {
        **{k: v for k, v in chosen.items() if k != "number"},
        "val_accuracy": chosen["accuracy"],
        "test_accuracy": test["accuracy"],
        "test_drop_points": round(100 * (base_test["accuracy"] - test["accuracy"]), 3),
        "recipe": str(folder / f"{label}.yaml"),
        "mzip": str(folder / f"{label}.mzip"),
        "met_budget": met,
        "evaluated_on_test": "once, after the search chose it on val",
    }
    if confirmation is not None:
        pick_record["confirmed"] = confirmed["confirmed"]
        pick_record["confirm_val_accuracy"] = confirmed["confirm_val"]
    if latency:
        pick_record["test_latency_ms"] = test["latency_ms"]
        b, c = base_test["latency_ms"], test["latency_ms"]
        pick_record["test_latency_ratio"] = {
            "b1": round(c["b1"] / b["b1"], 4),
            "bN": round(c["bN"] / b["bN"], 4),
        }
    result[label] = pick_record
    result["message"] = (
        f"best policy (trial {number}) {verdict}; test {name} {test['accuracy']:.2%} "
        f"(baseline {base_test['accuracy']:.2%})"
        if met
        else f"no trial met the budget (val {name} >= {floor:.2%}); the closest policy, "
        f"trial {number}, {verdict}; it is in {label}.yaml / {label}.mzip"
    )
    result["plots"] = plot_front(
        points,
        front,
        floor=floor,
        baseline=base_val["accuracy"],
        objective=cfg.objective,
        folder=folder,
        best=chosen,
    )
    _write_json(folder / "search.json", result)
    return result


def pick_confirmed(
    points: list[dict[str, Any]],
    floor: float,
    confirmation: dict[str, Any],
    *,
    target: float | None = None,
) -> tuple[dict[str, Any] | None, bool]:
    """The pick after confirmation: the confirmed candidate; else the recipe's trial when it
    is the reference; else the plain pick among the trials no confirmation refuted."""
    eps = 1e-9
    by_number = {p["trial"]: p for p in points}
    for number in (confirmation["chosen"], (confirmation["reference"] or {}).get("trial")):
        p = by_number.get(number) if number is not None else None
        if p is not None and p["accuracy"] >= floor - eps:
            return p, True
    refuted = {t["trial"] for t in confirmation["tried"] if not t["confirmed"]}
    rest = [p for p in points if p["trial"] not in refuted] or points
    aim = confirmation["target"] if confirmation["target"] is not None else target
    return pick(rest, floor, target=aim)


def _confirmation_of(confirmation: dict[str, Any] | None, number: int) -> dict[str, Any]:
    """What the confirmation stage says of the chosen trial, for the YAML header and JSON."""
    if confirmation is None:
        return {"confirmed": None, "confirm_val": None, "note": ""}
    seed = confirmation["seed"]
    ref = confirmation["reference"] or {}
    tried = {t["trial"]: t for t in confirmation["tried"]}
    if number in tried and tried[number]["confirmed"]:
        t = tried[number]
        note = (
            f"confirmed by a second run (seed {seed}): val {t['confirm_val']:.2%}, mean "
            f"{t['mean']:.2%} >= target {confirmation['target']:.2%}"
        )
        return {"confirmed": True, "confirm_val": t["confirm_val"], "note": note}
    if ref.get("trial") == number:
        note = (
            f"the recipe's own policy: none of the {len(tried)} smaller candidate(s) tried "
            f"was confirmed by a second run (seed {seed})"
            if tried
            else "the recipe's own policy: no smaller trial reached the target "
            f"{confirmation['target']:.2%} (the mean of its runs with seeds "
            f"{seed - SEED_OFFSET}, {seed})"
        )
        return {"confirmed": False, "confirm_val": ref.get("confirm_val"), "note": note}
    if not confirmation.get("complete", True):
        note = "NOT confirmed: the search was stopped before its confirmation runs"
    else:
        note = f"NOT confirmed: no candidate was confirmed by a second run (seed {seed})"
    return {"confirmed": False, "confirm_val": None, "note": note}


def _load_back(path: Path, model: nn.Module) -> nn.Module:
    """The chosen file as a user loads it: a user model into a copy of its architecture."""
    import copy

    from modelzip import api
    from modelzip.source import source_of

    source = source_of(model)
    skeleton = None if source is not None and source.buildable else copy.deepcopy(model)
    return api.load(path, model=skeleton)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


__all__ = ["finish", "front_of", "pick_confirmed", "points_of"]
