"""``cluster``: non-uniform weight sharing (k-means codebooks), kept on the module.

Each selected layer's weight becomes ``codebook[indices]`` with 2^bits shared values
(a ``Codebook`` parametrization); a later ``finetune`` trains the centroids while the indices
stay fixed. Only nonzero weights are clustered: pruned zeros get the reserved zero code.

Example (YAML)::

    - method: cluster
      bits: {default: 4, "fc3": 8}
      algorithm: kmeans      # kmeans | optimal (exact 1-D DP) | quantile (equal mass)
      init: linear           # linear | density | random (k-means only)
      shared: false          # true: one codebook for all layers; or groups of patterns
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.errors import ConfigError, UnsupportedError
from modelzip.nn.codebook import Codebook, RowCodebook
from modelzip.nn.constraints import constrain, original
from modelzip.ops import affine, kmeans
from modelzip.ops.gptq import fit_group_size
from modelzip.registry import register
from modelzip.targets import WEIGHT_LAYERS, check_pattern, matches, per_layer, select

BITS_RANGE = (1, 16)


class ClusterConfig(MethodConfig):
    """Options of a weight-sharing stage.

    Example (YAML): ``{method: cluster, bits: {default: 4, fc3: 8}, init: linear}``
    """

    method: ClassVar[str] = "cluster"
    bits: int | dict[str, int] = 4
    algorithm: Literal["kmeans", "optimal", "quantile"] = "kmeans"
    init: Literal["linear", "density", "random"] = "linear"
    shared: bool | list[list[str]] = Field(
        False, description="one codebook across layers: true (all) or groups of layer patterns"
    )
    max_samples: int | None = Field(
        None, ge=1024, description="fit k-means on a subsample this large (fast path)"
    )
    include_bias: bool = Field(False, description="also share the values of each bias")
    layers: list[str] | None = Field(None, description="layer patterns to cluster (default: all)")
    per: Literal["tensor", "row", "group"] = Field(
        "tensor", description="one codebook per weight tensor, per output row, or per group"
    )
    group_size: int | None = Field(None, ge=2, le=1 << 16, description="for per: group")

    @model_validator(mode="after")
    def _per_fits(self) -> ClusterConfig:
        if (self.per == "group") != (self.group_size is not None):
            raise ValueError("per: group needs group_size, and group_size needs per: group")
        if self.per != "tensor" and (self.shared is not False or self.include_bias):
            raise ValueError(f"per: {self.per} works alone, without shared or include_bias")
        return self

    @field_validator("bits")
    @classmethod
    def _valid_bits(cls, v: int | dict[str, int]) -> int | dict[str, int]:
        lo, hi = BITS_RANGE
        for b in v.values() if isinstance(v, dict) else [v]:
            if isinstance(b, bool) or not isinstance(b, int) or not lo <= b <= hi:
                raise ValueError(f"bits must be an integer in [{lo}, {hi}], got {b!r}")
        return v


def _groups(cfg: ClusterConfig, layers: dict[str, nn.Module]) -> list[list[str]]:
    """Layer-name groups that share one codebook (singletons when not shared)."""
    if cfg.shared is False:
        return [[n] for n in layers]
    if cfg.shared is True:
        return [list(layers)]
    groups, seen = [], set()
    for patterns in cfg.shared:
        for p in patterns:
            check_pattern(p, layers)
        names = [
            n
            for n, m in layers.items()
            if n not in seen and any(matches(p, n, m) for p in patterns)
        ]
        seen.update(names)
        if names:
            groups.append(names)
    groups += [[n] for n in layers if n not in seen]
    return groups


def _cluster_group(
    members: list[tuple[str, nn.Module, str]], bits: int, cfg: ClusterConfig, gen: torch.Generator
) -> dict[str, dict[str, Any]]:
    """Fit one codebook on the nonzero values of ``members`` and attach it to each."""
    values = [getattr(mod, attr).detach() for _, mod, attr in members]
    for (name, _, attr), v in zip(members, values, strict=True):
        if not torch.isfinite(v).all():
            raise UnsupportedError(f"{name}.{attr} holds NaN or inf values: cannot cluster it")
    nonzero = torch.cat([v[v != 0] for v in values])
    if nonzero.numel() == 0:
        return {f"{n}.{a}": {"skipped": "all values are zero"} for n, _, a in members}
    cb, idx = kmeans.fit_codebook(
        nonzero,
        2**bits,
        algorithm=cfg.algorithm,
        init=cfg.init,
        gen=gen,
        max_samples=cfg.max_samples,
    )
    shared = nn.Parameter(cb.clone())
    report, start = {}, 0
    for (name, mod, attr), v in zip(members, values, strict=True):
        nz = v != 0
        zero_slot = bool((~nz).any())
        codes = torch.zeros(v.shape, dtype=torch.int64)
        count = int(nz.sum())
        codes[nz] = idx[start : start + count] + int(zero_slot)
        start += count
        constrain(mod, attr, Codebook(codes, shared, zero_slot=zero_slot))
        original(mod, attr).requires_grad_(False)  # only the centroids train from now on
        report[f"{name}.{attr}"] = {
            "bits": bits,
            "codebook": int(cb.numel()),
            "zero_slot": zero_slot,
            "sqnr_db": round(affine.sqnr_db(v, getattr(mod, attr).detach()), 2),
        }
    return report


def _cluster_rows(name: str, mod: nn.Module, bits: int, cfg: ClusterConfig) -> dict[str, Any]:
    """A k-means codebook per output row (or per group along it), fixed after fitting."""
    w = cast(torch.Tensor, mod.weight).detach()
    if not torch.isfinite(w).all():
        raise UnsupportedError(f"{name}.weight holds NaN or inf values: cannot cluster it")
    flat = w.reshape(w.shape[0], -1)
    g = fit_group_size(flat.shape[1], cfg.group_size)  # width it does not divide: nearby
    cb, idx = kmeans.rowwise_kmeans(flat.reshape(-1, g), 2**bits)
    constrain(mod, "weight", RowCodebook(idx.reshape(w.shape), cb))
    original(mod, "weight").requires_grad_(False)
    return {
        "bits": bits,
        "per": cfg.per,
        "group_size": g,
        "codebooks": int(cb.shape[0]),
        "sqnr_db": round(affine.sqnr_db(w, cast(torch.Tensor, mod.weight).detach()), 2),
    }


@register(ClusterConfig)
def cluster(model: nn.Module, cfg: ClusterConfig, ctx: Context) -> nn.Module:
    """k-means weight sharing per layer (or per group), indices fixed, centroids trainable."""
    types = WEIGHT_LAYERS if cfg.layers is None else (*WEIGHT_LAYERS, nn.Embedding)
    layers = select(model, cfg.layers, types=types, example=ctx.example)
    bits = per_layer(cfg.bits, layers, "bits")
    layers = {n: m for n, m in layers.items() if n in bits}
    gen = ctx.generator(offset=17)
    report: dict[str, dict[str, Any]] = {}
    if cfg.per != "tensor":
        ctx.notes["layers"] = {n: _cluster_rows(n, m, bits[n], cfg) for n, m in layers.items()}
        return model
    for group in _groups(cfg, layers):
        group_bits = {bits[n] for n in group}
        if len(group_bits) > 1:
            raise ConfigError(
                f"cluster.shared: layers {group} share a codebook but have different bits "
                f"{sorted(group_bits)}; give them one bits value"
            )
        b = group_bits.pop()
        weights = [(n, layers[n], "weight") for n in group]
        report.update(_cluster_group(weights, b, cfg, gen))
        if cfg.include_bias:
            for n in group:
                if getattr(layers[n], "bias", None) is not None:
                    report.update(_cluster_group([(n, layers[n], "bias")], b, cfg, gen))
    ctx.notes["layers"] = report
    return model
