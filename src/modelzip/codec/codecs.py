"""Per-field codecs: how one tensor of the compact vocabulary becomes one stored payload.

A codec maps a tensor to bytes and back, bit-exactly; the file records the codec name,
dtype and shape. The packer tries every applicable codec allowed by the coder choice and
keeps the smallest output (``encode_smallest``). Families:

- ``raw`` (any dtype), ``f16`` / ``bf16`` (float32 values that are *exactly* representable
  in 16 bits: never a lossy cast);
- dense integer codes: ``packed`` (fixed-width sub-byte bit packing), ``huffman``, ``ans``;
- sparse (many zeros): ``sparse-packed`` (Deep Compression's relative indices: fixed-width
  gaps with filler entries), ``sparse-huffman`` / ``sparse-ans`` (run lengths of zeros and
  nonzero codes, entropy coded), ``bitmask`` (one bit per element plus the nonzero values);
- ``zstd`` / ``sparse-zstd``: byte-aligned codes through zstd's Huffman stage.

The codecs a file may name are the closed table ``CODECS`` below, listed explicitly; a name
outside it is a ``FormatError``. Every decoder checks lengths against its payload and the
declared element count before it allocates.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from modelzip.codec.base import DTYPE_NAMES, DTYPES, Codec, dtype_name  # noqa: F401  (the vocabulary callers import from here)
from modelzip.codec.dense import BF16, F16, Ans, Huffman, Packed, Raw
from modelzip.codec.sparse import Bitmask, ColumnContext, SparseAns, SparseHuffman, SparsePacked
from modelzip.codec.zstd import SparseZstd, Zstd
from modelzip.errors import FormatError, choices_text


def _table(*classes: type[Codec]) -> dict[str, type[Codec]]:
    table: dict[str, type[Codec]] = {}
    for cls in classes:
        if not cls.name or cls.name in table:
            raise ValueError(f"codec name {cls.name!r} is empty or listed twice")
        table[cls.name] = cls
    return table


#: Every codec a .mzip may name (part of the format: docs/FORMAT.md).
CODECS = _table(
    Raw, F16, BF16, Packed, Huffman, Ans,
    SparsePacked, SparseHuffman, SparseAns, ColumnContext, Bitmask,
    Zstd, SparseZstd,
)  # fmt: skip

#: Coder choices of the ``encode`` stage -> codec families allowed.
CODERS = {
    "auto": ("raw", "packed", "zstd", "huffman", "ans"),
    "zstd": ("raw", "packed", "zstd"),
    "ans": ("raw", "packed", "ans"),
    "huffman": ("raw", "packed", "huffman"),
    "packed": ("raw", "packed"),
    "raw": ("raw",),
}
#: Default for ``coder: auto``: how much estimated decode time the slow coders may add to
#: loading one file (they go where they save the most bytes per nanosecond). 0: files decode
#: at memory speed; zstd over byte-aligned codes is within a few percent of ANS.
DECODE_BUDGET_MS = 0.0


def get_codec(name: str) -> Codec:
    """A codec instance by name; unknown names are a FormatError naming the known ones."""
    cls = CODECS.get(name)
    if cls is None:
        raise FormatError(f"unknown codec {name!r}; known codecs: {choices_text(CODECS)}")
    return cls()


def codec_names() -> list[str]:
    return sorted(CODECS)


def candidates(coder: str = "auto") -> list[str]:
    """Codec names allowed by a coder choice (``auto`` allows all)."""
    if coder not in CODERS:
        raise FormatError(f"unknown coder {coder!r}; valid: {choices_text(CODERS)}")
    fams = CODERS[coder]
    return [n for n, c in sorted(CODECS.items()) if c.family in fams]


class Option(NamedTuple):
    """One codec's encoding of a tensor and its estimated decode time."""

    codec: str
    data: bytes
    decode_ns: float


#: Tensors with more elements than this are not encoded by every codec in full: the
#: applicable codecs are ranked by their output on a sample (``SAMPLE_CHUNKS`` evenly spaced
#: runs of ``SAMPLE_RUN`` elements), and only the ``SAMPLE_KEEP`` best are run on the whole
#: tensor, the smallest kept. On a 12M-weight embedding table this is several times faster
#: than trying all of them, and picks the same codec.
SAMPLE_MIN = 1 << 20
SAMPLE_CHUNKS = 16
SAMPLE_RUN = 1 << 14
SAMPLE_KEEP = 2


