"""Which int8 kernel is exact on the CPU running now (decided at run time, never stored).

PyTorch's x86 quantized engine runs ``Linear`` on FBGEMM and ``Conv2d`` on oneDNN. Without
VNNI both form each pair of uint8 x int8 products with ``vpmaddubsw``, which *saturates in 16
bits*: two products of a full-range activation (up to 255) and a large weight (up to 127) reach
64,770 > 32,767, so the int32 accumulator is silently wrong (measured here with the ISA capped to
AVX2: errors of ~100 output steps on a layer with large activations and weights). With VNNI
(``vpdpbusd``, AVX-512 VNNI; AMX on newer Xeons) the products accumulate straight into int32 and
the kernels are exact.

So every process decides, from the CPU it runs on:

- ``engine``: the quantized engine's kernels, used when they cannot saturate: an x86 CPU with
  AVX-512 VNNI (FBGEMM has no kernel for the 256-bit AVX-VNNI of some desktop CPUs, so those count
  as without), or the ``qnnpack`` engine (ARM; it widens to 16 bits before multiplying).
- ``reference``: everywhere else. The layer computes in fp32 on the dequantized integer codes
  (input grid, weight grid, bias, then rounding to the output grid), which is the layer's
  fake-quant reference by definition: no precision is lost, only the int8 speed-up.

The library caps that people use to emulate an older CPU are honoured:
``FBGEMM_ENABLE_INSTRUCTIONS`` (``AVX2``, ``AVX512``, ``AVX512_256`` select FBGEMM kernels
without VNNI) and ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA``
(``SSE41``, ``AVX``, ``AVX2``, ``AVX512_CORE`` and the like have no VNNI).
``ATEN_CPU_CAPABILITY`` only changes ATen's vectorized element-wise kernels, not these GEMMs, so it
plays no part. ``MODELZIP_INT8_KERNELS=engine|reference`` forces a choice (``auto`` by default), for
example to show the saturation on purpose.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch

#: FBGEMM ISA names (``FBGEMM_ENABLE_INSTRUCTIONS``) whose int8 kernels pair products in int16.
_FBGEMM_NO_VNNI = {"AVX2", "AVX512", "AVX512_256"}
#: oneDNN ISA caps with VNNI or better; any other recognised cap means no VNNI.
_ONEDNN_VNNI = ("AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX")
_ONEDNN_ANY = ("", "ALL", "DEFAULT")
_CHOICES = ("auto", "engine", "reference")
#: A scoped override (``use``), e.g. to measure the engine against the reference in one run.
_OVERRIDE: ContextVar[str | None] = ContextVar("modelzip_int8_kernels", default=None)


@dataclass(frozen=True)
class Int8Kernels:
    """The choice for this process: ``kernel`` is ``engine`` or ``reference``; ``why`` says why."""

    kernel: str
    why: str
    forced: bool = False

    @property
    def exact_engine(self) -> bool:
        """Whether the quantized engine's own kernels run (they are exact here)."""
        return self.kernel == "engine"


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux ``/proc/cpuinfo``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def is_x86() -> bool:
    """Whether this is an x86 CPU (where the saturating instruction exists)."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _isa_cap() -> str | None:
    """The first environment cap that removes VNNI from the kernels, as ``NAME=value``."""
    fb = os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").strip().upper()
    if fb in _FBGEMM_NO_VNNI:
        return f"FBGEMM_ENABLE_INSTRUCTIONS={fb}"
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        isa = os.environ.get(var, "").strip().upper()
        if isa not in _ONEDNN_ANY and not isa.startswith(_ONEDNN_VNNI):
            return f"{var}={isa}"
    return None


def decide(engine: str, flags: frozenset[str], x86: bool, cap: str | None) -> Int8Kernels:
    """The pure rule: which kernels are exact for this engine, CPU flags and ISA cap."""
    if engine == "qnnpack" or not x86:
        return Int8Kernels("engine", f"{engine} engine on {platform.machine()}: no int16 pairing")
    if cap is not None:
        return Int8Kernels("reference", f"{cap} caps the kernels below VNNI (int16 pairs saturate)")
    if "avx512_vnni" in flags:
        return Int8Kernels("engine", "CPU has AVX-512 VNNI: int8 products accumulate in int32")
    return Int8Kernels(
        "reference",
        "CPU has no AVX-512 VNNI: the engine's uint8 x int8 pairs saturate in int16, so layers "
        "compute their exact fake-quant reference in fp32",
    )


@functools.lru_cache(maxsize=8)
def _select(engine: str, forced: str) -> Int8Kernels:
    if forced not in _CHOICES:
        raise ValueError(f"MODELZIP_INT8_KERNELS={forced!r} is not one of {', '.join(_CHOICES)}")
    if forced != "auto":
        return Int8Kernels(forced, f"forced by MODELZIP_INT8_KERNELS={forced}", True)
    return decide(engine, cpu_flags(), is_x86(), _isa_cap())


def kernels() -> Int8Kernels:
    """The int8 kernels for the current quantized engine on this CPU (cached per process)."""
    scoped = _OVERRIDE.get()
    if scoped is not None:
        return Int8Kernels(scoped, "chosen for a measurement (int8_runtime.use)", True)
    forced = os.environ.get("MODELZIP_INT8_KERNELS", "auto").strip().lower() or "auto"
    return _select(torch.backends.quantized.engine, forced)


@contextlib.contextmanager
def use(kernel: str) -> Iterator[None]:
    """Run the block with ``kernel`` (``engine`` or ``reference``), e.g. to compare the two."""
    if kernel not in _CHOICES[1:]:
        raise ValueError(f"kernel {kernel!r} is not one of {', '.join(_CHOICES[1:])}")
    token = _OVERRIDE.set(kernel)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


#: The largest |int8 weight code| whose uint8 x int8 pair products cannot saturate in int16:
#: 2 * 255 * 64 = 32,640 <= 32,767. Weights on a 7-bit grid (codes in [-63, 63]) stay within it,
#: so the saturating kernels (PyTorch's engine and ONNX Runtime without VNNI) are exact on them;
#: this is ONNX Runtime's ``reduce_range`` and oneDNN's advice for CPUs without VNNI.
PAIR_SAFE = 64


def engine_exact_for(max_abs_code: int) -> bool:
    """Whether the quantized engine's kernels are exact for a layer whose int8 weight codes
    are at most ``max_abs_code`` in magnitude: wherever the engine is exact (``kernels``), and,
    where it pairs products in int16, for codes within ``PAIR_SAFE``; a forced choice
    (``MODELZIP_INT8_KERNELS``, ``use``) holds for every layer."""
    k = kernels()
    return k.exact_engine or (not k.forced and max_abs_code <= PAIR_SAFE)


def describe() -> dict[str, str | bool]:
    """What stage notes record about the choice on the machine that ran the stage."""
    k = kernels()
    flags = cpu_flags()
    return {
        "kernel": k.kernel,
        "why": k.why,
        "engine": torch.backends.quantized.engine,
        "cpu_vnni": "avx512_vnni" in flags,
        "matmul_kernel": matmul_kernel(),
        "engine_for_7bit_weights": engine_exact_for(PAIR_SAFE),
        "decided": "at run time on each machine (the file stores no kernel choice)",
    }


# --- int8 x int8 -> int32 matrix products (the dynamic-activation layers' kernel) -----------
#
# Candidates, all exact where they are offered:
# - ``int_mm``: ``torch._int_mm``, oneDNN's s8 x s8 -> s32 GEMM (AMX / VNNI). Without VNNI oneDNN
#   also pairs products in int16 (measured with ONEDNN_MAX_CPU_ISA=AVX2: wrong by up to 1.2M), so
#   it is offered only where the engine is exact.
# - ``split``: the weight split as W = 128 * W_hi + W_lo with W_lo in [-64, 63] and W_hi in
#   {-1, 0, 1}: every pair then stays below 2 * 255 * 64 = 32,640 and one ``_int_mm`` over
#   [W_lo | W_hi] gives the exact product without VNNI, at twice the columns.
# - ``reference``: the integer codes multiplied in fp32, K in chunks of at most 1,024 so that
#   every partial sum stays below 2**24 (1,024 * 127 * 127 < 2**24) and is exact; the chunks add
#   in int32.
# Speed differs by two orders of magnitude between CPUs: on an AMD EPYC with AVX2 only,
# ``_int_mm`` at 32x384x384 took 22 ms against 0.2 ms for the fp32 GEMM (oneDNN has no fast s8
# kernel there), while on a Xeon with AMX it beats fp32. So the exact candidates are timed once
# per process on a MiniLM-sized product and the fastest is used; the output is the same whichever
# wins.

_REF_CHUNK = 1024
_PROBE = (32, 384, 384)  # tokens x features x outputs of a small encoder's projection


def matmul_kernel() -> str:
    """The dynamic layers' int8 product here: ``int_mm``, ``split`` or ``reference``."""
    k = kernels()
    if k.forced:
        return "int_mm" if k.exact_engine else "reference"
    return _fastest(("int_mm", "reference") if k.exact_engine else ("split", "reference"))


