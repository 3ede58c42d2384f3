"""``distill``: train a student on the teacher's softened outputs (and, optionally, features).

The student is the current model (recovery after lowrank, pruning or quantization: one line
in a recipe) or a new model named by ``student`` that replaces it. The teacher is the model
as it was before the recipe's first stage unless ``teacher`` names another one. The teacher
stays frozen in eval mode; only the student (and the feature adapters) are trained.

Example (YAML)::

    stages:
      - {method: lowrank, ratio: 0.25}
      - {method: distill, epochs: 3, alpha: 0.5, temperature: 4}

    # a smaller architecture trained from LeNet-5, matching one intermediate layer:
    stages:
      - method: distill
        student: zoo:lenet5-quarter
        features: [[conv2, conv2]]
        epochs: 10
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.errors import ConfigError, DataError, UnsupportedError, choices_text
from modelzip.eval.evaluate import accuracy, check_fits
from modelzip.eval.size import count_params
from modelzip.factory import call_factory, factory_label
from modelzip.mzip import mark_base
from modelzip.ops.distill import feature_loss, kd_loss
from modelzip.registry import register
from modelzip.source import ATTR, ModelSource, user_source


def _is_factory(spec: str) -> bool:
    return spec.rpartition(":")[0].endswith(".py")


class DistillConfig(MethodConfig):
    """Options of a distillation stage.

    Attributes:
        teacher: ``zoo:NAME``, ``FILE.py:FACTORY`` (with ``teacher_weights``) or ``FILE.mzip``;
            default: the model before the recipe's first stage.
        student: ``zoo:NAME`` (e.g. ``zoo:lenet300-100``, ``zoo:lenet5-quarter``) or
            ``FILE.py:FACTORY``; the stage then replaces the model by this student. Default:
            the current model is the student.
        student_kwargs: keyword arguments for the student (zoo width options such as
            ``{hidden: [100]}`` or ``{width: 0.25}``, or the factory's arguments).
        alpha: weight of the hard-label cross-entropy; ``1 - alpha`` weighs the soft term.
        temperature: softmax temperature T of the soft term.
        features: ``[teacher_layer, student_layer]`` pairs matched with MSE (an adapter maps
            the student's width to the teacher's when they differ).
        feature_weight: weight of the summed feature losses.
    """

    method: ClassVar[str] = "distill"
    teacher: str | None = None
    teacher_weights: str | None = None
    student: str | None = None
    student_kwargs: dict[str, Any] = Field(default_factory=dict)
    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(4.0, gt=0, le=100)
    epochs: int = Field(3, ge=0, le=1000)
    lr: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    features: list[tuple[str, str]] = Field(default_factory=list)
    feature_weight: float = Field(1.0, ge=0)

    @field_validator("teacher")
    @classmethod
    def _teacher_spec(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("zoo:") or v.endswith(".mzip") or _is_factory(v)):
            raise ValueError(f"teacher must be zoo:NAME, FILE.py:FACTORY or FILE.mzip, got {v!r}")
        return v

    @field_validator("student")
    @classmethod
    def _student_spec(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("zoo:") or _is_factory(v)):
            raise ValueError(f"student must be zoo:NAME or FILE.py:FACTORY, got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.teacher_weights is not None and not (self.teacher and _is_factory(self.teacher)):
            raise ValueError("teacher_weights needs a teacher written FILE.py:FACTORY")
        if self.student_kwargs and self.student is None:
            raise ValueError("student_kwargs needs a student (zoo:NAME or FILE.py:FACTORY)")
        return self


# --------------------------------------------------------------------------- teacher, student


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def resolve_teacher(cfg: DistillConfig, ctx: Context) -> tuple[nn.Module, str]:
    """The frozen teacher and a description of where it came from."""
    if cfg.teacher is None:
        if ctx.teacher is None:
            raise ConfigError(
                "distill: no teacher; name one (teacher: zoo:NAME | FILE.py:FACTORY | FILE.mzip) "
                "or run the stage inside a recipe (the model before the first stage teaches)"
            )
        return _freeze(ctx.teacher), "the model before the recipe's first stage"
    from modelzip.api import load_model  # the front door resolves MODEL specs; import late

    weights = Path(cfg.teacher_weights) if cfg.teacher_weights else None
    teacher = load_model(cfg.teacher, data=ctx.data, weights=weights, seed=ctx.seed)
    check_fits(teacher, ctx.data, f"teacher {cfg.teacher}")
    return _freeze(teacher), cfg.teacher


def build_student(cfg: DistillConfig, ctx: Context) -> nn.Module:
    """A freshly initialized student from ``cfg.student``, tagged with its source."""
    assert cfg.student is not None
    if cfg.student.startswith("zoo:"):
        kwargs = {
            **cfg.student_kwargs,
            "in_shape": list(ctx.data.sample_shape),
            "num_classes": ctx.data.num_classes,
        }
        torch.manual_seed(ctx.seed)  # the student's initial weights follow the run's seed
        student = ModelSource("zoo", cfg.student[4:], kwargs).build()  # the .mzip rebuilds it
    else:
        torch.manual_seed(ctx.seed)
        # The user's own factory, named in their recipe; its .mzip loads with --model.
        student = call_factory(cfg.student, dict(cfg.student_kwargs))
        setattr(student, ATTR, user_source(student, factory_label(cfg.student)))
        mark_base(student)
    check_fits(student, ctx.data, f"student {cfg.student}")
    return student


# --------------------------------------------------------------------------- feature taps


def _layer_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n and ".parametrizations" not in f".{n}"]


def _find(model: nn.Module, name: str, role: str) -> nn.Module:
    names = _layer_names(model)
    if name not in names:
        raise ConfigError(
            f"distill.features: the {role} has no layer {name!r}; {role} layers: "
            f"{choices_text(names, limit=60)}"
        )
    return model.get_submodule(name)


@contextmanager
def tapped(model: nn.Module, names: list[str], role: str) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named layers on every forward; hooks removed on exit."""
    store: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(_module: nn.Module, _inputs: Any, output: Any) -> None:
            store[name] = output[0] if isinstance(output, tuple | list) else output

        return fn

    handles = [_find(model, n, role).register_forward_hook(hook(n)) for n in dict.fromkeys(names)]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def make_adapter(student_shape: torch.Size, teacher_shape: torch.Size, pair: str) -> nn.Module:
    """Identity when the shapes agree; else a Linear (vectors) or 1x1 conv (feature maps)."""
    if student_shape == teacher_shape:
        return nn.Identity()
    if len(student_shape) == len(teacher_shape) == 2:
        return nn.Linear(student_shape[1], teacher_shape[1])
    if len(student_shape) == len(teacher_shape) == 4 and student_shape[2:] == teacher_shape[2:]:
        return nn.Conv2d(student_shape[1], teacher_shape[1], 1)
    raise UnsupportedError(
        f"distill.features {pair}: student output {tuple(student_shape)} cannot be mapped to "
        f"teacher output {tuple(teacher_shape)} (widths may differ, other dimensions must match)"
    )


# --------------------------------------------------------------------------- the stage


@register(DistillConfig)
def distill(model: nn.Module, cfg: DistillConfig, ctx: Context) -> nn.Module:
    """Knowledge distillation from a frozen teacher (soft targets + optional feature MSE)."""
    teacher, teacher_desc = resolve_teacher(cfg, ctx)
    student = build_student(cfg, ctx) if cfg.student else model
    t_names = [t for t, _ in cfg.features]
    s_names = [s for _, s in cfg.features]
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}

    with (
        tapped(teacher, t_names, "teacher") as t_feat,
        tapped(student, s_names, "student") as s_feat,
    ):
        x = ctx.data.example(2).to(ctx.device)
        teacher.to(ctx.device)
        with torch.no_grad():
            t_out, s_out = teacher(x), student.eval()(x)
        if t_out.shape != s_out.shape:
            raise DataError(
                f"distill: teacher outputs {tuple(t_out.shape[1:])} per sample but the student "
                f"outputs {tuple(s_out.shape[1:])}; they must predict the same classes"
            )
        torch.manual_seed(ctx.seed + 1)
        adapters = nn.ModuleList(
            make_adapter(s_feat[s].shape, t_feat[t].shape, f"[{t}, {s}]") for t, s in cfg.features
        ).to(ctx.device)

        def loss_fn(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t_logits = teacher(xb)
            loss = kd_loss(net(xb), t_logits, yb, alpha=cfg.alpha, temperature=cfg.temperature)
            for (t, s), adapt in zip(cfg.features, adapters, strict=True):
                loss = loss + cfg.feature_weight * feature_loss(adapt(s_feat[s]), t_feat[t])
            return loss

        params = [*student.parameters(), *adapters.parameters()]
        train_loss = ctx.fit(
            student,
            epochs=cfg.epochs,
            lr=cfg.lr,
            optimizer=cfg.optimizer,
            weight_decay=cfg.weight_decay,
            loss_fn=loss_fn,
            params=params,
            description="distill",
        )
    teacher.eval()
    changed = [k for k, v in teacher.state_dict().items() if not torch.equal(v, teacher_before[k])]
    if changed:  # a guard: a teacher that moved would silently poison every later stage
        raise RuntimeError(f"distill: the teacher changed during training ({changed[0]})")

    t_params, s_params = count_params(teacher)[0], count_params(student)[0]
    ctx.notes.update(
        {
            "teacher": teacher_desc,
            "teacher_params": t_params,
            "teacher_accuracy": round(accuracy(teacher, ctx.data.test), 6),
            "student": cfg.student or "the current model",
            "student_params": s_params,
            "param_ratio": round(t_params / max(s_params, 1), 3),
            "train_loss": None if math.isnan(train_loss) else round(train_loss, 6),
        }
    )
    if cfg.student:
        ctx.notes["replaced_params"] = count_params(model)[0]
    if cfg.features:
        ctx.notes["adapters"] = {
            f"{t}->{s}": type(a).__name__ for (t, s), a in zip(cfg.features, adapters, strict=True)
        }
    return student
