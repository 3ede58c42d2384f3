"""``qat``: quantization-aware training, then conversion to integer-kernel layers.

Weights get a fake-quant grid (min/max scale that follows the weights, or a learned step
size with ``lsq: true``); every Linear/Conv2d input gets a uint8 fake-quantizer initialised by
the observer on calibration batches (its range then tracks the data by moving average, or is
learned with LSQ). Training runs through both with straight-through gradients; afterwards the
layers are converted exactly as static PTQ converts them (``quantize`` with ``activations``).
"""

from __future__ import annotations

from typing import ClassVar, Literal, cast

import torch
from pydantic import Field, field_validator
from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.methods.quantize import ActivationConfig, check_finite, sig
from modelzip.nn.constraints import AffineQuant, constrain
from modelzip.nn.fakequant import ActQuant, LearnedAffineQuant, attach_input_quant
from modelzip.nn.fakequant import detach_input_quant as _detach
from modelzip.ops import affine
from modelzip.quant import calibrate, convert
from modelzip.registry import register
from modelzip.targets import per_layer, select


class QATConfig(MethodConfig):
    """Options of a quantization-aware training stage.

    Example (YAML): ``{method: qat, bits: 8, epochs: 2, lsq: true}``
    """

    method: ClassVar[str] = "qat"
    bits: int | dict[str, int] = 8
    granularity: Literal["tensor", "channel"] = "channel"
    activations: ActivationConfig = ActivationConfig()
    lsq: bool = Field(False, description="learn the step sizes (LSQ) instead of min/max")
    epochs: int = Field(2, ge=0, le=1000)
    lr: float = Field(1e-4, gt=0, le=10)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    calibration_batches: int = Field(8, ge=1, le=100_000)
    layers: list[str] | None = Field(None, description="layer patterns to quantize (default: all)")

    @field_validator("bits")
    @classmethod
    def _valid_bits(cls, v: int | dict[str, int]) -> int | dict[str, int]:
        for b in v.values() if isinstance(v, dict) else [v]:
            affine.check_bits(b)
            if b > 8:
                raise ValueError(f"qat converts to int8 kernels: bits must be 2..8, got {b}")
        return v


@register(QATConfig)
def qat(model: nn.Module, cfg: QATConfig, ctx: Context) -> nn.Module:
    """Quantization-aware training (STE, optional LSQ), then real int8 layers."""
    layers = select(model, cfg.layers, example=ctx.example)
    bits = per_layer(cfg.bits, layers, "bits")
    chosen = {n: layers[n] for n in bits}
    for name, layer in chosen.items():
        check_finite(name, cast(torch.Tensor, layer.weight).detach())
    batches = calibrate.calibration_batches(ctx, cfg.calibration_batches)
    axis = 0 if cfg.granularity == "channel" else None
    report: dict[str, dict] = {}
    for name, b in bits.items():
        layer = chosen[name]
        w = cast(torch.Tensor, layer.weight).detach().clone()
        q = LearnedAffineQuant(b, w, axis=axis) if cfg.lsq else AffineQuant(b, axis=axis)
        constrain(layer, "weight", q)
        report[name] = {
            "bits": b,
            "sqnr_db_before_training": round(
                affine.sqnr_db(w, cast(torch.Tensor, layer.weight).detach()), 2
            ),
        }
    skipped = {n: r for n, m in chosen.items() if (r := convert.why_not_convertible(m))}
    todo = {n: m for n, m in chosen.items() if n not in skipped}
    act = cfg.activations
    stats = calibrate.observe(model, todo, batches, progress=ctx.trainer.progress)
    for name in [n for n in todo if not stats[n].seen]:
        skipped[name] = "never ran on the calibration data (no activation range)"
        del todo[name]
    handles = {}
    for name, layer in todo.items():
        _, _, (lo, hi) = calibrate.input_qparams(
            stats[name], act.observer, act.bits, act.percentile
        )
        handles[name] = attach_input_quant(layer, ActQuant(lo, hi, bits=act.bits, learned=cfg.lsq))
    loss = ctx.fit(
        model,
        epochs=cfg.epochs,
        lr=cfg.lr,
        optimizer=cfg.optimizer,
        description="qat",
    )
    out_ranges = calibrate.output_ranges(model, todo, batches)
    for name, layer in todo.items():
        in_q = _detach(layer, handles[name]).qparams()
        lo, hi = out_ranges[name]
        out_q = calibrate.output_qparams(calibrate.LayerStats(out_lo=lo, out_hi=hi), act.bits)
        convert.replace(model, name, convert.to_integer(layer, in_q, out_q))
        report[name].update(
            {"act_scale": sig(in_q[0]), "act_zero_point": in_q[1], "int8_kernel": True}
        )
    ctx.notes.update(
        {
            "layers": report,
            "train_loss": None if loss != loss else round(loss, 6),  # NaN: no training ran
            "lsq": cfg.lsq,
            "chained": [f"{a}->{b}" for a, b in convert.chain_sequential(model)],
            "float_activations": skipped,
        }
    )
    return model.eval()
