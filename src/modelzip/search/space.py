"""The search space: which knobs a policy turns per layer (or per group), and the recipe it is.

A *policy* is a flat dict of Optuna parameter values (``density:fc1``, ``bits:fc1``,
``quantizer:fc1``, ``rank:fc1``, ``decode_budget``, ...). ``Space.recipe(policy, fidelity)``
turns it into an ordinary :class:`~modelzip.recipe.Recipe` made of the registered methods'
recipe fields (``lowrank``, ``prune``, ``finetune``, ``cluster``, ``quantize``, ``encode``,
and ``gptq`` when a method of that name is registered) — the search knows nothing about how
a method works, only what a recipe may say.

Rules from the recipes (first and last layers are the sensitive ones): the first and the last
weight layer keep at least 4 bits (3 when that one layer holds a quarter of the model's
weights, as LeNet-300-100's first layer does), are never factorized, and the last layer keeps
at least 10% of its weights and all of its outputs (it cannot lose classes).

Where the bytes are: a *big* unit (at least 10% of the weights) is searched only at 2-6 bits,
and a big single layer with at most 30% of its weights kept; the few small layers keep the
whole range (their bytes hardly matter, their accuracy does).

Large models are searched per *group*: layers whose names differ only in a block index
(``encoder.layer.3.attention.self.query`` -> ``encoder.layer.*.attention.self.query``) share
one set of knobs, selected in the recipe by that glob.

Example:
    >>> space = Space.build(model, objective="bytes")          # doctest: +SKIP
    >>> space.recipe(space.defaults(), fidelity=1.0).to_yaml()  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, cast

import optuna
import torch
from torch import nn

from modelzip.errors import ConfigError
from modelzip.recipe import Recipe
from modelzip.registry import methods
from modelzip.targets import weight_layers

OBJECTIVES = ("bytes", "latency")
#: Above this many weight layers, layers that differ only in a block index share their knobs.
GROUP_ABOVE = 12
#: Decode budgets (ms) the encode stage may spend on the slower entropy coders.
DECODE_BUDGETS = ("0", "25", "unlimited")
RANK_FRACTIONS = ("none", "0.5", "0.25", "0.125")
#: A unit with at least this share of the model's weights is a big one (see the module doc).
BIG_SHARE = 0.1
#: A first or last layer this big may go down to 3 bits.
HUGE_SHARE = 0.25
BIG_MAX_DENSITY = 0.3
#: Learning rates of the gradual pruning stage. Why a knob: the bolder a policy, the more a
#: higher rate recovers while the masks grow (fashion-mnist, 3 seeds, test accuracy against the
#: deep-compression recipe's at 1e-3: LeNet-300-100 at 70x -0.55 points at 1e-3, -0.22 at
#: 3e-3; LeNet-5 at 81x -0.19 at 1e-3, -0.03 at 3e-3); the recipe's own policy keeps 1e-3.
PRUNE_LRS = ("0.001", "0.003")


@dataclass(frozen=True)
class Schedule:
    """Training epochs of a full-fidelity trial: gradual pruning, recovery, after quantizing."""

    prune: int = 8
    recover: int = 2
    polish: int = 2
    lr: float = 1e-4

    def scaled(self, fidelity: float) -> Schedule:
        """The same schedule shortened to ``fidelity`` (0..1] of its epochs (at least one)."""
        if fidelity >= 1.0:
            return self

        def cut(n: int) -> int:
            return max(1, math.ceil(n * fidelity)) if n else 0

        return Schedule(cut(self.prune), cut(self.recover), cut(self.polish), self.lr)


@dataclass(frozen=True)
class Unit:
    """One searched unit: a layer, or a group of layers sharing knobs (``pattern``)."""

    key: str  # parameter suffix, e.g. "fc1" or "encoder.layer.*.output.dense"
    pattern: str  # how the recipe selects it
    members: tuple[str, ...]
    params: int
    role: str  # "first" | "last" | "hidden"
    linear: bool
    min_dim: int
    out_channels: int
    share: float = 0.0  # of all searched weights


@dataclass
class Space:
    """The knobs of one model for one objective."""

    units: list[Unit]
    objective: str = "bytes"
    schedule: Schedule = field(default_factory=Schedule)
    quantizers: tuple[str, ...] = ("kmeans", "uniform")

    @classmethod
    def build(
        cls, model: nn.Module, *, objective: str = "bytes", schedule: Schedule | None = None
    ) -> Space:
        """The space for ``model``: one unit per weight layer (per group past 12 layers)."""
        if objective not in OBJECTIVES:
            raise ConfigError(
                f"unknown objective {objective!r}; valid objectives: {', '.join(OBJECTIVES)}"
            )
        layers = weight_layers(model)
        if not layers:
            raise ConfigError("the model has no Linear/Conv layers to compress")
        names = list(layers)
        keyed: dict[str, list[str]] = {}
        for name in names:
            key = re.sub(r"(^|\.)\d+(\.|$)", r"\1*\2", name) if len(names) > GROUP_ABOVE else name
            keyed.setdefault(key, []).append(name)
        units = []
        total = sum(cast(torch.Tensor, m.weight).numel() for m in layers.values())
        for i, (key, members) in enumerate(keyed.items()):
            ws = [cast(torch.Tensor, layers[m].weight) for m in members]
            role = "first" if names[0] in members else "last" if names[-1] in members else "hidden"
            if i == 0:
                role = "first"
            units.append(
                Unit(
                    key=key,
                    pattern=key,
                    members=tuple(members),
                    params=sum(w.numel() for w in ws),
                    role=role,
                    linear=all(isinstance(layers[m], nn.Linear) for m in members),
                    min_dim=min(min(w.shape[0], w[0].numel()) for w in ws),
                    out_channels=min(w.shape[0] for w in ws),
                    share=sum(w.numel() for w in ws) / max(1, total),
                )
            )
        return cls(units, objective, schedule or Schedule(), _quantizers())

    # -- the knobs -------------------------------------------------------------------------

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask ``trial`` for one value of every knob; returns the policy."""
        for unit in self.units:
            if self.objective == "latency":
                if self.channel_prunable(unit):
                    trial.suggest_float(f"channels:{unit.key}", 0.0, 0.8, step=0.05)
                continue
            # the kept fraction, log-uniform: as much search between 1% and 10% kept as
            # between 10% and 100% (that is where the bytes are won)
            trial.suggest_float(
                f"density:{unit.key}", self.min_density(unit), self.max_density(unit), log=True
            )
            trial.suggest_int(f"bits:{unit.key}", *self.bits_range(unit))
            trial.suggest_categorical(f"quantizer:{unit.key}", self.quantizers)
            trial.suggest_categorical(f"rank:{unit.key}", self.rank_choices(unit))
        if self.objective == "latency":
            trial.suggest_categorical("int8", (False, True))
        else:
            trial.suggest_categorical("decode_budget", DECODE_BUDGETS)
            if self.schedule.prune:  # a learning rate only for pruning while training
                trial.suggest_categorical("prune_lr", PRUNE_LRS)
        return dict(trial.params)

    @staticmethod
    def min_density(unit: Unit) -> float:
        """At least 1% of a layer's weights stay, 10% of the last layer's."""
        return 0.1 if unit.role == "last" else 0.01

    @staticmethod
    def max_density(unit: Unit) -> float:
        """A big layer keeps at most 30% of its weights (that is where the bytes are); groups
        of a large model (transformer blocks) keep the whole range."""
        big = unit.share >= BIG_SHARE and len(unit.members) == 1
        return BIG_MAX_DENSITY if big else 1.0

    @staticmethod
    def bits_range(unit: Unit) -> tuple[int, int]:
        """Bits a unit may get: first/last layers at least 4 (3 if huge), big units at most 6."""
        low = 2 if unit.role == "hidden" else 3 if unit.share >= HUGE_SHARE else 4
        return low, 6 if unit.share >= BIG_SHARE else 8

    @staticmethod
    def channel_prunable(unit: Unit) -> bool:
        """The last layer keeps its outputs (the classes); tiny layers are left alone."""
        return unit.role != "last" and unit.out_channels >= 4

    def rank_choices(self, unit: Unit) -> tuple[str, ...]:
        """Rank fractions worth trying: only hidden Linear layers whose factors are smaller."""
        if unit.role != "hidden" or not unit.linear or unit.min_dim < 16:
            return ("none",)
        return RANK_FRACTIONS

    def defaults(self) -> dict[str, Any]:
        """A plain policy (90% sparse, 4-bit k-means; half the channels for latency)."""
        return self.seed_policy(dict.fromkeys((u.key for u in self.units), 0.9), bits=4)

    def seed_policy(
        self,
        sparsity: dict[str, float],
        *,
        bits: int | dict[str, int] = 4,
        budget: str = "unlimited",
        prune_lr: str = PRUNE_LRS[0],
    ) -> dict[str, Any]:
        """A full policy from per-unit sparsities and bits (clipped to each unit's range)."""
        policy: dict[str, Any] = {}
        for u in self.units:
            lo, hi = self.bits_range(u)
            b = bits.get(u.key, 4) if isinstance(bits, dict) else bits
            s = float(sparsity.get(u.key, 0.9))
            if self.objective == "latency":
                if self.channel_prunable(u):
                    policy[f"channels:{u.key}"] = _grid(min(s, 0.8), 0.05)
                continue
            density = min(self.max_density(u), max(self.min_density(u), 1.0 - s))
            policy[f"density:{u.key}"] = round(density, 4)
            policy[f"bits:{u.key}"] = min(hi, max(lo, int(b)))
            policy[f"quantizer:{u.key}"] = "kmeans"
            policy[f"rank:{u.key}"] = "none"
        if self.objective == "latency":
            policy["int8"] = False
        else:
            policy["decode_budget"] = budget
            if self.schedule.prune:
                policy["prune_lr"] = prune_lr
        return policy

    # -- policy -> recipe ------------------------------------------------------------------

    def recipe(self, policy: dict[str, Any], *, fidelity: float = 1.0, name: str = "") -> Recipe:
        """The recipe a policy stands for, its training shortened to ``fidelity``."""
        sched = self.schedule.scaled(fidelity)
        stages = (
            self._latency_stages(policy, sched)
            if self.objective == "latency"
            else self._bytes_stages(policy, sched)
        )
        return Recipe.from_dict(
            {
                "name": name or "searched",
                "description": f"found by modelzip search (objective {self.objective})",
                "stages": stages,
            },
            where="searched policy",
        )

    def _bytes_stages(self, policy: dict[str, Any], sched: Schedule) -> list[dict[str, Any]]:
        stages: list[dict[str, Any]] = []
        ranks: dict[str, float] = {}
        select: dict[str, str] = {}
        for u in self.units:
            frac = str(policy.get(f"rank:{u.key}", "none"))
            if frac != "none" and frac in self.rank_choices(u):
                ranks[u.key] = float(frac)
            # a factorized layer's two factors are selected by glob, its own name is gone
            select[u.key] = f"{u.pattern}.*" if u.key in ranks else u.pattern
        if ranks:
            rank_map = {
                u.pattern: max(1, int(u.min_dim * ranks[u.key]))
                for u in self.units
                if u.key in ranks
            }
            stages.append({"method": "lowrank", "rank": rank_map})
        # GPTQ must be a layer's first weight constraint (no pruning mask before it): a unit
        # quantized with GPTQ keeps all its weights
        gptq = {u.key for u in self.units if policy.get(f"quantizer:{u.key}") == "gptq"}
        sparsity = {
            select[u.key]: round(1.0 - float(policy[f"density:{u.key}"]), 4)
            for u in self.units
            if u.key not in gptq
        }
        sparsity = {k: v for k, v in sparsity.items() if v > 0}
        if sparsity:
            prune: dict[str, Any] = {"method": "prune", "sparsity": sparsity, "scope": "layer"}
            if sched.prune:  # reached gradually while training; else one shot
                lr = float(policy.get("prune_lr", PRUNE_LRS[0]))
                prune.update(schedule="gradual", epochs=sched.prune, lr=lr)
            stages.append(prune)
        if sched.recover:
            stages.append({"method": "finetune", "epochs": sched.recover, "lr": sched.lr})
        by_quantizer: dict[str, dict[str, int]] = {}
        for u in self.units:
            q = str(policy[f"quantizer:{u.key}"])
            by_quantizer.setdefault(q, {})[select[u.key]] = int(policy[f"bits:{u.key}"])
        if "kmeans" in by_quantizer:
            bits = by_quantizer["kmeans"]
            stages.append(
                {"method": "cluster", "bits": bits, "layers": list(bits), "include_bias": True}
            )
        if "uniform" in by_quantizer:
            bits = by_quantizer["uniform"]
            stages.append(
                {"method": "quantize", "bits": bits, "layers": list(bits), "granularity": "channel"}
            )
        if "gptq" in by_quantizer:
            bits = by_quantizer["gptq"]
            stages.append({"method": "gptq", "bits": bits, "layers": list(bits)})
        if sched.polish:
            stages.append({"method": "finetune", "epochs": sched.polish, "lr": sched.lr})
        budget = str(policy.get("decode_budget", "unlimited"))
        stages.append(
            {
                "method": "encode",
                "coder": "auto",
                "decode_budget_ms": None if budget == "unlimited" else float(budget),
                "round_floats": "fp16",
            }
        )
        return stages

    def _latency_stages(self, policy: dict[str, Any], sched: Schedule) -> list[dict[str, Any]]:
        stages: list[dict[str, Any]] = []
        channels = {  # rounded: Optuna's float steps carry noise (0.30000000000000004)
            u.pattern: round(float(policy[f"channels:{u.key}"]), 4)
            for u in self.units
            if float(policy.get(f"channels:{u.key}", 0.0)) > 0
        }
        if channels:
            stages.append(
                {"method": "prune", "pattern": "channel", "sparsity": channels, "scope": "layer"}
            )
        epochs = sched.prune + sched.recover
        stages.append({"method": "finetune", "epochs": epochs})
        if sched.polish:
            stages.append({"method": "finetune", "epochs": sched.polish, "lr": 2e-4})
        if policy.get("int8"):
            stages.append(
                {
                    "method": "quantize",
                    "bits": 8,
                    "granularity": "channel",
                    "activations": {"bits": 8, "observer": "mse"},
                    "bias_correction": True,
                }
            )
        return stages

    def signature(self) -> dict[str, Any]:
        """What a study was made for: resuming it with another space is refused."""
        return {
            "objective": self.objective,
            "units": [u.key for u in self.units],
            "quantizers": list(self.quantizers),
            "schedule": [self.schedule.prune, self.schedule.recover, self.schedule.polish],
            "prune_lrs": list(PRUNE_LRS) if self.objective == "bytes" else [],
        }


def _grid(value: float, step: float) -> float:
    return round(round(max(0.0, value) / step) * step, 6)


def _quantizers() -> tuple[str, ...]:
    """Uniform and k-means always; GPTQ when a ``gptq`` method is registered and takes the
    fields the search writes (``bits`` per layer pattern, ``layers``)."""
    found: tuple[str, ...] = ("kmeans", "uniform")
    method = methods().get("gptq")
    if method is not None:
        try:
            method.config.parse({"bits": {"x": 4}, "layers": ["x"]})
        except Exception:  # a gptq whose fields differ is left out, not guessed at
            return found
        found = (*found, "gptq")
    return found


__all__ = ["OBJECTIVES", "Schedule", "Space", "Unit"]
