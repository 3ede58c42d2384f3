"""Packing a model's tensors into .mzip records and payloads, and decoding them back.

A tensor is stored in its compact form, read from the constraint on its module
(``modelzip.nn.constraints.iter_state``: codes, scales, codebooks, masks), one payload per
field, each with the codec ``codecs.choose`` picks. Decoding turns records back into the
effective tensors bit for bit, with the stored kinds looked up in the closed table
``modelzip.nn.registry.CONSTRAINT_KINDS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import nn

from modelzip.codec.base import DTYPES, dtype_name
from modelzip.codec.codecs import DECODE_BUDGET_MS, choose, encode_options, get_codec
from modelzip.codec.format import EXPANSION, MIN_BUDGET
from modelzip.errors import FormatError
from modelzip.nn import constraints
from modelzip.nn.registry import CONSTRAINT_KINDS

#: Model attributes the ``encode`` stage sets to choose the coder and, for ``auto``, the
#: decode-time budget of the slow entropy coders in ms (read here, nowhere else).
CODER_ATTR = "modelzip_coder"
BUDGET_ATTR = "modelzip_decode_budget_ms"
T = TypeVar("T")
R = TypeVar("R")


def encode_tensors(model: nn.Module) -> tuple[list[list[Any]], list[bytes]]:
    """The tensor records (``t`` in the header) and their payloads, in record order."""
    coder = getattr(model, CODER_ATTR, "auto")
    budget_ms = getattr(model, BUDGET_ATTR, DECODE_BUDGET_MS) if coder == "auto" else None
    records: list[list[Any]] = []
    options = []
    slow = budget_ms is None or budget_ms > 0  # a budget of 0 never picks a slow coder
    for name, enc in constraints.iter_state(model):
        fields = []
        for field_name, t in enc.fields.items():
            t = t.detach().cpu()
            options.append(encode_options(t, coder, slow=slow))
            fields.append([field_name, "", dtype_name(t.dtype), list(t.shape)])
        records.append([name, enc.kind, enc.meta or {}, fields])
    picked = iter(choose(options, math.inf if budget_ms is None else budget_ms * 1e6))
    payloads: list[bytes] = []
    for rec in records:
        for field in rec[3]:
            option = next(picked)
            field[1] = option.codec
            payloads.append(option.data)
    return records, payloads


def _check_elements(header: dict[str, Any], budget: int) -> None:
    """Refuse, before decoding anything, files whose fields declare more elements together
    than ``budget``."""
    for name, rec in header["tensors"].items():
        for fname, frec in rec["fields"].items():
            budget -= math.prod(frec["shape"])
            if budget < 0:
                raise FormatError(
                    f"{name}/{fname}: the file declares more elements than its size allows "
                    "(hostile shapes?)"
                )


def _decode_error(where: str, exc: Exception) -> FormatError:
    """A decoding failure as one FormatError naming the field; a codec bug that raised
    something else must still not crash the caller."""
    if isinstance(exc, FormatError):
        return FormatError(f"{where}: {exc}")
    return FormatError(f"cannot decode {where}: {exc}")


def _decode_record(
    name: str, rec: dict[str, Any], parts: dict[str, memoryview]
) -> dict[str, torch.Tensor]:
    fields = {}
    for fname, frec in rec["fields"].items():
        n = math.prod(frec["shape"])
        codec = get_codec(frec["codec"])
        try:
            flat = codec.decode_shaped(
                parts[f"{name}/{fname}"], DTYPES[frec["dtype"]], frec["shape"]
            )
        except Exception as exc:
            raise _decode_error(f"{name}/{fname}", exc) from None
        if flat.numel() != n:
            raise FormatError(f"{name}/{fname}: decoded {flat.numel()} of {n} elements")
        fields[fname] = flat.reshape(frec["shape"])
    return fields


def _value(name: str, rec: dict[str, Any], parts: dict[str, memoryview]) -> torch.Tensor:
    """Decode one tensor record into its effective value."""
    cls = CONSTRAINT_KINDS.get(rec["kind"])
    gather = cls.gather_field if cls is not None else None
    if gather is not None and gather in rec["fields"]:
        # Decode the table fields, then let the codes' codec gather straight into values.
        rest = {f: r for f, r in rec["fields"].items() if f != gather}
        fields = _decode_record(name, {"fields": rest}, parts)
        frec = rec["fields"][gather]
        try:
            table = cls.gather_table(fields, rec["meta"])  # type: ignore[union-attr]
            out = get_codec(frec["codec"]).decode_gather(
                parts[f"{name}/{gather}"], DTYPES[frec["dtype"]], frec["shape"], table
            )
        except Exception as exc:
            raise _decode_error(f"{name}/{gather}", exc) from None
        if out is not None:
            if out.numel() != math.prod(frec["shape"]):
                raise FormatError(f"{name}/{gather}: decoded {out.numel()} values")
            return out.reshape(frec["shape"])
    enc = constraints.Encoded(rec["kind"], _decode_record(name, rec, parts), rec["meta"])
    try:
        return constraints.decode(enc, CONSTRAINT_KINDS)
    except FormatError as exc:
        raise FormatError(f"{name}: {exc}") from None
    except Exception as exc:
        raise FormatError(f"{name}: fields of kind {rec['kind']!r} do not fit: {exc}") from None


def _map(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """``fn`` over ``items`` on as many threads as torch may use: zstd, numpy and torch release
    the GIL while they decode, so tensors decode side by side."""
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers, thread_name_prefix="mzip-decode") as pool:
        return list(pool.map(fn, items))


def decode_fields(
    header: dict[str, Any], parts: dict[str, memoryview], budget: int
) -> dict[str, dict[str, torch.Tensor]]:
    """Decode every field payload (tensor -> field -> tensor) within an element budget."""
    _check_elements(header, budget)
    items = list(header["tensors"].items())
    decoded = _map(lambda item: _decode_record(item[0], item[1], parts), items)
    return {name: fields for (name, _), fields in zip(items, decoded, strict=True)}


def decode_state(
    header: dict[str, Any], parts: dict[str, memoryview], *, file_bytes: int = 0
) -> dict[str, torch.Tensor]:
    """Decode every tensor record into its effective value (bit-exact)."""
    _check_elements(header, max(MIN_BUDGET, EXPANSION * file_bytes))
    items = list(header["tensors"].items())
    values = _map(lambda item: _value(item[0], item[1], parts), items)
    return {name: value for (name, _), value in zip(items, values, strict=True)}
