"""The .mzip container: a safetensors file whose tensors are the encoded parts and whose
metadata is one JSON header (format, version, model source, architecture, tensor records).

Loading never unpickles and never runs code from the file; every part is checksummed (CRC-32)
and checked before use; writes go to a temporary file renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from modelzip.codec.codecs import encode_smallest, get_codec
from modelzip.errors import FormatError, ModelError
from modelzip.nn import constraints
from modelzip.nn.specs import apply_architecture, architecture
from modelzip.source import ModelSource, source_of

FORMAT = "modelzip"
VERSION = 1
#: Refuse to decode a single tensor larger than this many elements (hostile shapes).
MAX_ELEMENTS = 1 << 31


def crc32(t: torch.Tensor) -> int:
    return zlib.crc32(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def to_bytes(model: nn.Module, *, info: dict[str, Any] | None = None) -> bytes:
    """Serialize a (constrained) model into .mzip bytes."""
    source = source_of(model)
    if source is None:
        raise ModelError(
            "the model has no recorded source (zoo name or FILE.py:FACTORY); build it with "
            "modelzip.load_model so the file can rebuild its architecture"
        )
    parts_out: dict[str, torch.Tensor] = {}
    records: dict[str, Any] = {}
    for name, enc in constraints.iter_state(model):
        fields: dict[str, Any] = {}
        for field_name, t in enc.fields.items():
            codec_name, parts, cmeta = encode_smallest(t.detach().cpu())
            sums = {}
            for part_name, p in parts.items():
                key = f"{name}/{field_name}/{part_name}"
                parts_out[key] = p
                sums[part_name] = crc32(p)
            fields[field_name] = {"codec": codec_name, "meta": cmeta, "crc32": sums}
        records[name] = {"kind": enc.kind, "meta": enc.meta, "fields": fields}
    header = {
        "format": FORMAT,
        "version": VERSION,
        "source": source.to_json(),
        "architecture": architecture(model),
        "tensors": records,
        "info": info or {},
    }
    meta = {"modelzip": json.dumps(header, separators=(",", ":"))}
    return st_save(parts_out, metadata=meta)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(
    model: nn.Module, path: str | os.PathLike[str], *, info: dict[str, Any] | None = None
) -> int:
    """Write the model to ``path`` atomically; returns the file size in bytes."""
    data = to_bytes(model, info=info)
    write_atomic(path, data)
    return len(data)


def read_header(data: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse and validate the container; returns (header, stored parts)."""
    try:
        parts = st_load(data)
    except (SafetensorError, Exception) as exc:  # the Rust parser raises a few types
        raise FormatError(f"not a readable .mzip (truncated or corrupted?): {exc}") from None
    # safetensors.torch.load drops metadata; read the header JSON ourselves (bounded).
    if len(data) < 8:
        raise FormatError("not a .mzip: file too short")
    n = int.from_bytes(data[:8], "little")
    try:
        st_header = json.loads(data[8 : 8 + n])
        header = json.loads(st_header["__metadata__"]["modelzip"])
    except (ValueError, KeyError, TypeError):
        raise FormatError("not a .mzip: the modelzip header is missing or not JSON") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise FormatError("not a .mzip: wrong format marker")
    if header.get("version") != VERSION:
        raise FormatError(
            f"unsupported .mzip version {header.get('version')!r}; this modelzip reads version "
            f"{VERSION}"
        )
    for key in ("source", "architecture", "tensors"):
        if not isinstance(header.get(key), dict):
            raise FormatError(f"corrupted .mzip header: {key!r} missing or not an object")
    return header, parts


def decode_state(header: dict[str, Any], parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Verify checksums and decode every tensor record into its effective value."""
    state: dict[str, torch.Tensor] = {}
    for name, rec in header["tensors"].items():
        if not isinstance(rec, dict) or not isinstance(rec.get("fields"), dict):
            raise FormatError(f"corrupted record for tensor {name!r}")
        fields: dict[str, torch.Tensor] = {}
        for field_name, frec in rec["fields"].items():
            if not isinstance(frec, dict) or not isinstance(frec.get("crc32"), dict):
                raise FormatError(f"corrupted field record {name}/{field_name}")
            stored = {}
            for part_name, crc in frec["crc32"].items():
                key = f"{name}/{field_name}/{part_name}"
                if key not in parts:
                    raise FormatError(f"payload {key!r} is missing from the file")
                if crc32(parts[key]) != crc:
                    raise FormatError(
                        f"checksum mismatch in payload {key!r}: the file is corrupted"
                    )
                stored[part_name] = parts[key]
            codec = get_codec(str(frec.get("codec")))
            try:
                fields[field_name] = codec.decode(stored, frec.get("meta") or {})
            except FormatError:
                raise
            except Exception as exc:
                raise FormatError(f"cannot decode {name}/{field_name}: {exc}") from None
        enc = constraints.Encoded(str(rec.get("kind")), fields, rec.get("meta") or {})
        value = constraints.decode(enc)
        if value.numel() > MAX_ELEMENTS:
            raise FormatError(f"tensor {name!r} claims {value.numel()} elements: refused")
        state[name] = value
    return state


def load(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Read a .mzip file back into a model (eval mode) and its header."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f".mzip file not found: {path}")
    return from_bytes(path.read_bytes(), name=str(path))


def from_bytes(data: bytes, *, name: str = "<bytes>") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from .mzip bytes."""
    header, parts = read_header(data)
    state = decode_state(header, parts)
    try:
        source = ModelSource.from_json(header["source"])
    except ModelError as exc:
        raise FormatError(f"{name}: {exc}") from None
    model = source.build()
    apply_architecture(model, header["architecture"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise FormatError(f"{name}: stored tensors do not fit the architecture: {detail}") from None
    model.modelzip_source = source
    return model.eval(), header
