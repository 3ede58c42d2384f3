"""``quantize``: uniform affine quantization of weights, and static W8A8 with integer kernels.

Weights only (no ``activations``): every selected layer's weight gets an ``AffineQuant``
constraint (fake-quant grid with a straight-through gradient), so a later ``finetune`` stage
trains through it and the .mzip stores the integer codes, scales and zero points. In memory
a loaded layer keeps an fp32 tensor of the dequantized values, because that is faster:
measured on this CPU (1 thread), keeping int8 codes and dequantizing per call cost 2.7-8x the
fp32 time at batch 1 and 1.1-1.15x at batch 256 for 784x300 and 800x500 layers (even with
the scale applied after the matmul). Layers whose activations are quantized too do keep only
int8 codes in memory (``nn.quantized``), since their kernels consume the codes directly.

Embedding tables are quantized the same way when a pattern selects them (the class name
``Embedding`` selects every table; the default selection is Linear and Conv only):
``granularity: channel`` gives one scale (and zero point) per token row, ``granularity: group``
one per run of ``group_size`` values along the embedding dimension. The codes go through the
packer's integer codecs and the loaded table is the dequantized values, bit for bit. Example
(YAML): ``{method: quantize, bits: 4, scheme: asymmetric, layers: [Embedding, Linear],
granularity: group, group_size: 64}``.

With ``activations`` (static post-training quantization): the fake-quant model runs
``calibration_batches`` of the validation split; an observer picks each layer's input range;
optional bias correction removes the mean output error; then Linear and Conv2d layers are
replaced by integer-kernel layers (``nn.quantized``) that the .mzip rebuilds as they are.
A CPU feature decides how they run: with AVX-512 VNNI (or on qnnpack) the engine's int8 kernels,
without it the exact fp32 reference (``nn.int8_runtime``), decided on each machine at run time;
the stage notes' ``int8_kernels`` say which ran here and how far the engine is from the reference.
``bits: 7`` (the ``w7a8`` recipe) puts the weights on codes ``[-63, 63]``, whose uint8 x int8
pair products cannot saturate in 16 bits: CPUs without VNNI then run the engine's int8 kernels
too, and the exported model is exact in ONNX Runtime's default session on any x86 CPU.
Layers that cannot run int8 kernels keep fake-quant weights and float activations, and the
stage notes say which and why.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn
from torch.nn.utils import parametrize

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.errors import ConfigError, ModelError, UnsupportedError
from modelzip.nn import rotation
from modelzip.nn.constraints import AffineQuant, constrain
from modelzip.nn.quantized import _QuantBase
from modelzip.ops import affine
from modelzip.quant import calibrate, convert, dynamic, guard
from modelzip.registry import register
from modelzip.targets import WEIGHT_LAYERS, per_layer, select

VALID_BITS = affine.VALID_BITS
#: Layers a pattern may name explicitly (the default selection is Linear and Conv).
QUANTIZABLE: tuple[type[nn.Module], ...] = (
    *WEIGHT_LAYERS,
    nn.Embedding,
    nn.LayerNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
)


class ActivationConfig(BaseModel):
    """Activation quantization: static uint8 inputs from a calibrated range, or dynamic
    per-token int8 (``mode: dynamic``), or the better of the two per layer (``mode: auto``).

    Example (YAML): ``activations: {bits: 8, observer: mse}`` or ``activations: {mode: auto}``
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    bits: int = 8
    observer: Literal["minmax", "percentile", "mse", "kl"] = "mse"
    percentile: float = Field(99.99, gt=50, le=100, description="for observer: percentile")
    mode: Literal["static", "dynamic", "auto"] = Field(
        "static",
        description="static: calibrated per-tensor uint8 inputs; dynamic: per-token int8 "
        "scales at run time (Linear); auto: per layer, static where calibration shows it as "
        "good as dynamic, else dynamic",
    )
    smoothquant: bool = Field(True, description="dynamic: try SmoothQuant alphas per layer")
    min_sqnr_db: float = Field(
        20.0, ge=0, le=99, description="layers whose int8 output SQNR is lower stay float"
    )
    static_margin_db: float = Field(1.0, ge=0, le=60, description="auto: static allowance")
    min_output_sqnr_db: float = Field(
        0.0,
        ge=0,
        le=99,
        description="when the whole model's output SQNR to float on the calibration data is "
        "lower, static int8 layers get float inputs back (int8 weights kept), the ones that "
        "gain the most first, until it is not or half of them are back (per-layer errors add "
        "up in deep networks); 0 = off",
    )
    rows: Literal["symmetric", "auto"] = Field(
        "symmetric",
        description="dynamic per-token rows: symmetric (max|x| / 127), or auto: asymmetric (a "
        "zero point per row) for layers where calibration shows it more exact",
    )
    rows16_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="dynamic layers: the ones that cause the most output error (measured one "
        "at a time on a calibration batch) get 16-bit rows (two int8 passes, twice the int8 "
        "GEMM time) until they account for this share of the error; 0 = off",
    )
    share_rows: bool = Field(
        False,
        description="dynamic layers that read the same input one after another (a "
        "transformer's query, key and value) get one SmoothQuant vector and one row kind, so "
        "the input is quantized once for all of them (faster; on MiniLM top-10 overlap "
        "-0.001); false: each layer its own",
    )
    rotate: int = Field(
        0,
        ge=0,
        le=rotation.MAX_BLOCK,
        description="dynamic layers: multiply each block of this many input features (a power "
        "of two; per layer the largest power of two up to it that divides the inputs, none "
        "below 8) by a Hadamard matrix before quantizing, and the weight alike: the product "
        "is unchanged and outlier features spread over their block (on MiniLM, blocks of 32: "
        "top-10 overlap 0.956 -> 0.975 at one int8 pass per layer); 0 = off",
    )
    weight_rounding: Literal["nearest", "gptq"] = Field(
        "nearest",
        description="int8 weights of dynamic per-token layers: rounded to nearest, or by GPTQ "
        "from the Hessian of their calibration inputs (less output error; needs at least as "
        "many calibration rows as the layer has inputs, else nearest)",
    )

    @field_validator("rotate")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if not rotation.is_block(v):
            raise ValueError(
                f"rotate must be 0 (off) or a power of two from 2 to {rotation.MAX_BLOCK}, got {v}"
            )
        return v

    @field_validator("bits")
    @classmethod
    def _eight(cls, v: int) -> int:
        if v != 8:
            raise ValueError(f"activation bits must be 8 (the integer kernels take uint8), got {v}")
        return v


