"""Export to ONNX, the way out to deployment runtimes."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.codec.format import write_atomic
from modelzip.errors import ModelError, UnsupportedError, first_line
from modelzip.nn.int8_runtime import PAIR_SAFE
from modelzip.source import INPUT_ATTR, source_of


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A zero input of the shape the model was built for (recorded in its source), or of
    the input its .mzip was compressed on."""
    src = source_of(model)
    shape = (src.kwargs.get("in_shape") if src is not None else None) or None
    if shape is not None:
        return torch.zeros(batch, *shape)
    recorded = getattr(model, INPUT_ATTR, None)
    if recorded is not None:
        shape, dtype = recorded
        return torch.zeros(batch, *shape, dtype=dtype)
    raise ModelError(
        "the model's input shape is not recorded; pass --data so a real sample fixes it"
    )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    example: torch.Tensor | None = None,
    opset: int = 17,
    check: bool = True,
) -> dict[str, float | int | str | bool]:
    """Write ``model`` as ONNX (dynamic batch; dynamic length too for token-id input),
    atomically; verify it with ONNX Runtime.

    Returns the file size and, when checked, the max abs difference between ONNX Runtime and
    PyTorch on the example input; for a model with int8 layers, ``exact_without_vnni``: whether
    ONNX Runtime's default session runs it exactly on x86 CPUs without VNNI (7-bit weights),
    where else only ``ort_session`` does.
    """
    data, out = onnx_bytes(model, example=example, opset=opset, check=check)
    out = {"onnx": str(path), **out}
    write_atomic(Path(path), data)
    return out


def onnx_bytes(
    model: nn.Module,
    *,
    example: torch.Tensor | None = None,
    opset: int = 17,
    check: bool = True,
) -> tuple[bytes, dict[str, float | int | str | bool]]:
    """``export_onnx`` in memory: the ONNX file's bytes and what ``export_onnx`` reports."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise UnsupportedError(
            "ONNX export needs the onnx package: pip install 'modelzip[onnx]'"
        ) from None
    model = model.eval()
    x = example if example is not None else example_input(model)
    axes = {0: "batch"}
    if _is_token_ids(x):  # sentences come in every length: the length axis stays symbolic
        axes[1] = "tokens"
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                buf,  # type: ignore[arg-type]  # a file object is accepted too
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": axes, "output": {0: "batch"}},
                # modelzip.nn.onnx_int8.MATMUL_TO_FLOAT, for dynamic int8 layers (declared
                # without one, the exporter prints a warning that it is unused)
                custom_opsets={"com.microsoft": 1} if _has_dynamic_int8(model) else None,
            )
    except Exception as exc:  # the exporter raises many types for unsupported ops
        raise UnsupportedError(f"ONNX export failed: {first_line(exc)}") from None
    data = _merged(buf.getvalue())
    out: dict[str, float | int | str | bool] = {"bytes": len(data)}
    widest = int8_weight_max(model)
    if widest is not None:
        out["exact_without_vnni"] = widest <= PAIR_SAFE
    if check:
        out["max_abs_diff"] = _check_with_onnxruntime(model, data, x)
    return data, out


def _has_dynamic_int8(model: nn.Module) -> bool:
    from modelzip.nn.dynamic import DynQuantLinear

    return any(isinstance(m, DynQuantLinear) for m in model.modules())


def _is_token_ids(x: torch.Tensor) -> bool:
    """Integer input of rank 2 (``[batch, tokens]``): a text model's token ids."""
    return x.dim() == 2 and not torch.is_floating_point(x) and x.dtype != torch.bool


def int8_weight_max(model: nn.Module) -> int | None:
    """The largest |int8 weight code| of the model's integer layers (None without any): at most
    ``PAIR_SAFE`` (7-bit weights, the ``w7a8`` recipe), the exported integer products are exact
    in ONNX Runtime's default session on CPUs without VNNI too; above it, such CPUs need
    ``ort_session``'s precision option."""
    from modelzip.nn.dynamic import DynQuantLinear
    from modelzip.nn.quantized import _QuantBase

    codes = [
        int(m.qweight.to(torch.int16).abs().max())
        for m in model.modules()
        if isinstance(m, DynQuantLinear | _QuantBase) and m.qweight.numel()
    ]
    return max(codes) if codes else None


def _merged(data: bytes) -> bytes:
    """``data`` with the int8 products that share row codes merged, and every product
    owning its weight constants (``modelzip.nn.onnx_merge``); unchanged when there are none."""
    from modelzip.nn.onnx_int8 import MATMUL_TO_FLOAT
    from modelzip.nn.onnx_merge import merge_parallel_products, own_weight_constants

    if MATMUL_TO_FLOAT.split("::")[1].encode() not in data and b"DequantizeLinear" not in data:
        return data
    import onnx

    model = onnx.load_from_string(data)
    changed = merge_parallel_products(model)
    changed += own_weight_constants(model)
    return model.SerializeToString() if changed else data


