"""Int8 layers against an integer reference, on inputs that make int16 pairing saturate.

A Linear and a Conv2d get full-range uint8 activations (codes 200..255) and weights of +-127,
so two adjacent products reach 2 * 255 * 127 = 64,770: more than a saturating int16 holds
(32,767). The reference accumulates the same codes exactly (int64 for the Linear, float64 on
integer values for the Conv2d, exact below 2**53), then scales and adds the bias. A layer is
right when its output is within half an output step of that value (one rounding).

``python -m modelzip.testing.int8_check [FILE.pt]`` prints one JSON object with the kernel this
process chose and each layer's largest error in output steps; it is how the tests check a CPU
they do not have (``FBGEMM_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2`` in a subprocess).
With ``FILE.pt`` (a ``{"x": ..., "state": ...}`` written by ``torch.save`` from another process)
it also runs that Linear's saved buffers and reports the error against the same reference.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modelzip.nn import int8_runtime
from modelzip.nn.dynamic import DynQuantLinear
from modelzip.nn.quantized import QuantConv2d, QuantLinear, _QuantBase

S_X, S_W = 0.02, 0.01


@dataclass
class Case:
    """A layer, its float input, the exact reference output and the output step."""

    layer: _QuantBase
    x: torch.Tensor
    reference: torch.Tensor
    step: float


def _codes(shape: tuple[int, ...], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(200, 256, shape, generator=gen)
    w_sign = torch.randint(0, 2, shape[1:], generator=gen) * 2 - 1
    return x, w_sign


def _out_grid(ref: torch.Tensor) -> tuple[float, int]:
    lo, hi = min(float(ref.min()), 0.0), max(float(ref.max()), 0.0)
    step = (hi - lo) / 255
    return step, int(round(-lo / step))


def linear_case(seed: int = 0, k: int = 256, n: int = 48, m: int = 16, wmax: int = 127) -> Case:
    """A QuantLinear whose int16 pairs would saturate (weights +-``wmax``; at most
    ``int8_runtime.PAIR_SAFE`` they cannot), with its int64 reference."""
    gen = torch.Generator().manual_seed(seed)
    xq = torch.randint(200, 256, (m, k), generator=gen)
    wq = (torch.randint(0, 2, (n, k), generator=gen) * 2 - 1) * wmax
    bias = torch.randn(n, generator=gen)
    acc = xq.long() @ wq.long().T  # exact integer accumulation
    ref = acc.double() * (S_X * S_W) + bias.double()
    layer = QuantLinear(k, n)
    layer.set_weight(wq, torch.full((n,), S_W), torch.zeros(n))
    layer.bias.copy_(bias)  # type: ignore[union-attr]  # built with bias=True
    step, zp = _out_grid(ref)
    layer.set_qparams((S_X, 0), (step, zp))
    return Case(layer, xq.float() * S_X, ref, step)


def conv_case(seed: int = 0, c: int = 32, n: int = 8, wmax: int = 127) -> Case:
    """A QuantConv2d (3x3, padding 1) whose int16 pairs would saturate (weights +-``wmax``; at
    most ``int8_runtime.PAIR_SAFE`` they cannot), with its reference."""
    gen = torch.Generator().manual_seed(seed)
    xq = torch.randint(200, 256, (2, c, 6, 6), generator=gen)
    wq = (torch.randint(0, 2, (n, c, 3, 3), generator=gen) * 2 - 1) * wmax
    bias = torch.randn(n, generator=gen)
    acc = F.conv2d(xq.double(), wq.double(), padding=1)  # integers, exact in float64
    ref = acc * (S_X * S_W) + bias.double()[:, None, None]
    layer = QuantConv2d(c, n, (3, 3), padding=(1, 1))
    layer.set_weight(wq, torch.full((n,), S_W), torch.zeros(n))
    layer.bias.copy_(bias)  # type: ignore[union-attr]  # built with bias=True
    step, zp = _out_grid(ref)
    layer.set_qparams((S_X, 0), (step, zp))
    return Case(layer, xq.float() * S_X, ref, step)


def dynamic_case(
    seed: int = 0, k: int = 384, n: int = 64
) -> tuple[DynQuantLinear, torch.Tensor, torch.Tensor]:
    """A DynQuantLinear on 3-D input whose rows quantize to +-127 codes next to +-127 weights,
    with its exact reference (the same per-row codes, products summed in int64)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, k, generator=gen).sign() * (0.5 + torch.rand(2, 5, k, generator=gen))
    x[..., ::2] = 1.5  # every even feature at the row maximum: codes of 127
    wq = (torch.randint(0, 2, (n, k), generator=gen) * 2 - 1) * 127
    wq[:, ::2] = 127
    bias = torch.randn(n, generator=gen)
    layer = DynQuantLinear(k, n)
    layer.qweight.copy_(wq.to(torch.int8))
    layer.w_scale.fill_(S_W)
    layer.bias.copy_(bias)  # type: ignore[union-attr]  # built with bias=True
    x2 = x.reshape(-1, k).double()
    s_row = x2.abs().amax(1, keepdim=True) / 127
    codes = torch.round(x2 / s_row).clamp(-127, 127).long()
    ref = (codes @ wq.long().T).double() * s_row * S_W + bias.double()
    return layer, x, ref.reshape(2, 5, n)


def dynamic_error(layer: DynQuantLinear, x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |output - reference| relative to the largest |reference| (fp32 rounding ~1e-6)."""
    with torch.inference_mode():
        out = layer(x)
    return float((out.double() - ref).abs().max() / ref.abs().max())


def error_steps(case: Case, layer: _QuantBase | None = None) -> float:
    """Largest |output - reference| of the layer, in output steps (0.5 = one exact rounding)."""
    with torch.inference_mode():
        out = (layer or case.layer)(case.x)
    return float((out.double() - case.reference).abs().max() / case.step)


def report(saved: str | None = None) -> dict[str, object]:
    """The kernel chosen here and the error of each case (and of a saved Linear, if given)."""
    out: dict[str, object] = {"kernel": int8_runtime.kernels().kernel}
    lin = linear_case()
    out["linear"] = error_steps(lin)
    out["conv"] = error_steps(conv_case())
    safe = int8_runtime.PAIR_SAFE  # 7-bit weights: the engine wherever it cannot saturate
    narrow = linear_case(wmax=safe), conv_case(wmax=safe)
    out["engine_7bit"] = all(c.layer.uses_engine() for c in narrow)
    out["linear_7bit"], out["conv_7bit"] = (error_steps(c) for c in narrow)
    out["matmul_kernel"] = int8_runtime.matmul_kernel()
    out["dynamic"] = dynamic_error(*dynamic_case())
    if saved is not None:
        blob = torch.load(saved, weights_only=True)
        layer = QuantLinear(lin.layer.in_features, lin.layer.out_features)  # type: ignore[arg-type]
        layer.load_state_dict(blob["state"])
        out["saved_linear"] = error_steps(Case(layer, blob["x"], lin.reference, lin.step))
    return out


if __name__ == "__main__":
    print(json.dumps(report(sys.argv[1] if len(sys.argv) > 1 else None)))
