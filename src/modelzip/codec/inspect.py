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

from modelzip.codec.codecs import get_codec
from modelzip.codec.format import EXPANSION, MIN_BUDGET, read_header
from modelzip.codec.pack import decode_fields, decode_state
from modelzip.errors import FormatError
from modelzip.ops.kmeans import empirical_entropy_bits


def inspect_bytes(data: bytes, name: str = "<bytes>") -> dict[str, Any]:
    """Inspect .mzip bytes (see ``inspect_file``)."""
    header, parts = read_header(data)
    budget = max(MIN_BUDGET, EXPANSION * len(data))
    fields = decode_fields(header, parts, budget)
    state = decode_state(header, parts, file_bytes=len(data))
    rows = []
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
    return {
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


def inspect_file(path: str | Path) -> dict[str, Any]:
    """Per-tensor kind, shape, codecs, stored bytes, bits per weight, sparsity, entropy; totals."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f".mzip file not found: {path}")
    return inspect_bytes(path.read_bytes(), str(path))
