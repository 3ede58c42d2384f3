"""What a .mzip holds, tensor by tensor (for ``modelzip inspect``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from modelzip.codec.container import decode_state, read_header
from modelzip.errors import FormatError


def inspect_file(path: str | Path) -> dict[str, Any]:
    """Per-tensor kind, shape, codecs, stored bytes, bits per weight and sparsity; totals."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f".mzip file not found: {path}")
    data = path.read_bytes()
    header, parts = read_header(data)
    state = decode_state(header, parts)
    rows = []
    payload = 0
    for name, rec in header["tensors"].items():
        nbytes = sum(
            parts[f"{name}/{f}/{p}"].numel() * parts[f"{name}/{f}/{p}"].element_size()
            for f, frec in rec["fields"].items()
            for p in frec["crc32"]
        )
        payload += nbytes
        value = state[name]
        n = max(value.numel(), 1)
        rows.append(
            {
                "name": name,
                "kind": rec["kind"],
                "shape": list(value.shape),
                "codecs": sorted({frec["codec"] for frec in rec["fields"].values()}),
                "bytes": nbytes,
                "bits_per_weight": 8 * nbytes / n,
                "sparsity": 1 - int((value != 0).sum()) / n,
                "elements": math.prod(value.shape),
            }
        )
    return {
        "file": str(path),
        "bytes": len(data),
        "version": header["version"],
        "source": header["source"],
        "payload_bytes": payload,
        "metadata_bytes": len(data) - payload,
        "tensors": rows,
        "info": header.get("info", {}),
    }