@functools.lru_cache(maxsize=4)
def _fastest(candidates: tuple[str, ...]) -> str:
    return min(candidates, key=lambda c: probe_times(candidates)[c])


@functools.lru_cache(maxsize=4)
def probe_times(candidates: tuple[str, ...]) -> dict[str, float]:
    """Best-of-rounds seconds of each candidate on the probe product (once per process).

    Rounds are interleaved and the minimum is kept: on a loaded machine one call can take 100x
    its cost (a descheduled thread), while the minimum stays the kernel's own cost. A candidate
    20x slower than the best after two rounds is not timed further.
    """
    import time

    m, k, n = _PROBE
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (m, k), generator=gen, dtype=torch.int8)
    w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    packs = {c: pack_weight(w, c) for c in candidates}
    best = {c: float("inf") for c in candidates}
    with torch.inference_mode():
        for c in candidates:  # warm-up
            int8_mm(x, packs[c], c)
        for rnd in range(6):
            for c in candidates:
                if rnd >= 2 and best[c] > 20 * min(best.values()):
                    continue
                t0 = time.perf_counter()
                int8_mm(x, packs[c], c)
                best[c] = min(best[c], time.perf_counter() - t0)
    return best


def pack_weight(qweight: torch.Tensor, kernel: str) -> torch.Tensor:
    """The int8 weight ``[N, K]`` laid out for ``kernel`` (``[K, N]``, or ``[K, 2N]`` split)."""
    if kernel == "int_mm":
        return qweight.t().contiguous()
    if kernel == "split":
        w = qweight.to(torch.int16)
        lo = (w + 64).remainder(128) - 64
        hi = (w - lo).div(128, rounding_mode="floor")
        return torch.cat([lo, hi]).to(torch.int8).t().contiguous()
    if kernel == "reference":
        return qweight.t().float().contiguous()
    raise ValueError(f"kernel {kernel!r} is not one of int_mm, split, reference")


def int8_mm(x: torch.Tensor, packed: torch.Tensor, kernel: str) -> torch.Tensor:
    """Exact int32 products of int8 rows ``x [M, K]`` with a packed weight (``pack_weight``)."""
    if kernel == "reference":
        xf = x.float()
        k = xf.shape[1]
        if k <= _REF_CHUNK:
            return (xf @ packed).round_().to(torch.int32)
        acc = torch.zeros((xf.shape[0], packed.shape[1]), dtype=torch.int32)
        for lo in range(0, k, _REF_CHUNK):
            part = xf[:, lo : lo + _REF_CHUNK] @ packed[lo : lo + _REF_CHUNK]
            acc += part.round_().to(torch.int32)
        return acc
    acc = torch._int_mm(x, packed)
    if kernel == "split":
        n = packed.shape[1] // 2
        return acc[:, :n] + acc[:, n:] * 128
    return acc