class QuantizeConfig(MethodConfig):
    """Options of a quantization stage.

    Example (YAML): ``{method: quantize, bits: {default: 4, fc1: 8}, granularity: channel}``
    or W8A8: ``{method: quantize, bits: 8, activations: {bits: 8, observer: mse}}`` (``bits: 7``
    with activations: 7-bit weights, exact on the int8 kernels of CPUs without VNNI).
    """

    method: ClassVar[str] = "quantize"
    bits: int | dict[str, int] = 8
    scheme: Literal["symmetric", "asymmetric"] = "symmetric"
    signed: bool | None = Field(None, description="code range; default signed iff symmetric")
    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int | None = Field(None, ge=1, le=1 << 20)
    activations: ActivationConfig | None = None
    calibration_batches: int = Field(8, ge=1, le=100_000)
    bias_correction: bool = False
    layers: list[str] | None = Field(None, description="layer patterns to quantize (default: all)")
    fold_bn: bool = Field(True, description="fold BatchNorm into the layer before it first")
    embeddings: bool = Field(
        False,
        description="also store every nn.Embedding table as int8 codes per row (weight-only); "
        "a model without one is noted, not an error",
    )

    @field_validator("bits")
    @classmethod
    def _valid_bits(cls, v: int | dict[str, int]) -> int | dict[str, int]:
        for b in v.values() if isinstance(v, dict) else [v]:
            affine.check_bits(b)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> QuantizeConfig:
        if self.granularity == "group" and self.group_size is None:
            raise ValueError("granularity 'group' needs group_size (e.g. 32, 64, 128)")
        if self.granularity != "group" and self.group_size is not None:
            raise ValueError(
                f"group_size={self.group_size} needs granularity 'group', got {self.granularity!r}"
            )
        if self.activations is not None and self.granularity == "group":
            raise ValueError(
                "activations need granularity 'tensor' or 'channel' (int8 kernels take one "
                "weight scale per output channel), got 'group'"
            )
        return self


def sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to a few significant digits, for readable reports."""
    return float(f"{x:.{digits}g}")


def check_finite(name: str, w: torch.Tensor) -> None:
    """A weight with NaN or inf cannot be put on a grid: stop with the count and the layer."""
    bad = int((~torch.isfinite(w)).sum())
    if bad:
        raise ModelError(
            f"{name}.weight has {bad} NaN/inf value(s) of {w.numel()}: refusing to quantize "
            "(no grid represents them); fix or retrain the model first"
        )


def weight_constraint(name: str, w: torch.Tensor, bits: int, cfg: QuantizeConfig) -> AffineQuant:
    """The grid for one layer's weight, checked against the weight's shape."""
    symmetric = cfg.scheme == "symmetric"
    if cfg.granularity == "channel" and w.dim() < 2:
        raise UnsupportedError(
            f"{name}: granularity 'channel' needs a weight with output channels (2-D or more), "
            f"but {name}.weight has shape {tuple(w.shape)}; use granularity: tensor"
        )
    if symmetric and cfg.signed is False and bool((w < 0).any()):
        raise ConfigError(
            f"{name}: signed: false with scheme symmetric cannot hold its negative weights "
            "(they would all become 0); use signed: true or scheme: asymmetric"
        )
    group = None
    if cfg.granularity == "group":
        group = cast(int, cfg.group_size)  # the config's validator requires it here
        per_channel = w[0].numel() if w.dim() > 1 else w.numel()
        if per_channel % group:
            raise ConfigError(
                f"{name}: group_size {group} does not divide its {per_channel} inputs per "
                f"output channel; valid group sizes divide {per_channel}"
            )
    axis = 0 if cfg.granularity == "channel" else None
    return AffineQuant(bits, symmetric=symmetric, axis=axis, group_size=group, signed=cfg.signed)


def quantize_weights(
    layers: dict[str, nn.Module], bits: dict[str, int], cfg: QuantizeConfig
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Constrain each layer's weight to its grid; returns (float weights, error report)."""
    grids = {}
    for name, b in bits.items():  # check every layer before changing any
        w = cast(torch.Tensor, layers[name].weight).detach()
        check_finite(name, w)
        grids[name] = weight_constraint(name, w, b, cfg)
    before: dict[str, torch.Tensor] = {}
    report: dict[str, dict[str, Any]] = {}
    for name, b in bits.items():
        layer = layers[name]
        w = cast(torch.Tensor, layer.weight).detach().clone()
        constrain(layer, "weight", grids[name])
        w_hat = cast(torch.Tensor, layer.weight).detach()
        before[name] = w
        report[name] = {
            "bits": b,
            "granularity": cfg.granularity,
            "mse": sig(affine.mse(w, w_hat)),
            "sqnr_db": round(affine.sqnr_db(w, w_hat), 2),
        }
    return before, report


def _outputs(model: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.eval()(x).float() for x in batches])


def bias_correction(
    model: nn.Module,
    layers: dict[str, nn.Module],
    float_w: dict[str, torch.Tensor],
    in_q: dict[str, tuple[float, int]],
    batches: list[torch.Tensor],
    notes: dict[str, Any],
) -> None:
    """Correct the biases of Linear/Conv layers; note the layers it cannot correct."""
    fits = {n: m for n, m in layers.items() if isinstance(m, WEIGHT_LAYERS)}
    for name, c in calibrate.correct_biases(model, fits, float_w, in_q, batches).items():
        notes["layers"][name]["bias_correction"] = sig(c)
    others = sorted(set(layers) - set(fits))
    if others:
        notes["bias_correction_skipped"] = {n: "not a Linear or Conv layer" for n in others}


def static_activations(
    model: nn.Module,
    layers: dict[str, nn.Module],
    float_w: dict[str, torch.Tensor],
    cfg: QuantizeConfig,
    act: ActivationConfig,
    batches: list[torch.Tensor],
    notes: dict[str, Any],
    *,
    ref: torch.Tensor | None = None,
    progress: bool = False,
) -> nn.Module:
    """Calibrate input ranges, correct biases (optional), convert to integer layers; with
    ``act.min_output_sqnr_db``, give layers their float inputs back while the model's output
    (against ``ref``, the float model's on ``batches``) is below it (``modelzip.quant.guard``)."""
    skipped = {n: r for n, m in layers.items() if (r := convert.why_not_convertible(m))}
    todo = {n: m for n, m in layers.items() if n not in skipped}
    if not todo:  # every layer went dynamic, stayed float or has no kernel: nothing to calibrate
        notes["chained"], notes["float_activations"] = [], skipped
        notes["int8_kernels"] = convert.kernel_report(model, batches)
        return model
    stats = calibrate.observe(model, todo, batches, progress=progress)
    for name in [n for n in todo if not stats[n].seen]:
        skipped[name] = "never ran on the calibration data (no activation range)"
        del todo[name]
    in_q: dict[str, tuple[float, int]] = {}
    for name in todo:
        s, zp, (lo, hi) = calibrate.input_qparams(
            stats[name], act.observer, act.bits, act.percentile
        )
        in_q[name] = (s, zp)
        notes["layers"][name].update(
            {
                "act_observed": [sig(stats[name].in_lo), sig(stats[name].in_hi)],
                "act_range": [sig(lo), sig(hi)],
                "act_scale": sig(s),
                "act_zero_point": zp,
            }
        )
    if cfg.bias_correction:
        bias_correction(model, layers, float_w, in_q, batches, notes)
    out_ranges = calibrate.output_ranges(model, todo, batches)
    pairs: dict[str, tuple[_QuantBase, nn.Module]] = {}
    out_q: dict[str, tuple[float, int]] = {}
    for name, layer in todo.items():
        lo, hi = out_ranges[name]
        out_q[name] = calibrate.output_qparams(calibrate.LayerStats(out_lo=lo, out_hi=hi), act.bits)
        pairs[name] = (convert.to_integer(layer, in_q[name], out_q[name]), layer)
        convert.replace(model, name, pairs[name][0])
        notes["layers"][name]["int8_kernel"] = True

    def chain() -> list[tuple[str, str]]:
        # undone and redone each time: which layers can chain depends on which are integer
        for name, (int8, _) in pairs.items():
            int8.out_float = True
            int8.set_qparams(in_q[name], out_q[name])
        return convert.chain_sequential(model)

    if act.min_output_sqnr_db > 0 and ref is not None:
        checked = guard.restore_until(
            model, pairs, batches, ref, floor_db=act.min_output_sqnr_db, prepare=chain
        )
        for name, why in checked["restored"].items():
            skipped[name] = why
            notes["layers"][name]["int8_kernel"] = False
        notes["output_guard"] = checked
    notes["chained"] = [f"{a}->{b}" for a, b in chain()]
    notes["float_activations"] = skipped
    notes["int8_kernels"] = convert.kernel_report(model, batches)
    return model


