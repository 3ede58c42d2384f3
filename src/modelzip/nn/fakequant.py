"""Fake-quantization used while training (QAT): learned-step weights and activation quantizers.

``LearnedAffineQuant`` is a weight constraint (a parametrization, like ``AffineQuant``) whose
per-channel step size is a trainable parameter (LSQ). ``ActQuant`` fake-quantizes a layer's
*input* to uint8 during training; it sits on the layer as the submodule ``input_quant`` and
runs from a forward pre-hook, so its parameters are part of ``model.parameters()`` and the
trainer optimizes them. Both are transient: ``quant.convert`` turns them into integer layers.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from modelzip.nn.constraints import AffineQuant
from modelzip.ops import affine


class LearnedAffineQuant(AffineQuant):
    """Symmetric weight fake-quant with a learned step size per channel (or per tensor).

    Starts from the min/max scale of ``init`` and stores the same fields as ``AffineQuant``
    (``encode``/``decode`` are inherited), so the packer and the converter treat both alike.
    """

    def __init__(self, bits: int, init: torch.Tensor, *, axis: int | None = 0):
        super().__init__(bits, symmetric=True, axis=axis)
        scale, _ = affine.compute_qparams(init, bits, symmetric=True, axis=axis)
        self.scale = nn.Parameter(scale)

    def qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.scale.detach().abs().clamp_min(affine.MIN_SCALE)
        return scale, torch.zeros_like(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zp = torch.zeros_like(self.scale)
        return affine.lsq_fake_quantize(x, self.scale, zp, self.bits, self.signed)


class ActQuant(nn.Module):
    """Per-tensor uint8 fake-quant of activations, from a calibrated range.

    Without ``learned``, the range follows the data during training (exponential moving
    average of batch min/max, as PyTorch's QAT observers do); with ``learned`` the step size
    is a parameter trained by LSQ and the zero point stays where calibration put it.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    zero_point: torch.Tensor
    scale: nn.Parameter | None

    def __init__(
        self, lo: float, hi: float, *, bits: int = 8, learned: bool = False, momentum: float = 0.01
    ):
        super().__init__()
        self.bits, self.learned, self.momentum = bits, learned, momentum
        self.register_buffer("lo", torch.tensor(float(min(lo, 0.0))))
        self.register_buffer("hi", torch.tensor(float(max(hi, 0.0))))
        scale, zp = affine.qparams_from_range(self.lo, self.hi, bits, symmetric=False)
        self.register_buffer("zero_point", zp)
        self.scale = nn.Parameter(scale) if learned else None

    def qparams(self) -> tuple[float, int]:
        """The (scale, zero point) the integer layer will use."""
        if self.learned:
            step = cast(nn.Parameter, self.scale)  # set whenever ``learned``
            return float(step.detach().abs().clamp_min(affine.MIN_SCALE)), int(self.zero_point)
        scale, zp = affine.qparams_from_range(self.lo, self.hi, self.bits, symmetric=False)
        return float(scale), int(zp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.learned:
            step = cast(nn.Parameter, self.scale)
            return affine.lsq_fake_quantize(x, step, self.zero_point, self.bits, False)
        if self.training:
            with torch.no_grad():
                m = self.momentum
                self.lo.mul_(1 - m).add_(m * x.detach().amin().clamp_max(0))
                self.hi.mul_(1 - m).add_(m * x.detach().amax().clamp_min(0))
        scale, zp = affine.qparams_from_range(self.lo, self.hi, self.bits, symmetric=False)
        return affine.fake_quantize(x, scale, zp, self.bits, signed=False)


def attach_input_quant(layer: nn.Module, quant: ActQuant) -> RemovableHandle:
    """Fake-quantize ``layer``'s first input with ``quant`` on every call."""
    layer.add_module("input_quant", quant)

    def hook(module: nn.Module, args: tuple) -> tuple:
        return (cast(ActQuant, module.input_quant)(args[0]), *args[1:])

    return layer.register_forward_pre_hook(hook)


def detach_input_quant(layer: nn.Module, handle: RemovableHandle) -> ActQuant:
    """Undo ``attach_input_quant``; returns the quantizer (for its final qparams)."""
    handle.remove()
    quant = cast(ActQuant, layer.input_quant)
    del layer.input_quant
    return quant
