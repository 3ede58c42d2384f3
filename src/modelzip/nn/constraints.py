"""Constraints on weights, kept on the module as ``torch.nn.utils.parametrize`` parametrizations.

A constraint is what a method leaves behind for training to respect (a pruning mask, a
quantization grid, a shared codebook). Because it lives on the module, fine-tuning keeps it
and the packer reads the compact form from one place: ``encode`` returns the tensors that
reproduce the constrained value exactly (vocabulary: ``qdata``, ``scale``, ``zero_point``,
``codebook``, ``indices``, ``mask``, ``values``), and ``decode`` rebuilds it bit for bit.
Constraints stack: the outermost one's encoding describes the final value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelzip.errors import FormatError, choices_text
from modelzip.ops import affine


@dataclass
class Encoded:
    """A constrained tensor in compact form."""

    kind: str
    fields: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


class Constraint(nn.Module):
    """Base parametrization. Subclasses set ``kind`` and implement forward/encode/decode."""

    kind: ClassVar[str] = ""
    #: A field of integer codes that index a table built from the other fields (by
    #: ``gather_table``): a codec that can gather while it decodes then skips materialising
    #: the codes (a codebook's indices).
    gather_field: ClassVar[str | None] = None

    def encode(self, x: torch.Tensor) -> Encoded:
        """Compact form of ``self(x)``."""
        raise NotImplementedError

    @classmethod
    def decode(cls, fields: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        """Rebuild the constrained value exactly from ``encode``'s output."""
        raise NotImplementedError

    @classmethod
    def gather_table(cls, fields: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        """The table ``gather_field`` indexes, from the other fields (value = table[codes])."""
        raise NotImplementedError


def decode(enc: Encoded, kinds: Mapping[str, type[Constraint]]) -> torch.Tensor:
    """Decode a stored kind from the closed table ``kinds`` (``dense`` is a plain tensor in
    field ``values``); a kind outside the table is a FormatError naming the known ones."""
    if enc.kind == "dense":
        return enc.fields["values"]
    cls = kinds.get(enc.kind)
    if cls is None:
        raise FormatError(
            f"unknown tensor kind {enc.kind!r}; this modelzip knows: "
            f"{choices_text(['dense', *kinds])}"
        )
    return cls.decode(enc.fields, enc.meta)


class Mask(Constraint):
    """Pruning mask: pruned weights are exactly zero whatever the optimizer does."""

    kind = "masked"
    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # where(), not x * mask: a negative weight times 0 is -0.0, which bit-exact codecs
        # must keep as a nonzero bit pattern; pruned weights are +0.0.
        return torch.where(self.mask, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def encode(self, x: torch.Tensor) -> Encoded:
        # The zeros carry the mask; codecs exploit them (sparse formats).
        return Encoded("dense", {"values": self(x).detach()})


class AffineQuant(Constraint):
    """Uniform affine fake-quantization of a weight (straight-through gradient).

    The scale follows the current weights (min/max), so fine-tuning moves values within the
    grid while every forward stays on it. ``axis`` picks per-channel scales (None: one per
    tensor); ``group_size`` gives one scale per run of that many values along the flattened
    inputs of each output channel (``weight.reshape(out, -1)``). ``signed`` picks the code
    range (default: signed for symmetric, unsigned for asymmetric).
    """

    kind = "affine"

    def __init__(
        self,
        bits: int,
        *,
        symmetric: bool = True,
        axis: int | None = 0,
        group_size: int | None = None,
        signed: bool | None = None,
    ):
        super().__init__()
        self.bits, self.symmetric, self.axis, self.group_size = bits, symmetric, axis, group_size
        self.signed = symmetric if signed is None else signed

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        # Groups run along each output channel's flattened inputs (conv kernels included).
        if self.group_size is None:
            return x
        return affine.grouped(x.reshape(x.shape[0], -1), self.group_size)

    def qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point for ``x`` (shapes broadcast against the grouped view)."""
        if self.group_size is not None:  # one scale per (channel, group) of the 2-D view
            return affine.compute_qparams(
                x.reshape(x.shape[0], -1),
                self.bits,
                symmetric=self.symmetric,
                group_size=self.group_size,
                signed=self.signed,
            )
        return affine.compute_qparams(
            x, self.bits, symmetric=self.symmetric, axis=self.axis, signed=self.signed
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, zp = self.qparams(x)
        xs = self._view(x)
        return affine.fake_quantize(xs, scale, zp, self.bits, self.signed).reshape(x.shape)

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(integer codes shaped like ``x``, scale, zero point) of ``x`` on this grid."""
        x = x.detach()
        scale, zp = self.qparams(x)
        q = affine.quantize(self._view(x), scale, zp, self.bits, self.signed)
        dtype = affine.storage_dtype(self.bits, self.signed)
        return q.to(dtype).reshape(x.shape), scale.detach().float(), zp.detach()

    def encode(self, x: torch.Tensor) -> Encoded:
        q, scale, zp = self.codes(x)
        fields = {"qdata": q, "scale": scale}
        if bool((zp != 0).any()):
            fields["zero_point"] = zp.to(torch.int32)
        meta = {"bits": self.bits, "group_size": self.group_size}
        return Encoded(self.kind, fields, meta)

    @classmethod
    def decode(cls, fields: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        q, scale = fields["qdata"], fields["scale"]
        zp = fields.get("zero_point")
        zp = torch.zeros_like(scale) if zp is None else zp.float()
        group = meta.get("group_size")
        try:
            qs = affine.grouped(q.reshape(q.shape[0], -1), int(group)) if group else q
            return affine.dequantize(qs, scale, zp).reshape(q.shape)
        except (RuntimeError, ValueError) as exc:
            raise FormatError(f"affine tensor fields do not fit together: {exc}") from None


# --------------------------------------------------------------------------- module helpers


def constrain(module: nn.Module, name: str, constraint: Constraint) -> None:
    """Attach ``constraint`` to ``module.<name>`` (stacking on earlier constraints)."""
    parametrize.register_parametrization(module, name, constraint)


def constraints_of(module: nn.Module, name: str) -> list[nn.Module]:
    """The parametrizations on ``module.<name>``, innermost first ([] when unconstrained)."""
    if not parametrize.is_parametrized(module, name):
        return []
    return list(_plist(module, name))


def _plist(module: nn.Module, name: str) -> parametrize.ParametrizationList:
    # ``parametrizations`` is added at runtime by parametrize; the stubs cannot know its type.
    return cast(parametrize.ParametrizationList, cast(nn.ModuleDict, module.parametrizations)[name])


def original(module: nn.Module, name: str) -> torch.Tensor:
    """The unconstrained tensor under any parametrizations."""
    if parametrize.is_parametrized(module, name):
        return _plist(module, name).original
    return getattr(module, name)


def base_class(module: nn.Module) -> type[nn.Module]:
    """The module's own class (parametrize swaps in a generated subclass)."""
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def iter_state(model: nn.Module) -> Iterator[tuple[str, Encoded]]:
    """Every persistent tensor of the model under its plain state_dict name, in compact form.

    Constrained tensors are encoded by their outermost modelzip constraint (the input to it is
    computed through the inner ones); others are ``dense``.
    """
    for mod_name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList) or _inside_parametrization(mod_name):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        for name, p in module._parameters.items():
            if p is not None:
                yield prefix + name, Encoded("dense", {"values": p.detach()})
        for name, b in module._buffers.items():
            if b is not None and name not in module._non_persistent_buffers_set:
                yield prefix + name, Encoded("dense", {"values": b.detach()})
        if parametrize.is_parametrized(module):
            for name, plist in module.parametrizations.items():
                yield prefix + name, _encode_chain(plist)


def _inside_parametrization(mod_name: str) -> bool:
    return ".parametrizations." in f".{mod_name}."


def _encode_chain(plist: parametrize.ParametrizationList) -> Encoded:
    with torch.no_grad():
        x = plist.original
        chain = list(plist)
        for p in chain[:-1]:
            x = p(x)
        last = chain[-1]
        if isinstance(last, Constraint):
            return last.encode(x)
        return Encoded("dense", {"values": last(x).detach()})


def remove_constraints(model: nn.Module) -> nn.Module:
    """Bake every constraint into its tensor (constrained values become plain parameters)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(cast(nn.ModuleDict, module.parametrizations).keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def constraint_summary(model: nn.Module) -> dict[str, list[str]]:
    """Layer.tensor -> kinds of its constraints, innermost first (for reports)."""
    out: dict[str, list[str]] = {}
    for mod_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name, plist in module.parametrizations.items():
                out[f"{mod_name}.{name}"] = [getattr(p, "kind", type(p).__name__) for p in plist]
    return out