def _embedding_tables(model: nn.Module, chosen: dict[str, nn.Module]) -> dict[str, nn.Module]:
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Embedding) and n not in chosen and not parametrize.is_parametrized(m)
    }


@register(QuantizeConfig)
def quantize(model: nn.Module, cfg: QuantizeConfig, ctx: Context) -> nn.Module:
    """Uniform weight quantization (tensor/channel/group); W8A8 integer layers with activations."""
    if cfg.fold_bn:
        from modelzip.methods.fold_bn import fold_into

        ctx.notes["fold_bn"] = fold_into(model, ctx)
    layers = select(
        model,
        cfg.layers,
        types=WEIGHT_LAYERS if cfg.layers is None else QUANTIZABLE,
        example=ctx.example,
    )
    bits = per_layer(cfg.bits, layers, "bits")
    chosen = {n: layers[n] for n in bits}
    needs_data = cfg.activations is not None or cfg.bias_correction
    batches = calibrate.calibration_batches(ctx, cfg.calibration_batches) if needs_data else []
    ref = _outputs(model, batches) if batches else None
    dyn_notes: dict[str, dict[str, Any]] = {}
    acts = cfg.activations
    if acts is not None and acts.mode != "static":
        model, chosen, dyn_notes = dynamic.apply(
            model,
            chosen,
            bits,
            batches,
            mode=acts.mode,
            smoothquant=acts.smoothquant,
            min_sqnr_db=acts.min_sqnr_db,
            margin_db=acts.static_margin_db,
            rounding=acts.weight_rounding,
            asymmetric=acts.rows == "auto",
            rows16_share=acts.rows16_share,
            share_rows=acts.share_rows,
            rotate=acts.rotate,
        )
        ctx.notes["kept_float"] = dyn_notes.pop("_kept_float")
        if "_rows16" in dyn_notes:
            ctx.notes["rows16"] = dyn_notes.pop("_rows16")
    tables = _embedding_tables(model, chosen) if cfg.embeddings else {}
    if tables:
        row_cfg = cfg.model_copy(update={"granularity": "channel", "group_size": None})
        _, table_report = quantize_weights(tables, dict.fromkeys(tables, 8), row_cfg)
        ctx.notes["embeddings"] = table_report
    elif cfg.embeddings:
        ctx.notes["embeddings"] = "the model has no nn.Embedding table"
    float_w, report = quantize_weights(chosen, {n: bits[n] for n in chosen}, cfg)
    ctx.notes["layers"] = {
        **dyn_notes,
        **{n: {**dyn_notes.get(n, {}), **r} for n, r in report.items()},
    }
    ctx.notes["unquantized"] = sorted(
        set(layers) - set(bits) | set(ctx.notes.get("kept_float", {}))
    )
    if acts is not None:
        ctx.notes["observer"] = acts.observer
        ctx.notes["calibration_batches"] = len(batches)
        model = static_activations(
            model,
            chosen,
            float_w,
            cfg,
            acts,
            batches,
            ctx.notes,
            ref=ref,
            progress=ctx.trainer.progress,
        )
    elif cfg.bias_correction:
        bias_correction(model, chosen, float_w, {}, batches, ctx.notes)
    if ref is not None:
        ctx.notes["output_sqnr_db"] = round(affine.sqnr_db(ref, _outputs(model, batches)), 2)
    return model


__all__ = ["ActivationConfig", "QuantizeConfig", "quantize"]