def ort_session(
    model: str | os.PathLike[str] | bytes,
    threads: int | None = None,
    *,
    precise: bool | None = None,
) -> Any:
    """An ONNX Runtime CPU session that runs int8 models exactly on CPUs without VNNI too.

    ORT's x86 u8 x s8 kernels pair products in int16 without VNNI, as PyTorch's do, and saturate
    (measured on an AVX2-only AMD EPYC: an exported w8a8 LeNet-5 off by 3.1 logits, 0.8% of
    argmaxes changed). ORT's own fix is the session option ``session.x64quantprecision``, which
    runs such products as u8 x u8 where the weights need it (then: 0.14, every argmax equal).
    It is not free where it is not needed: on an AMD EPYC with AVX-512 VNNI, where the plain
    kernels are exact (the same output to the bit), it made MiniLM's int8 export 1.6-1.9x
    slower. So ``precise=None`` turns it on only on x86 CPUs whose ORT int8 kernels saturate
    (``ort_kernels_saturate``); True / False force it. Use this for int8 files exported by
    modelzip.
    """
    import onnxruntime as ort

    if precise is None:
        precise = ort_kernels_saturate()

    def options(with_precision: bool) -> Any:
        opts = ort.SessionOptions()
        if with_precision:
            opts.add_session_config_entry("session.x64quantprecision", "1")
            opts.log_severity_level = 4  # a failed attempt is retried, not printed
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        return opts

    src = model if isinstance(model, bytes) else str(model)
    if precise:
        try:
            return ort.InferenceSession(src, options(True), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001  (ORT raises its own Fail type)
            # ORT 1.32's u8s8 -> u8u8 rewrite fails to initialize a graph in which two nodes
            # share a weight constant ("Attempt to replace the existing tensor"; modelzip's
            # exports own theirs: onnx_merge.own_weight_constants); run such a graph without
            # it, and say so where that can saturate
            if "replace the existing tensor" not in str(exc):
                raise
            if ort_kernels_saturate():
                warnings.warn(
                    "ONNX Runtime could not apply session.x64quantprecision to this graph "
                    "(shared weight constants): its 8-bit int8 products may saturate on this CPU",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return ort.InferenceSession(src, options(False), providers=["CPUExecutionProvider"])


#: CPU flags with which ONNX Runtime's (MLAS) u8 x s8 kernels accumulate in int32: AVX-512
#: VNNI, the 256-bit AVX-VNNI of newer desktop CPUs, and AMX.
ORT_EXACT_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def ort_kernels_saturate(flags: frozenset[str] | None = None) -> bool:
    """Whether ONNX Runtime's int8 kernels pair u8 x s8 products in int16 on this CPU (x86
    without any of ``ORT_EXACT_INT8_FLAGS``); ``flags`` defaults to this CPU's."""
    from modelzip.nn import int8_runtime

    if not int8_runtime.is_x86():
        return False
    return not (ORT_EXACT_INT8_FLAGS & (int8_runtime.cpu_flags() if flags is None else flags))


#: The exported file is also run on the example repeated to this batch size: a size the trace
#: fixed (``x.view(1, -1)``) passes a check at the example's own batch size and breaks later.
CHECK_BATCH = 3


def _check_with_onnxruntime(model: nn.Module, data: bytes, x: torch.Tensor) -> float:
    """The largest |ONNX Runtime - PyTorch| on ``x`` and on ``x`` repeated to ``CHECK_BATCH``
    rows; a run that fails or gives another shape is an ``UnsupportedError`` (nothing is
    written)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return float("nan")
    session = ort_session(data)
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a failing run is reported in one line below, not logged
    fixed = (
        "a size fixed by the trace (e.g. x.view(1, -1)) breaks other batch sizes: use "
        "x.flatten(1) or x.view(x.size(0), -1)"
    )
    worst = 0.0
    inputs = [x, x.repeat(CHECK_BATCH, *([1] * (x.dim() - 1)))]
    if _is_token_ids(x) and x.shape[1] > 2:  # and sentences shorter than the example's
        inputs.append(inputs[1][:, : x.shape[1] // 2 + 1])
    for xb in inputs:
        where, hint = f"at batch {len(xb)}", fixed
        if xb.shape[1:] != x.shape[1:]:
            where = f"at {xb.shape[1]} tokens"
            hint = "a length fixed by the trace breaks shorter or longer sentences"
        try:
            got = session.run(None, {"input": xb.numpy()}, quiet)[0]
        except Exception as exc:  # ORT raises its own types; the first line says what failed
            raise UnsupportedError(
                f"the exported model fails in ONNX Runtime {where} ({first_line(exc)[:200]}); "
                + (hint if xb.shape != x.shape else "it does not run as exported")
            ) from None
        with torch.no_grad():
            want = model(xb).numpy()
        if got.shape != want.shape:
            raise UnsupportedError(
                f"the exported model gives shape {list(got.shape)} {where} where the "
                f"model gives {list(want.shape)}: {hint}"
            )
        worst = max(worst, float(abs(got - want).max()))
    return worst
