"""``gptq``: low-bit group-wise weights by GPTQ (or round-to-nearest), AWQ scaling, mixed bits.

Every selected layer's weight becomes fixed group-wise codes (``nn.lowbit.GroupCodes``):
asymmetric ``bits``-wide codes with an fp16 scale and an integer zero point per row and group
of ``group_size`` inputs. With ``algorithm: gptq`` (default) each Linear/Conv layer is
quantized by GPTQ (``ops.gptq``) from the Hessian of its calibration inputs; layers are done
in the order they run, and each one's inputs are captured from the model whose earlier layers
are already quantized. Embedding tables (no input Hessian), grouped convolutions and layers
that never ran on the calibration data are rounded to nearest, and the stage notes say so.

Options:
- ``awq: true`` searches per-input-channel scales on calibration data before quantizing
  (AWQ); the weight is stored as ``Q(w * s) / s`` with ``s`` in the file.
- ``average_bits: 3.5`` spends a bit budget by sensitivity: each layer's effect on the
  model's output at each of ``bits_choices`` (``sensitivity: end_to_end``, measured one layer
  at a time on a calibration batch; or ``layer``: its own output error, estimated from its
  inputs' second moments) decides where more bits go; the chosen bits per layer are in the
  notes. The budget counts code bits per weight.
- ``tune_scales: 200`` then tunes, with every code fixed, the group scales, the quantized
  layers' biases and the normalisation layers' parameters for 200 Adam steps so the model's
  outputs on the calibration batches match the float model's (``_gptq_tune``); kept only
  when it lowers that error. The file format is unchanged (scales stay fp16).
- ``used_rows_bits: 8`` gives the rows of an embedding table that the calibration data
  looks up this many bits and leaves the others at ``bits``: a few thousand frequent tokens
  carry most of a text model's signal (MiniLM: the 2,603 of 30,522 rows that 512 calibration
  sentences use cover 96% of the tokens of 2,000 other sentences), so their rounding error
  costs most. Rows are stored per width, so the rarely used rest stays small. The notes give
  the number of rows at each width. It follows the calibration text: rows of tokens that it
  never uses get the low width, so calibrate on text like the text the model will embed.
- ``scale_bits: 8`` stores each group's scale as an 8-bit code on a log grid (32 steps per
  octave) below its row's largest scale instead of fp16: a scale moves by at most 1.1%, and
  the scales take about 40% of fp16's bytes (MiniLM, 4 bits, groups of 64: 3% of the file).
  A tensor whose scales span more than 8 octaves in some row, or whose rows have under 4
  groups, keeps fp16 scales; the notes say how many tensors have each.
- ``rate_weight: 0.2`` makes GPTQ's rounding rate-aware: each weight takes the grid point
  below or above it that minimises its squared distance in grid steps plus ``rate_weight``
  times the code's length in bits (under the frequencies of the layer's round-to-nearest
  codes), and GPTQ's update carries the extra error to the later columns. Error compensation
  alone spreads the codes (a longer entropy code than rounding's); with 0.2 GPTQ's files are
  0.1-0.4% smaller than round-to-nearest's at the same width (MiniLM, LeNets), for a cosine
  within 0.003 of nearest rounding. The built-in ``gptq-*`` recipes use 0.2; 0 (the default
  of the method) rounds to nearest. ``algorithm: rtn`` ignores it.
- Too little calibration data (fewer input rows than a layer has inputs) makes the Hessian
  rank-deficient and GPTQ would overfit it: such a layer falls back to round-to-nearest, and
  the notes name it with its row count. NaN never reaches a weight.

Example (YAML)::

    - method: gptq
      bits: {default: 4, Embedding: 4}
      group_size: 128
      act_order: true
      awq: false
      tune_scales: 0
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.errors import ModelError, UnsupportedError
from modelzip.methods import _gptq_calib as calib
from modelzip.methods import _gptq_tune as tuning
from modelzip.methods._gptq_budget import allocate_bits, end_to_end_sensitivity
from modelzip.nn.constraints import constrain, constraints_of
from modelzip.nn.lowbit import GroupCodes
from modelzip.ops import gptq as ops
from modelzip.quant.calibrate import calibration_batches
from modelzip.registry import register
from modelzip.targets import WEIGHT_LAYERS, per_layer, select

#: Layers ``gptq`` quantizes by default (selected by class).
LOWBIT_LAYERS: tuple[type[nn.Module], ...] = (*WEIGHT_LAYERS, nn.Embedding)


class GPTQConfig(MethodConfig):
    """Options of a low-bit weight stage.

    Example (YAML): ``{method: gptq, bits: 4, group_size: 128, act_order: true}``
    """

    method: ClassVar[str] = "gptq"
    bits: int | dict[str, int] = 4
    group_size: int | None = Field(
        128, ge=8, le=1 << 16, description="inputs per scale (null: one per row)"
    )
    algorithm: Literal["gptq", "rtn"] = "gptq"
    act_order: bool = True
    damp: float = Field(0.01, gt=0, le=10, description="relative dampening of the Hessian")
    block_size: int = Field(128, ge=1, le=4096)
    clip_search: bool = Field(True, description="search a shrunk range per group (MSE)")
    rate_weight: float = Field(
        0.0, ge=0, le=10, description="GPTQ rounding's code-length penalty (0: nearest)"
    )
    awq: bool = Field(False, description="search AWQ per-input-channel scales first")
    average_bits: float | None = Field(None, ge=2, le=8, description="mixed-precision budget")
    sensitivity: Literal["end_to_end", "layer"] = Field(
        "end_to_end", description="what ranks layers for average_bits: model output or own error"
    )
    tune_scales: int = Field(
        0, ge=0, le=100_000, description="Adam steps tuning scales/biases/norms (codes fixed)"
    )
    tune_lr: float = Field(1e-3, gt=0, le=1, description="learning rate of tune_scales")
    tune_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="tune_scales' learning rate: constant, or cosine decay to 0"
    )
    edge_bits: int | None = Field(
        None, description="bits for the first and last Linear/Conv layer to run (by role)"
    )
    bits_choices: list[int] = Field(default_factory=lambda: [2, 3, 4, 5, 6, 8])
    used_rows_bits: int | None = Field(
        None, description="bits for the embedding rows the calibration data looks up"
    )
    min_table_rows: int = Field(
        64,
        ge=0,
        le=1 << 20,
        description="embedding tables with fewer rows stay float (e.g. BERT's token types)",
    )
    calibration_batches: int = Field(8, ge=1, le=100_000)
    calibration_split: Literal["val", "train"] = Field(
        "val", description="split the calibration batches come from (never test)"
    )
    scale_bits: Literal[8, 16] = Field(
        16, description="group scales as fp16 (16) or 8-bit log codes (8)"
    )
    layers: list[str] | None = Field(None, description="layer patterns (default: all)")

    @field_validator("bits")
    @classmethod
    def _valid_bits(cls, v: int | dict[str, int]) -> int | dict[str, int]:
        for b in v.values() if isinstance(v, dict) else [v]:
            if isinstance(b, bool) or b not in ops.LOWBIT_BITS:
                raise ValueError(f"bits must be one of {list(ops.LOWBIT_BITS)}, got {b!r}")
        return v

    @field_validator("edge_bits", "used_rows_bits")
    @classmethod
    def _valid_optional_bits(cls, v: int | None, info: Any) -> int | None:
        if v is not None and (isinstance(v, bool) or v not in ops.LOWBIT_BITS):
            raise ValueError(f"{info.field_name} must be one of {list(ops.LOWBIT_BITS)}, got {v!r}")
        return v

    @field_validator("bits_choices")
    @classmethod
    def _valid_choices(cls, v: list[int]) -> list[int]:
        bad = [b for b in v if b not in ops.LOWBIT_BITS]
        if bad or not v:
            raise ValueError(f"bits_choices must be a non-empty subset of {ops.LOWBIT_BITS}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _budget_fits(self) -> GPTQConfig:
        b = self.average_bits
        if b is not None and not min(self.bits_choices) <= b <= max(self.bits_choices):
            raise ValueError(
                f"average_bits {b} lies outside bits_choices {self.bits_choices}: no mix reaches it"
            )
        return self


def matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as (rows, inputs) in float32."""
    w = cast(torch.Tensor, layer.weight).detach().float()
    return w.reshape(w.shape[0], -1)


