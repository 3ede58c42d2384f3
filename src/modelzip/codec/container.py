"""The .mzip container (format version 2; spec and threat model in docs/FORMAT.md).

Layout: a 14-byte fixed header (magic ``MZIP``, version, flags, header length, CRC-32), a
raw-deflate-compressed JSON header (model source, architecture, info, tensor records), a
binary payload table (length + CRC-32 per payload), then the payloads back to back. The JSON
is deflated with a preset dictionary of the format's own words, so a small model's metadata
stays a few hundred bytes.

Loading never unpickles and never runs code from the file; every length is checked against
the file size before anything is allocated; every payload is checksummed; writes go to a
temporary file renamed into place.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

import modelzip.nn.codebook  # noqa: F401  (registers the "codebook" kind for decoding)
from modelzip.codec.bits import Reader, varint
from modelzip.codec.codecs import (
    DECODE_BUDGET_MS,
    DTYPES,
    choose,
    dtype_name,
    encode_options,
    get_codec,
)
from modelzip.errors import FormatError, ModelError
from modelzip.nn import constraints
from modelzip.nn.specs import apply_architecture, architecture
from modelzip.source import ATTR, ModelSource, source_of

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
#: Model attributes the ``encode`` stage sets to choose the coder and, for ``auto``, the
#: decode-time budget of the slow entropy coders in ms (read here, nowhere else).
CODER_ATTR = "modelzip_coder"
BUDGET_ATTR = "modelzip_decode_budget_ms"
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


T = TypeVar("T")
R = TypeVar("R")


def crc32(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def to_bytes(model: nn.Module, *, info: dict[str, Any] | None = None) -> bytes:
    """Serialize a (constrained) model into .mzip bytes."""
    source = source_of(model)
    if source is None:
        raise ModelError(
            "the model has no recorded source (zoo name or FILE.py:FACTORY); build it with "
            "modelzip.load_model so the file can rebuild its architecture"
        )
    coder = getattr(model, CODER_ATTR, "auto")
    budget_ms = getattr(model, BUDGET_ATTR, DECODE_BUDGET_MS) if coder == "auto" else None
    records: list[list[Any]] = []
    options = []
    for name, enc in constraints.iter_state(model):
        fields = []
        for field_name, t in enc.fields.items():
            t = t.detach().cpu()
            options.append(encode_options(t, coder))
            fields.append([field_name, "", dtype_name(t.dtype), list(t.shape)])
        records.append([name, enc.kind, enc.meta or {}, fields])
    picked = iter(choose(options, math.inf if budget_ms is None else budget_ms * 1e6))
    payloads: list[bytes] = []
    for rec in records:
        for field in rec[3]:
            option = next(picked)
            field[1] = option.codec
            payloads.append(option.data)
    header = {
        "source": source.to_json(),
        "arch": changed_architecture(model, source),
        "info": info or {},
        "t": records,
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=ZDICT)
    head = comp.compress(text) + comp.flush()
    table = varint(len(payloads)) + b"".join(
        varint(len(p)) + struct.pack("<I", crc32(p)) for p in payloads
    )
    fixed = FIXED.pack(MAGIC, VERSION, 0, len(head), crc32(head + table))
    return b"".join([fixed, head, table, *payloads])


@functools.lru_cache(maxsize=8)
def _source_architecture(source_json: str) -> dict[str, Any]:
    return architecture(ModelSource.from_json(json.loads(source_json)).build())


def changed_architecture(model: nn.Module, source: ModelSource) -> dict[str, Any]:
    """Specs of the modules that differ from what the source builds (smaller layers after
    surgery, replacement modules): all the loader needs on top of the source."""
    base = _source_architecture(json.dumps(source.to_json(), sort_keys=True))
    return {name: spec for name, spec in architecture(model).items() if base.get(name) != spec}


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
    cls = constraints.kind_class(rec["kind"])
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
        return constraints.decode(enc)
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
    import modelzip.methods  # noqa: F401  (every method's constraint kinds register on import)

    _check_elements(header, max(MIN_BUDGET, EXPANSION * file_bytes))
    items = list(header["tensors"].items())
    values = _map(lambda item: _value(item[0], item[1], parts), items)
    return {name: value for (name, _), value in zip(items, values, strict=True)}


def _positive_ints(obj: Any) -> list[int]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int):
        return [obj] if obj > 0 else []
    if isinstance(obj, list | tuple):
        return [i for x in obj for i in _positive_ints(x)]
    if isinstance(obj, dict):
        return [i for x in obj.values() for i in _positive_ints(x)]
    return []


def check_build_size(header: dict[str, Any], budget: int) -> None:
    """Refuse module specs / source arguments whose integer sizes multiply past ``budget``.

    Building a module allocates its parameters before any stored tensor is loaded, so a
    hostile ``Linear(10**9, 10**9)`` must be stopped here. The product of an entry's positive
    integer arguments bounds the parameter count of every layer type modelzip builds.
    """
    entries = [("source", header["source"].get("kwargs", {}))]
    entries += [
        (n, s.get("args", {}) if isinstance(s, dict) else {})
        for n, s in header["architecture"].items()
    ]
    for name, args in entries:
        size = 1
        for v in _positive_ints(args):
            size *= v
            if size > budget:
                raise FormatError(
                    f"module {name!r} in the file declares sizes {str(args)[:80]} too large "
                    "for this file (hostile architecture?)"
                )


def _shared_tensors(model: nn.Module) -> list[list[str]]:
    """Names of parameters (tied weights) and of buffers that are one tensor object, grouped."""
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    for n, b in model.named_buffers(remove_duplicate=False):
        groups.setdefault(id(b), []).append(n)
    return [names for names in groups.values() if len(names) > 1]


def load(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Read a .mzip file back into a model (eval mode) and its header."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f".mzip file not found: {path}")
    return from_bytes(path.read_bytes(), name=str(path))


class _NeedsRealInit(Exception):
    """The architecture cannot be built with parameters on the meta device."""


def _assemble(
    source: ModelSource, arch: dict[str, Any], state: dict[str, torch.Tensor], *, empty: bool
) -> nn.Module:
    """Build the architecture and assign the decoded tensors. ``empty`` skips parameter
    initialisation (parameters on meta); a constructor that needs real values (an init meta
    tensors cannot run, a tensor computed from a parameter) raises ``_NeedsRealInit``."""
    try:
        model = source.build(empty=empty)
    except (ModelError, KeyError, TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
        if empty:
            raise _NeedsRealInit from None
        raise FormatError(f"cannot build the recorded model source: {exc}") from None
    apply_architecture(model, arch)
    shared = _shared_tensors(model)
    # Assigning installs the stored tensors as they are: give each the dtype the architecture
    # declares, as copying into the built tensors would.
    declared = {n: t.dtype for n, t in [*model.named_parameters(), *model.named_buffers()]}
    state = {
        k: v.to(declared[k]) if k in declared and v.dtype != declared[k] else v
        for k, v in state.items()
    }
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise FormatError(f"stored tensors do not fit the architecture: {detail}") from None
    params = dict(model.named_parameters(remove_duplicate=False))
    for names in shared:  # assigning split what the constructor shared: share it again
        keep = params[names[0]] if names[0] in params else model.get_buffer(names[0])
        for other in names[1:]:
            owner, _, attr = other.rpartition(".")
            setattr(model.get_submodule(owner), attr, keep)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    left += [
        f"{m}.{a}"
        for m, mod in model.named_modules()
        for a, v in vars(mod).items()
        if isinstance(v, torch.Tensor) and v.is_meta
    ]
    if left and empty:
        raise _NeedsRealInit
    if left:
        raise FormatError(f"the file holds no values for {left[:3]}")
    return model


def from_bytes(data: bytes, *, name: str = "<bytes>") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from .mzip bytes."""
    header, parts = read_header(data)
    check_build_size(header, max(MIN_BUDGET, EXPANSION * len(data)))
    state = decode_state(header, parts, file_bytes=len(data))
    try:
        source = ModelSource.from_json(header["source"])
    except ModelError as exc:
        raise FormatError(f"{name}: {exc}") from None
    try:
        try:
            model = _assemble(source, header["architecture"], state, empty=True)
        except _NeedsRealInit:
            model = _assemble(source, header["architecture"], state, empty=False)
    except FormatError as exc:
        raise FormatError(f"{name}: {exc}") from None
    setattr(model, ATTR, source)  # model.modelzip_source
    return model.eval(), header
