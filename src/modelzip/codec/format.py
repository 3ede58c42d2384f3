"""The .mzip byte format, version 2 (specified in docs/FORMAT.md): bytes and JSON only.

Layout: a 14-byte fixed header (magic ``MZIP``, version, flags, header length, CRC-32), a
raw-deflate-compressed JSON header (model source, architecture, info, tensor records), a
binary payload table (length + CRC-32 per payload), then the payloads back to back. The JSON
is deflated with a preset dictionary of the format's own words, so a small model's metadata
stays a few hundred bytes.

Reading validates structure only: every length is checked against the file size before
anything is allocated, every payload is checksummed, the JSON may not inflate past
``MAX_HEADER``. What the tensors mean (``codec.pack``) and how a model is rebuilt
(``modelzip.mzip``) live elsewhere; nothing here knows ``torch.nn``.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

from modelzip.codec.base import DTYPES
from modelzip.codec.bits import Reader, varint
from modelzip.errors import FormatError

FORMAT = "modelzip"
MAGIC = b"MZIP"
VERSION = 2
FIXED = struct.Struct("<4sBBII")  # magic, version, flags, header length, header CRC-32
#: Refuse a single tensor larger than this many elements (hostile shapes).
MAX_ELEMENTS = 1 << 31
#: All tensors together may not expand past max(MIN_BUDGET, EXPANSION * file bytes) elements:
#: a hostile few-byte file cannot make the loader allocate gigabytes.
MIN_BUDGET, EXPANSION = 1 << 24, 4096
#: The JSON header may not inflate past this many bytes.
MAX_HEADER = 1 << 24
MAX_DIMS = 8
#: Preset deflate dictionary: the format's own vocabulary (keys, kinds, codecs, dtypes, layer
#: types and their argument names), nothing about any particular model or recipe. Part of the
#: format: never change it without bumping VERSION.
ZDICT = (
    b'"type":"Linear","args":{"in_features":"out_features":"bias":true}},"bias":false}},'
    b'"Conv2d","args":{"in_channels":"out_channels":"kernel_size":[3,3],"stride":[1,1],'
    b'"padding":[0,0],"dilation":[1,1],"groups":1,"padding_mode":"zeros"}},"Conv1d",'
    b'"BatchNorm2d","BatchNorm1d","args":{"num_features":"eps":1e-05,"momentum":0.1,'
    b'"affine":true,"track_running_stats":true}},"LayerNorm","args":{"normalized_shape":[],'
    b'"elementwise_affine":true,"Embedding","args":{"num_embeddings":"embedding_dim":'
    b'"padding_idx":null}},"Flatten","args":{"start_dim":1,"end_dim":-1}},"Identity",'
    b'"source":{"kind":"zoo","factory","hf","ref":"kwargs":{"in_shape":[1,28,28],'
    b'"num_classes":10}},"arch":{},"info":{"recipe":"data":"seed":0},'
    b'"t":[[".weight",".bias","dense",{},[["values","raw","f32",[]]]],"affine",{"bits":8,'
    b'"group_size":null},[["qdata","i8","u8","i32",["scale","f32",["zero_point",'
    b'"codebook",{"zero":1},[["indices","sparse-ans-col","sparse-ans","sparse-huffman",'
    b'"sparse-packed","bitmask","packed","huffman","ans","f16","bf16",["codebook","f32",'
)


def crc32(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def write(header: dict[str, Any], payloads: list[bytes]) -> bytes:
    """The file bytes for a JSON-able header object (source, arch, info, t) and payloads."""
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > MAX_HEADER:  # a reader would refuse it: never write such a file
        raise FormatError(
            f"the .mzip header would be {len(text):,} bytes, more than the {MAX_HEADER:,} a "
            "reader accepts (a very large recorded tokenizer?)"
        )
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=ZDICT)
    head = comp.compress(text) + comp.flush()
    table = varint(len(payloads)) + b"".join(
        varint(len(p)) + struct.pack("<I", crc32(p)) for p in payloads
    )
    fixed = FIXED.pack(MAGIC, VERSION, 0, len(head), crc32(head + table))
    return b"".join([fixed, head, table, *payloads])


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


def _inflate(head: memoryview) -> Any:
    d = zlib.decompressobj(-15, zdict=ZDICT)
    try:
        text = d.decompress(head, MAX_HEADER)
    except zlib.error as exc:
        raise FormatError(f"corrupted .mzip header: {exc}") from None
    if d.unconsumed_tail:
        raise FormatError(f"corrupted .mzip header: inflates past {MAX_HEADER} bytes")
    if not d.eof:
        raise FormatError("corrupted .mzip header: truncated deflate stream")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise FormatError("corrupted .mzip header: not valid JSON") from None


def _shape(obj: Any, where: str) -> list[int]:
    if (
        not isinstance(obj, list)
        or len(obj) > MAX_DIMS
        or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_ELEMENTS for d in obj
        )
    ):
        raise FormatError(f"{where}: bad shape {str(obj)[:80]} (at most {MAX_DIMS} dims >= 0)")
    if math.prod(obj) > MAX_ELEMENTS:
        raise FormatError(f"{where}: shape {obj} has more than {MAX_ELEMENTS} elements: refused")
    return obj


def _records(raw: Any) -> dict[str, Any]:
    """Validate the tensor records into {name: {kind, meta, fields: {f: {codec,dtype,shape}}}}."""
    if not isinstance(raw, list):
        raise FormatError("corrupted .mzip header: 't' (tensor records) is not a list")
    out: dict[str, Any] = {}
    for rec in raw:
        if not (isinstance(rec, list) and len(rec) == 4 and isinstance(rec[0], str)):
            raise FormatError(f"corrupted tensor record {str(rec)[:80]}")
        name, kind, meta, fields = rec
        if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(fields, list):
            raise FormatError(f"corrupted tensor record for {name!r}")
        frecs = {}
        for f in fields:
            if not (isinstance(f, list) and len(f) == 4 and all(isinstance(x, str) for x in f[:3])):
                raise FormatError(f"corrupted field record in tensor {name!r}: {str(f)[:80]}")
            if f[2] not in DTYPES:
                raise FormatError(f"tensor {name!r}: unknown dtype {f[2]!r}")
            frecs[f[0]] = {"codec": f[1], "dtype": f[2], "shape": _shape(f[3], f"{name}/{f[0]}")}
        out[name] = {"kind": kind, "meta": meta, "fields": frecs}
    return out


def read_header(data: bytes) -> tuple[dict[str, Any], dict[str, memoryview]]:
    """Parse and validate the container; returns (header, payloads by "tensor/field")."""
    view = memoryview(data)
    if len(view) < FIXED.size:
        raise FormatError(f"not a .mzip: {len(view)} bytes is shorter than the fixed header")
    magic, version, _flags, head_len, head_crc = FIXED.unpack_from(view)
    if magic != MAGIC:
        raise FormatError("not a .mzip: missing MZIP magic (format v1 files need modelzip 0.1)")
    if version != VERSION:
        raise FormatError(
            f"unsupported .mzip version {version}; this modelzip reads version {VERSION}"
        )
    if head_len > len(view) - FIXED.size:
        raise FormatError("truncated .mzip: header runs past the end of the file")
    r = Reader(view[FIXED.size :], ".mzip payload table")
    head = r.take(head_len)
    count = r.varint(r.remaining())
    table = []
    for _ in range(count):
        length = r.varint(len(view))
        table.append((length, int.from_bytes(r.take(4), "little")))
    if crc32(view[FIXED.size : FIXED.size + r.pos]) != head_crc:
        raise FormatError("checksum mismatch in the .mzip header: the file is corrupted")
    obj = _inflate(head)
    if not isinstance(obj, dict):
        raise FormatError("corrupted .mzip header: not a JSON object")
    for key in ("source", "arch"):
        if not isinstance(obj.get(key), dict):
            raise FormatError(f"corrupted .mzip header: {key!r} missing or not an object")
    records = _records(obj.get("t"))
    keys = [f"{n}/{f}" for n, rec in records.items() for f in rec["fields"]]
    if len(keys) != count:
        raise FormatError(f"corrupted .mzip: {len(keys)} fields but {count} payloads")
    parts: dict[str, memoryview] = {}
    for key, (length, crc) in zip(keys, table, strict=True):
        chunk = r.take(length)
        if crc32(chunk) != crc:
            raise FormatError(f"checksum mismatch in payload {key!r}: the file is corrupted")
        parts[key] = chunk
    r.done()
    header = {
        "format": FORMAT,
        "version": version,
        "source": obj["source"],
        "architecture": obj["arch"],
        "tensors": records,
        "info": obj.get("info") if isinstance(obj.get("info"), dict) else {},
        "payload_bytes": sum(length for length, _ in table),
    }
    return header, parts
