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

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.errors import ConfigError, UnsupportedError
from modelzip.nn.codebook import Codebook
from modelzip.nn.constraints import constrain, original
from modelzip.ops import affine, kmeans
from modelzip.registry import register
from modelzip.targets import check_pattern, matches, per_layer, select

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


@register(ClusterConfig)
def cluster(model: nn.Module, cfg: ClusterConfig, ctx: Context) -> nn.Module:
    """k-means weight sharing per layer (or per group), indices fixed, centroids trainable."""
    layers = select(model, cfg.layers, example=ctx.example)
    bits = per_layer(cfg.bits, layers, "bits")
    layers = {n: m for n, m in layers.items() if n in bits}
    gen = ctx.generator(offset=17)
    report: dict[str, dict[str, Any]] = {}
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