def _attach(
    layer: nn.Module,
    codes: ops.Codes,
    bits: int,
    in_scale: torch.Tensor | None,
    row_bits: torch.Tensor | None = None,
    scale_bits: int = 16,
) -> None:
    w = cast(torch.Tensor, layer.weight)
    codes_constraint = GroupCodes.from_codes(
        codes,
        bits=bits,
        shape=tuple(w.shape),
        in_scale=in_scale,
        row_bits=row_bits,
        scale_bits=scale_bits,
    )
    constrain(layer, "weight", codes_constraint)
    layer.parametrizations.weight.original.requires_grad_(False)  # type: ignore[union-attr]


def _rel(err: float, signal: float) -> float:
    return float(f"{err / signal:.4g}") if signal > 0 else 0.0


def quantize_layer(
    name: str,
    layer: nn.Module,
    bits: int,
    cfg: GPTQConfig,
    stats: calib.Stats | None,
    reason: str | None,
    used_rows: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Quantize one layer in place; returns its notes. ``used_rows`` (an embedding table's
    rows that the calibration data looked up) get ``cfg.used_rows_bits``."""
    w = matrix(layer)
    g = ops.fit_group_size(w.shape[1], cfg.group_size)
    note: dict[str, Any] = {"bits": bits, "group_size": g}
    if used_rows is not None and cfg.used_rows_bits is not None:
        return note | _quantize_table(layer, w, bits, cfg, used_rows, g)
    rtn = ops.rtn(w, bits=bits, group_size=g, clip_search=cfg.clip_search)
    if stats is None or stats.xtx is None:
        _attach(layer, rtn, bits, None, scale_bits=cfg.scale_bits)
        note["algorithm"] = "rtn"
        if reason:
            note["why_rtn"] = reason
        return note
    h = stats.hessian()
    signal = ops.weighted_error(h, w, torch.zeros_like(w))
    note["rtn_rel_error"] = _rel(ops.weighted_error(h, w, rtn.w_hat), signal)
    in_scale = None
    wq, hq = w, h
    if cfg.awq:
        s, alpha = ops.awq_scales(w, h, stats.act_mean(), bits=bits, group_size=g)
        note["awq_alpha"] = alpha
        if alpha > 0:
            in_scale = s
            wq, hq = w * s, h / (s.double()[:, None] * s.double()[None, :])
    if cfg.algorithm == "rtn" or (stats.rows < w.shape[1] and cfg.algorithm == "gptq"):
        if cfg.algorithm == "gptq":
            note["why_rtn"] = (
                f"{stats.rows} calibration rows < {w.shape[1]} inputs (rank-deficient "
                "Hessian): round-to-nearest; give more calibration data"
            )
        codes = ops.rtn(wq, bits=bits, group_size=g, clip_search=cfg.clip_search)
        note["algorithm"] = "rtn"
    else:
        codes = ops.gptq(
            wq,
            hq,
            bits=bits,
            group_size=g,
            act_order=cfg.act_order,
            damp=cfg.damp,
            block_size=cfg.block_size,
            clip_search=cfg.clip_search,
            rate_weight=cfg.rate_weight,
        )
        note["algorithm"] = "gptq"
        note["damp"] = codes.damp
    w_hat = codes.w_hat if in_scale is None else codes.w_hat / in_scale
    if not bool(torch.isfinite(w_hat).all()):
        raise ModelError(f"{name}: quantized weight is not finite (please report this)")
    _attach(layer, codes, bits, in_scale, scale_bits=cfg.scale_bits)
    # the stored weight (its scales rounded to their storage format) is what the error is of
    note["rel_error"] = _rel(ops.weighted_error(h, w, matrix(layer)), signal)
    note["calibration_rows"] = stats.rows
    return note


def _quantize_table(
    layer: nn.Module,
    w: torch.Tensor,
    bits: int,
    cfg: GPTQConfig,
    used_rows: torch.Tensor,
    g: int,
) -> dict[str, Any]:
    """Round an embedding table to nearest, its used rows at ``cfg.used_rows_bits``."""
    hi = cast(int, cfg.used_rows_bits)
    row_bits = torch.where(used_rows, hi, bits).to(torch.uint8)
    codes = ops.rtn_by_row(w, row_bits, group_size=g, clip_search=cfg.clip_search)
    widest = max(bits, hi) if bool(used_rows.any()) else bits
    uniform = bool((row_bits == row_bits[0]).all())
    _attach(layer, codes, widest, None, None if uniform else row_bits, cfg.scale_bits)
    used = int(used_rows.sum())
    return {
        "algorithm": "rtn",
        "why_rtn": "embedding table (no input Hessian)",
        "bits": widest if uniform else bits,
        "used_rows": used,
        "used_rows_bits": hi,
        "rows_at_bits": {str(hi): used, str(bits): int(used_rows.numel()) - used}
        if hi != bits
        else {str(bits): int(used_rows.numel())},
    }


def used_table_rows(
    model: nn.Module, tables: dict[str, nn.Embedding], batches: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Which rows of each embedding table ``batches`` look up (a bool per row)."""
    seen = {n: torch.zeros(t.num_embeddings, dtype=torch.bool) for n, t in tables.items()}

    def hook(name: str) -> Any:
        def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
            ids = args[0]
            if isinstance(ids, torch.Tensor) and not ids.is_floating_point() and ids.numel():
                seen[name][ids.detach().flatten().long().clamp(0, len(seen[name]) - 1)] = True

        return record

    handles = [t.register_forward_pre_hook(hook(n)) for n, t in tables.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


def _check_layers(layers: dict[str, nn.Module]) -> None:
    for name, layer in layers.items():
        found = constraints_of(layer, "weight")
        if found:
            kinds = [getattr(c, "kind", type(c).__name__) for c in found]
            raise UnsupportedError(
                f"{name}.weight already carries {kinds}: gptq must be the first weight "
                "constraint on a layer (run it before cluster/quantize, without pruning masks)"
            )
        w = cast(torch.Tensor, layer.weight)
        if not bool(torch.isfinite(w).all()):
            raise ModelError(f"{name}.weight holds NaN or inf values: refusing to quantize")


def _small_tables(layers: dict[str, nn.Module], min_rows: int) -> dict[str, dict[str, Any]]:
    """Embedding tables with fewer than ``min_rows`` rows, kept in float, with the reason: each
    of their rows is looked up by a large share of all tokens (BERT's two token-type rows are
    added to every token), so a rounding error there is one bias shared by every input, and
    the table is a few kilobytes."""
    out = {}
    for name, layer in layers.items():
        if isinstance(layer, nn.Embedding) and layer.num_embeddings < min_rows:
            out[name] = {
                "algorithm": "float",
                "why_float": f"embedding table of {layer.num_embeddings} rows < min_table_rows "
                f"{min_rows}: each row feeds many tokens, so its rounding error would be a "
                "bias shared by all",
            }
    return out


@register(GPTQConfig)
def gptq(model: nn.Module, cfg: GPTQConfig, ctx: Context) -> nn.Module:
    """GPTQ / round-to-nearest group-wise low-bit weights (AWQ and mixed precision options)."""
    layers = select(model, cfg.layers, types=LOWBIT_LAYERS, example=ctx.example)
    bits = per_layer(cfg.bits, layers, "bits")
    layers = {n: m for n, m in layers.items() if n in bits}
    kept = _small_tables(layers, cfg.min_table_rows)
    layers = {n: m for n, m in layers.items() if n not in kept}
    _check_layers(layers)
    tables = {n: m for n, m in layers.items() if isinstance(m, nn.Embedding)}
    if cfg.used_rows_bits is None:
        tables = {}
    needs_data = (
        cfg.algorithm == "gptq"
        or cfg.awq
        or cfg.average_bits is not None
        or cfg.tune_scales > 0
        or bool(tables)
    )
    batches = (
        calibration_batches(ctx, cfg.calibration_batches, cfg.calibration_split)
        if needs_data
        else []
    )
    used = used_table_rows(model, tables, batches) if tables else {}
    refs = tuning.reference_outputs(model, batches) if cfg.tune_scales > 0 else None
    order, diag = calib.call_order(model, layers, batches) if batches else ([], {})
    if cfg.average_bits is not None:
        measured = None
        if cfg.sensitivity == "end_to_end":
            measured = end_to_end_sensitivity(
                model, layers, batches[0], cfg.bits_choices, cfg.group_size
            )
        bits, spent = allocate_bits(
            {n: matrix(m) for n, m in layers.items()},
            diag,
            cfg.bits_choices,
            cfg.average_bits,
            cfg.group_size,
            measured,
        )
        ctx.notes["average_bits"] = spent
        ctx.notes["sensitivity"] = "end_to_end" if measured is not None else "layer"
    if cfg.edge_bits is not None:
        edges = [n for n in order if calib.why_no_hessian(layers[n]) is None]
        for name in {edges[0], edges[-1]} if edges else set():
            bits[name] = cfg.edge_bits
        ctx.notes["edge_layers"] = sorted({edges[0], edges[-1]}) if edges else []
    notes: dict[str, dict[str, Any]] = {}
    pending: list[str] = []
    for name, layer in layers.items():  # rounding-only layers first, in model order
        reason = calib.why_no_hessian(layer)
        if not batches or cfg.algorithm == "rtn" and not cfg.awq:
            reason = reason or "algorithm rtn"
        elif reason is None and name not in order:
            reason = "never ran on the calibration data"
        if reason is not None:
            notes[name] = quantize_layer(
                name, layer, bits[name], cfg, None, reason, used_rows=used.get(name)
            )
    pending = [n for n in order if n in layers and n not in notes]
    cache = calib.BlockInputs()
    while pending:
        stats = calib.capture(model, layers, pending, batches, cache)
        done = [n for n in pending if n in stats] or pending[:1]
        for name in done:
            notes[name] = quantize_layer(
                name,
                layers[name],
                bits[name],
                cfg,
                stats.get(name),
                "no calibration input captured",
            )
        pending = [n for n in pending if n not in done]
    if cfg.tune_scales > 0:
        if refs is None:
            ctx.notes["tune"] = {"steps": 0, "why_not": "the model's output is not one tensor"}
        else:
            ctx.notes["tune"] = tuning.tune(
                model,
                batches,
                refs,
                steps=cfg.tune_scales,
                lr=cfg.tune_lr,
                schedule=cfg.tune_schedule,
            )
    ctx.notes["layers"] = {n: notes[n] for n in layers} | kept
    ctx.notes["calibration_batches"] = len(batches)
    if cfg.scale_bits == 8:
        stored = [
            c.scale_bits
            for layer in layers.values()
            for c in constraints_of(layer, "weight")
            if isinstance(c, GroupCodes)
        ]
        ctx.notes["tensors_by_scale_bits"] = {str(b): stored.count(b) for b in (8, 16)}
    return model


__all__ = ["GPTQConfig", "gptq"]