def sample_of(t: torch.Tensor) -> torch.Tensor:
    """Evenly spaced contiguous runs of a large tensor, flattened (rows kept whole where the
    codec reads a matrix: runs are whole rows when the tensor is 2-D or more)."""
    flat = t.reshape(-1)
    n = flat.numel()
    if t.dim() >= 2:
        row = n // t.shape[0]
        per = max(1, SAMPLE_RUN // max(row, 1))
        starts = torch.linspace(0, t.shape[0] - per, SAMPLE_CHUNKS).long().unique()
        rows = torch.cat([torch.arange(int(s), int(s) + per) for s in starts]).unique()
        return t.reshape(t.shape[0], -1)[rows].reshape(-1, *t.shape[1:])
    starts = torch.linspace(0, n - SAMPLE_RUN, SAMPLE_CHUNKS).long().unique()
    return torch.cat([flat[int(s) : int(s) + SAMPLE_RUN] for s in starts])


def _best(sized: list[tuple[bool, float, str]], slow_kind: bool) -> list[str]:
    return [name for kind, _, name in sized if kind == slow_kind][:SAMPLE_KEEP]


def encode_options(
    t: torch.Tensor, coder: str = "auto", *, slow: bool = True
) -> tuple[Option, Option | None]:
    """Encode with every applicable allowed codec: (the smallest output among codecs that
    decode at memory speed, the smallest among slow ones when it is smaller still).

    ``slow=False`` skips the slow (symbol-by-symbol) coders: the caller will not pick them
    (a decode budget of 0). Tensors over ``SAMPLE_MIN`` elements run the applicable codecs on
    a sample first and encode only the best ``SAMPLE_KEEP`` of each kind in full."""
    t = t.detach().cpu()
    names = []
    for name in candidates(coder):
        codec = get_codec(name)
        if codec.applies_to(t) and (slow or codec.decode_ns(t) == 0.0):
            names.append(name)
    if t.numel() > SAMPLE_MIN:
        part = sample_of(t)
        sized = []
        for name in names:
            codec = get_codec(name)
            fast_kind = codec.decode_ns(t) == 0.0
            size = len(codec.encode(part)) if codec.applies_to(part) else math.inf
            sized.append((not fast_kind, size, name))
        sized.sort()
        keep = [n for slow_kind in (False, True) for n in _best(sized, slow_kind)]
        names = [n for n in names if n in keep]
    fast: Option | None = None
    slow_opt: Option | None = None
    for name in names:
        codec = get_codec(name)
        data = codec.encode(t)
        cost = codec.decode_ns(t)
        if cost == 0.0 and (fast is None or len(data) < len(fast.data)):
            fast = Option(name, data, 0.0)
        elif cost > 0.0 and (slow_opt is None or len(data) < len(slow_opt.data)):
            slow_opt = Option(name, data, cost)
    if fast is None:
        raise FormatError(f"no codec allowed by coder {coder!r} can store a {t.dtype} tensor")
    if slow_opt is not None and len(slow_opt.data) < len(fast.data):
        return fast, slow_opt
    return fast, None


def choose(options: list[tuple[Option, Option | None]], budget_ns: float) -> list[Option]:
    """Per tensor, the slow (smaller) encoding where it saves the most bytes per estimated
    decode nanosecond, until the slow ones together reach ``budget_ns``; the fast one elsewhere.
    Deterministic: ties keep tensor order."""
    picked = [fast for fast, _ in options]
    slow_ones = [(i, fast, slow) for i, (fast, slow) in enumerate(options) if slow is not None]
    slow_ones.sort(key=lambda x: -(len(x[1].data) - len(x[2].data)) / max(x[2].decode_ns, 1e-9))
    spent = 0.0
    for i, _, slow in slow_ones:
        if spent + slow.decode_ns <= budget_ns:
            picked[i] = slow
            spent += slow.decode_ns
    return picked


def encode_smallest(t: torch.Tensor, coder: str = "auto") -> tuple[str, bytes]:
    """Encode with every applicable allowed codec and keep the smallest output."""
    fast, slow = encode_options(t, coder)
    best = slow or fast
    return best.codec, best.data
