"""``search``: the smallest (or fastest) policy within an accuracy budget, resumable.

The record is an Optuna study in SQLite (``DIR/study.db``): kill the search (Ctrl-C or
SIGKILL) and run the same command again; it goes on from what is stored. A trial left
RUNNING by a killed process is marked FAIL and its policy queued again, so no finished trial
is lost and none is counted twice. ``trials`` counts finished trials (complete, or stopped
early by the pruner — Optuna's own convention); failed ones are retried and not counted.

Multi-fidelity: each trial first runs its recipe with the training shortened to
``low_fidelity`` of the epochs and reports that score; Optuna's successive-halving pruner
stops the ones not among the best third at that rung, and only the others are trained fully.

The score a trial reports (minimised) is ``log2(objective) + penalty * shortfall``, where
the shortfall is how many accuracy points the trial is below the floor (penalty 1 per point
at full fidelity, 0.3 at the short rung, where accuracy is still an underestimate); the floor
itself is also given to TPE as a constraint, and the final pick only ever takes a trial within it.

Robust pick: the val split is small (500 images on mnist5k: one image is 0.2 points), so the
smallest policy just at the floor is mostly the luckiest one on val. The score aims at the
floor plus ``margin`` points, and the pick takes the smallest trial at or above that target;
only when none reaches it does it fall back to the smallest one within the floor itself (which
still meets the budget). Then ``confirm`` (default 5): the candidates are trained again with
another seed and the pick is the first whose mean val accuracy over both runs still reaches
the target (see ``confirm``; ``confirm=0`` turns it off).

Seeding: trial 0 is the ``deep-compression`` recipe's own policy on this model, trained fully
(see ``anchor``), then two bolder steps from it and the sensitivity-analysis seeds; so the
search never ends worse than the recipe when the recipe itself meets the target.

``at_least_recipe``: the budget is relative to the uncompressed model, but the recipe's
fine-tuning can end *above* it (an under-trained baseline gains a point or more). With this
option the pick (and the score) also aim at the recipe trial's own val accuracy, so that the
chosen policy is smaller than the recipe at no less accuracy than the recipe, not only within
the budget.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from modelzip.errors import ConfigError
from modelzip.nn.split import split_packed_weights
from modelzip.search import engines
from modelzip.search.anchor import anchor_policies
from modelzip.search.finish import finish
from modelzip.search.progress import LiveDisplay, SearchStatus, time_left
from modelzip.search.seeds import seed_policies
from modelzip.search.space import OBJECTIVES, Schedule, Space
from modelzip.zoo.data import DataBundle

#: The exit code of ``modelzip search`` when no trial met the accuracy budget.
EXIT_MISSED_BUDGET = 3
STUDY_NAME = "modelzip-search"
PENALTY_PER_POINT = 1.0  # one point below the floor weighs like twice the bytes
#: After short training accuracy is an underestimate: the first rung ranks more by objective.
LOW_FIDELITY_PENALTY = 0.3


class SearchConfig(BaseModel):
    """Options of a search (see ``modelzip search --help``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_drop: float = Field(ge=0, le=100, description="accuracy points the result may lose")
    objective: str = "bytes"
    trials: int = Field(20, ge=1, le=100_000)
    time_budget_min: float | None = Field(None, gt=0)
    engine: str = "local"
    address: str | None = None
    workers: int = Field(2, ge=1, le=4096, description="ray: trials in flight at once")
    study: Path = Path("modelzip-search")
    seed: int = 0
    epochs: tuple[int, int, int] = (8, 2, 2)
    low_fidelity: float = Field(0.25, gt=0, le=1)
    sensitivity_seeds: bool = True
    anchor: bool = Field(True, description="trial 0: the deep-compression recipe's policy")
    margin: float = Field(
        0.2, ge=0, le=100, description="points above the floor the pick aims for (val noise)"
    )
    at_least_recipe: bool = Field(
        False, description="also aim at the val accuracy of trial 0 (the recipe's policy)"
    )
    confirm: int = Field(
        5, ge=0, le=1000, description="candidates trained again with another seed before the pick"
    )
    progress: bool = True

    def schedule(self) -> Schedule:
        return Schedule(*self.epochs)


def _score(
    metrics: dict[str, Any], objective: str, floor: float, penalty: float = PENALTY_PER_POINT
) -> float:
    value = metrics["bytes"] if objective == "bytes" else metrics["latency_ratio"]["bN"]
    shortfall = max(0.0, floor - metrics["accuracy"]) * 100
    return math.log2(max(value, 1e-9)) + penalty * shortfall


class _Lock:
    """One search process per study folder: a second one would mistake live trials for dead."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "search.lock"

    def __enter__(self) -> _Lock:
        if self.path.exists():
            try:
                pid = int(self.path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise ConfigError(
                    f"study {self.path.parent} is in use by process {pid}; wait for it, choose "
                    f"another --study folder, or delete {self.path} if {pid} is no search"
                )
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_study(folder: Path, setup: dict[str, Any], seed: int) -> optuna.Study:
    """Create or resume the study in ``folder``; refuse one made for another search."""
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(folder / 'study.db').resolve()}")
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, multivariate=True),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    )
    stored = study.user_attrs.get("setup")
    if stored is None:
        study.set_user_attr("setup", setup)
    elif stored != json.loads(json.dumps(setup)):
        diff = sorted(k for k in setup if stored.get(k) != json.loads(json.dumps(setup[k])))
        raise ConfigError(
            f"study {folder} was made for another search (differs in: {', '.join(diff)}); "
            "rerun with the same options or choose another --study folder"
        )
    return study


def recover(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a killed process FAIL and queue their policies again."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
    return len(stale)


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def search(
    model: nn.Module,
    data: DataBundle,
    cfg: SearchConfig,
    *,
    model_spec: str = "",
) -> dict[str, Any]:
    """Run (or resume) a search; returns the run record (also written to DIR/search.json).

    Example:
        >>> cfg = SearchConfig(max_drop=0.3, trials=20, study=Path("runs/lenet"))  # doctest: +SKIP
        >>> search(model, data, cfg)["best"]["ratio"]                              # doctest: +SKIP
    """
    from modelzip import pipeline
    from modelzip.eval.evaluate import evaluate

    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {cfg.objective!r}; valid: {', '.join(OBJECTIVES)}")
    runner = engines.make(cfg.engine, address=cfg.address, workers=cfg.workers)
    folder = cfg.study
    # the space names the layers compress will find (attention / recurrent matrices as layers
    # of their own); trials get the model as given, as a rerun of the emitted recipe does
    as_compressed = copy.deepcopy(model)
    split_packed_weights(as_compressed)
    space = Space.build(as_compressed, objective=cfg.objective, schedule=cfg.schedule())
    reference = pipeline.frozen_copy(model)
    base_val = evaluate(model, data, split="val", measure_latency=False, reference=reference)
    floor = base_val["accuracy"] - cfg.max_drop / 100
    setup = {
        "model": model_spec,
        "data": data.name,
        "max_drop": cfg.max_drop,
        "seed": cfg.seed,
        "low_fidelity": cfg.low_fidelity,
        "margin": cfg.margin,
        "at_least_recipe": cfg.at_least_recipe,
        "space": space.signature(),
    }
    t_start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    with _Lock(folder):
        study = open_study(folder, setup, cfg.seed)
        retried = recover(study)
        if not study.trials:
            anchors = anchor_policies(space, as_compressed, data) if cfg.anchor else []
            seeds = seed_policies(space, as_compressed, data, cfg) if cfg.sensitivity_seeds else []
            queue = _interleave(anchors, seeds) + [space.defaults()]
            for i, policy in enumerate(queue[: max(1, min(6, cfg.trials))]):
                attrs: dict[str, Any] = {"seeded": True}
                if i == 0 and anchors:
                    attrs["anchor"] = "deep-compression"
                study.enqueue_trial(policy, user_attrs=attrs)
        target = floor + cfg.margin / 100
        state = _Loop(study, space, cfg, target, data.name, folder, t_start)
        state.budget_floor = floor
        state.floor = max(target, anchor_accuracy(study, cfg))  # a resumed study knows it
        with LiveDisplay(f"modelzip search ({cfg.objective})", enabled=cfg.progress) as live:
            state.on_change = live.update
            interrupted = False
            try:
                runner.run(model, data, state)
            except KeyboardInterrupt:
                interrupted = True
                state.abandon()
        target = max(target, anchor_accuracy(study, cfg))
        result = finish(
            study,
            space,
            model,
            data,
            cfg,
            floor=floor,
            target=target,
            base_val=base_val,
            folder=folder,
        )
        result["retried_stale_trials"] = retried
        result["interrupted"] = interrupted
        result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        if interrupted:
            raise KeyboardInterrupt
        return result


class _Loop:
    """The driver's side of the search: ask, hand out recipes, tell, keep the display."""

    def __init__(
        self,
        study: optuna.Study,
        space: Space,
        cfg: SearchConfig,
        floor: float,
        data_name: str,
        folder: Path,
        t_start: float,
    ) -> None:
        self.study, self.space, self.cfg, self.floor = study, space, cfg, floor
        self.data_name, self.folder, self.t_start = data_name, folder, t_start
        self.running: dict[int, Trial] = {}
        self.durations: list[float] = []
        self.failures = 0
        self.on_change: Callable[[SearchStatus], None] | None = None
        self.elapsed_before = float(study.user_attrs.get("elapsed_s", 0.0))
        self.budget_floor = floor
        (folder / "trials").mkdir(exist_ok=True)

    # what the engines call -----------------------------------------------------------------

    def want_more(self) -> bool:
        """Whether another trial should start (count and time budget)."""
        if len(finished(self.study)) + len(self.running) >= self.cfg.trials:
            return False
        if self.failures >= max(5, self.cfg.trials):
            return False  # every policy fails: stop, the errors are in the record
        if self.cfg.time_budget_min is not None:
            return self.elapsed() < 60 * self.cfg.time_budget_min
        return True

    def start(self) -> tuple[Trial, dict[str, Any], float]:
        """A new trial: its first recipe (short training unless fidelity is 1) and fidelity."""
        trial = self.study.ask()
        policy = self.space.suggest(trial)
        trial.set_user_attr("started", time.time())
        self.running[trial.number] = trial
        # the recipe's own policy is the reference to beat: trained fully, never pruned early
        fidelity = 1.0 if trial.user_attrs.get("anchor") else self.cfg.low_fidelity
        recipe = self.space.recipe(policy, fidelity=fidelity)
        if fidelity < 1 and recipe == self.space.recipe(policy, fidelity=1.0):
            fidelity = 1.0  # the schedule is too short to shorten: one full run
        self._notify()
        return trial, recipe.to_dict(), fidelity

    def report(self, trial: Trial, fidelity: float, metrics: dict[str, Any]) -> dict | None:
        """Record a result; returns the full-fidelity recipe to run next, or None when the
        trial is finished (complete, or pruned at the short rung)."""
        penalty = LOW_FIDELITY_PENALTY if fidelity < 1 else PENALTY_PER_POINT
        value = _score(metrics, self.cfg.objective, self.floor, penalty)
        shortfall = round(max(0.0, self.floor - metrics["accuracy"]) * 100, 4)
        tag = "low" if fidelity < 1 else "full"
        trial.set_user_attr(f"{tag}_metrics", metrics)
        if fidelity < 1:
            trial.report(value, step=1)
            if trial.should_prune():
                trial.set_user_attr("shortfall", max(shortfall, 1e-6))
                trial.set_constraint("accuracy_floor", max(shortfall, 1e-6))  # <= 0: feasible
                self._tell(trial, state=TrialState.PRUNED)
                return None
            return self.space.recipe(trial.params, fidelity=1.0).to_dict()
        trial.set_user_attr("shortfall", shortfall)
        trial.set_constraint("accuracy_floor", shortfall)
        if trial.user_attrs.get("anchor") and self.cfg.at_least_recipe:
            self.floor = max(self.floor, metrics["accuracy"])  # later trials aim at the recipe
        for k in ("bytes", "accuracy", "ratio"):
            trial.set_user_attr(k, metrics[k])
        if "latency_ratio" in metrics:
            trial.set_user_attr("latency_ratio", metrics["latency_ratio"])
        self._tell(trial, value=value)
        return None

    def save_file(self, trial: Trial, blob: bytes | None) -> None:
        if blob is not None:
            from modelzip.codec.format import write_atomic

            write_atomic(self.folder / "trials" / f"trial-{trial.number:05d}.mzip", blob)

    def fail(self, trial: Trial, why: str) -> None:
        trial.set_user_attr("error", why[:500])
        self.failures += 1
        self._tell(trial, state=TrialState.FAIL)

    def abandon(self) -> None:
        """Ctrl-C: the trials in flight are failed and queued again for the next run."""
        for trial in list(self.running.values()):
            self._tell(trial, state=TrialState.FAIL)
            self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})

    def confirm(
        self, run: Callable[[list[dict[str, Any]], int], list[dict[str, Any] | None]], batch: int
    ) -> None:
        """After the last trial: the confirmation runs (``confirm``), through ``run`` (full
        recipes and a seed in, val metrics or None out), stored in the study as they come."""
        if self.cfg.confirm <= 0:
            return
        from modelzip.search.confirm import confirm_seed, run_confirmations

        seed = confirm_seed(self.cfg.seed)

        def go(numbers: list[int]) -> list[dict[str, Any] | None]:
            trials = self.study.get_trials(deepcopy=False)
            names = ", ".join(f"#{n}" for n in numbers)
            self._notify(last=f"confirming {names} with seed {seed}")
            recipes = [self.space.recipe(trials[n].params, fidelity=1.0).to_dict() for n in numbers]
            return run(recipes, seed)

        run_confirmations(self.study, go, **self.confirm_options(batch))
        self.study.set_user_attr("elapsed_s", round(self.elapsed(), 1))

    def confirm_options(self, batch: int = 1) -> dict[str, Any]:
        return confirm_options(self.cfg, self.budget_floor, batch)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    # bookkeeping -----------------------------------------------------------------------------

    def _tell(
        self, trial: Trial, *, value: float | None = None, state: TrialState | None = None
    ) -> None:
        started = float(trial.user_attrs.get("started", time.time()))
        self.durations.append(time.time() - started)
        if value is not None:
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=state)
        self.running.pop(trial.number, None)
        self.study.set_user_attr("elapsed_s", round(self.elapsed(), 1))
        self._notify(last=f"#{trial.number}: {self._describe(trial.number)}")

    def _describe(self, number: int) -> str:
        t = self.study.trials[number]
        m = t.user_attrs.get("full_metrics") or t.user_attrs.get("low_metrics") or {}
        if not m:
            return t.state.name.lower()
        what = (
            f"{m['bytes']:,} B"
            if self.cfg.objective == "bytes"
            else (f"latency x{m['latency_ratio']['bN']:.2f}")
        )
        return f"{t.state.name.lower()}, {what}, val {m['accuracy']:.2%}"

    def _notify(self, last: str = "") -> None:
        if self.on_change is None:
            return
        done = finished(self.study)
        points = [t for t in done if t.state == TrialState.COMPLETE]
        ok = [t for t in points if t.user_attrs.get("shortfall", 1) <= 0]
        best = "none within the budget yet"
        if ok:
            key = "bytes" if self.cfg.objective == "bytes" else "latency_ratio"
            b = min(ok, key=lambda t: _objective_of(t, key))
            best = (
                f"#{b.number}: {b.user_attrs['bytes']:,} B ({b.user_attrs['ratio']:.1f}x), "
                f"val {b.user_attrs['accuracy']:.2%}"
            )
        from modelzip.search.finish import front_of

        mean = sum(self.durations) / len(self.durations) if self.durations else None
        budget = self.cfg.time_budget_min
        eta = time_left(
            mean or None,
            self.cfg.trials - len(done),
            workers=self.cfg.workers if self.cfg.engine == "ray" else 1,
            elapsed_s=self.elapsed(),
            budget_s=None if budget is None else 60 * budget,
        )
        self.on_change(
            SearchStatus(
                done=len(done),
                total=self.cfg.trials,
                pruned=len(done) - len(points),
                running=len(self.running),
                best=best,
                front=len(front_of(points, self.cfg.objective)),
                elapsed=self.elapsed(),
                eta=eta,
                last=last,
            )
        )


def confirm_options(cfg: SearchConfig, floor: float, batch: int = 1) -> dict[str, Any]:
    """The keyword arguments of ``confirm.decide`` for this search."""
    return {
        "floor": floor,
        "margin": cfg.margin,
        "confirm": cfg.confirm,
        "seed": cfg.seed,
        "at_least_recipe": cfg.at_least_recipe,
        "objective": cfg.objective,
        "batch": batch,
    }


def anchor_accuracy(study: optuna.Study, cfg: SearchConfig) -> float:
    """The val accuracy of the recipe's trial when the pick must reach it (else 0)."""
    if not cfg.at_least_recipe:
        return 0.0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("anchor") and "accuracy" in t.user_attrs:
            return float(t.user_attrs["accuracy"])
    return 0.0


def _interleave(first: list[Any], second: list[Any]) -> list[Any]:
    out: list[Any] = []
    for i in range(max(len(first), len(second))):
        out += first[i : i + 1] + second[i : i + 1]
    return out


def _objective_of(t: FrozenTrial, key: str) -> float:
    v = t.user_attrs[key]
    return float(v["bN"] if isinstance(v, dict) else v)


__all__ = ["EXIT_MISSED_BUDGET", "SearchConfig", "search"]
