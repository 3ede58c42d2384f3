"""Per-field codecs: how one tensor of the compact vocabulary becomes stored parts.

A codec maps a tensor to named parts (tensors the container stores) plus JSON meta, and
back, exactly. New codecs register by subclassing ``Codec`` with a ``name``; the packer picks
per field through a ``CodecPolicy`` (the smallest output among the candidates, by default).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from modelzip.errors import FormatError, choices_text

_CODECS: dict[str, type[Codec]] = {}


class Codec:
    """Base class: ``encode`` -> (parts, meta); ``decode`` reverses it bit for bit."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _CODECS[cls.name] = cls

    def applies_to(self, t: torch.Tensor) -> bool:
        """Whether this codec can store ``t`` at all."""
        return True

    def encode(self, t: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        raise NotImplementedError

    def decode(self, parts: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError


class Raw(Codec):
    """The tensor as it is (dtype and shape kept)."""

    name = "raw"

    def encode(self, t: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"data": t.contiguous()}, {}

    def decode(self, parts: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        return parts["data"]


def get_codec(name: str) -> Codec:
    """A codec instance by name; unknown names are a FormatError naming the known ones."""
    cls = _CODECS.get(name)
    if cls is None:
        raise FormatError(f"unknown codec {name!r}; known codecs: {choices_text(_CODECS)}")
    return cls()


def codec_names() -> list[str]:
    return sorted(_CODECS)


def part_nbytes(parts: dict[str, torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in parts.values())


def encode_smallest(
    t: torch.Tensor, candidates: list[str] | None = None
) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """Encode with every applicable candidate codec and keep the smallest output."""
    best: tuple[str, dict[str, torch.Tensor], dict[str, Any]] | None = None
    for name in candidates or codec_names():
        codec = get_codec(name)
        if not codec.applies_to(t):
            continue
        parts, meta = codec.encode(t)
        if best is None or part_nbytes(parts) < part_nbytes(best[1]):
            best = (name, parts, meta)
    if best is None:
        raise FormatError(f"no codec among {candidates} can store a {t.dtype} tensor")
    return best
