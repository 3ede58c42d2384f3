"""What a .mzip holds, tensor by tensor (for ``modelzip inspect`` and the coding benchmark).

Per tensor: kind, shape, codec per field, stored bytes, bits per weight, sparsity, and two
entropy references: ``stream_entropy_bytes`` (order-0 empirical entropy of the symbol streams
the chosen codecs entropy-code: run lengths and nonzero codes) and ``entropy_bytes`` (order-0
entropy of the stored integer codes taken densely, zeros included). Totals give payload and
metadata bytes (everything that is not a payload: fixed header, JSON, payload table).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from modelzip.codec.codecs import get_codec
from modelzip.codec.format import EXPANSION, MIN_BUDGET, read_header
from modelzip.codec.pack import decode_fields, decode_state
from modelzip.errors import FormatError
from modelzip.ops.kmeans import empirical_entropy_bits


def inspect_bytes(data: bytes, name: str = "<bytes>") -> dict[str, Any]:
    """Inspect .mzip bytes (see ``inspect_file``)."""
    return inspect_detail(data, name)[0]


def inspect_detail(
    data: bytes, name: str = "<bytes>"
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``inspect_bytes``'s record, and per tensor what reports draw: the decoded ``value``,
    the grid ``bits`` (None for plain floats) and the ``codebook`` values (or None)."""
    header, parts = read_header(data)
    budget = max(MIN_BUDGET, EXPANSION * len(data))
    fields = decode_fields(header, parts, budget)
    state = decode_state(header, parts, file_bytes=len(data))
    rows = []
    detail: dict[str, dict[str, Any]] = {}
    for tname, rec in header["tensors"].items():
        stream_bits: float
        dense_bits: float
        nbytes = stream_bits = dense_bits = code = 0
        codecs = []
        for fname, frec in rec["fields"].items():
            size = len(parts[f"{tname}/{fname}"])
            nbytes += size
            codec = get_codec(frec["codec"])
            codecs.append(f"{fname}:{frec['codec']}")
            t = fields[tname][fname]
            if t.is_floating_point() or not t.numel():
                continue
            code += size  # integer codes (indices, qdata): the entropy-coded part
            dense = empirical_entropy_bits(t.reshape(-1).numpy())
            dense_bits += dense
            streams = codec.streams(t)
            stream_bits += sum(empirical_entropy_bits(s) for s in streams) if streams else dense
        value = state[tname]
        n = max(value.numel(), 1)
        detail[tname] = {
            "value": value,
            "bits": _grid_bits(rec, fields[tname]),
            "codebook": _codebook(rec, fields[tname]),
        }
        rows.append(
            {
                "name": tname,
                "kind": rec["kind"],
                "shape": list(value.shape),
                "codecs": codecs,
                "bytes": nbytes,
                "code_bytes": code,
                "side_bytes": nbytes - code,
                "bits_per_weight": round(8 * nbytes / n, 4),
                "sparsity": round(1 - int((value != 0).sum()) / n, 6),
                "stream_entropy_bytes": round(stream_bits / 8, 1),
                "entropy_bytes": round(dense_bits / 8, 1),
                "elements": math.prod(value.shape),
            }
        )
    payload = header["payload_bytes"]
    info = {
        "file": name,
        "bytes": len(data),
        "version": header["version"],
        "source": header["source"],
        "payload_bytes": payload,
        "metadata_bytes": len(data) - payload,
        "metadata_fraction": round((len(data) - payload) / len(data), 5),
        "tensors": rows,
        "info": header.get("info", {}),
    }
    return info, detail


def _grid_bits(rec: dict[str, Any], fields: dict[str, Any]) -> int | None:
    """Bits of the value grid a tensor is stored on: the quantizer's bits, log2 of the
    codebook size, or None for floats kept as floats. Group-wise codes whose rows have their
    own widths report the width most rows have."""
    meta = rec.get("meta") or {}
    row_bits = fields.get("row_bits")
    if rec["kind"] == "group-codes" and row_bits is not None and row_bits.numel():
        return int(torch.bincount(row_bits.flatten().long()).argmax())
    if rec["kind"] in ("affine", "group-codes") and isinstance(meta.get("bits"), int):
        return int(meta["bits"])
    cb = fields.get("codebook")
    if cb is not None:
        size = cb.numel() + int(bool(meta.get("zero", 0)))
        return max(1, math.ceil(math.log2(max(size, 2))))
    q = fields.get("qdata", fields.get("values"))
    if q is not None and not q.is_floating_point() and q.dtype != torch.bool:
        return q.element_size() * 8  # integer codes stored as such (int8 layers)
    return None


def _codebook(rec: dict[str, Any], fields: dict[str, Any]) -> list[float] | None:
    cb = fields.get("codebook")
    if cb is None or cb.dim() != 1:
        return None
    values = [float(v) for v in cb.tolist()]
    if (rec.get("meta") or {}).get("zero", 0):
        values = [0.0, *values]
    return values


def layer_of(tensor: str) -> str:
    """The module a state tensor belongs to (``blocks.0.fc.weight`` -> ``blocks.0.fc``)."""
    head, dot, _ = tensor.rpartition(".")
    return head if dot else tensor


def layer_summary(
    info: dict[str, Any], detail: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per layer (module), in file order: its tensors, params, sparsity, grid bits,
    codec of its largest tensor, stored bytes, bits per weight and share of the file.

    ``bits`` comes from ``detail`` (``inspect_detail``); without it it is None.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in info["tensors"]:
        groups.setdefault(layer_of(t["name"]), []).append(t)
    rows = []
    for layer, tensors in groups.items():
        params = sum(t["elements"] for t in tensors)
        zeros = sum(t["sparsity"] * t["elements"] for t in tensors)
        nbytes = sum(t["bytes"] for t in tensors)
        main = max(tensors, key=lambda t: t["elements"])
        bits = detail[main["name"]]["bits"] if detail and main["name"] in detail else None
        rows.append(
            {
                "layer": layer,
                "tensors": [t["name"][len(layer) + 1 :] or t["name"] for t in tensors],
                "params": params,
                "sparsity": round(zeros / params, 6) if params else 0.0,
                "bits": bits,
                "codec": ", ".join(main["codecs"]),
                "bytes": nbytes,
                "bits_per_weight": round(8 * nbytes / max(params, 1), 4),
                "share": round(nbytes / info["bytes"], 6) if info["bytes"] else 0.0,
            }
        )
    return rows


def inspect_file(path: str | Path) -> dict[str, Any]:
    """Per-tensor kind, shape, codecs, stored bytes, bits per weight, sparsity, entropy; totals."""
    return inspect_file_detail(path)[0]


def inspect_file_detail(
    path: str | Path,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``inspect_file``'s record and ``inspect_detail``'s per-tensor values of a file."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f".mzip file not found: {path}")
    return inspect_detail(path.read_bytes(), str(path))
