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


def encode_options(t: torch.Tensor, coder: str = "auto") -> tuple[Option, Option | None]:
    """Encode with every applicable allowed codec: (the smallest output among codecs that
    decode at memory speed, the smallest among slow ones when it is smaller still)."""
    t = t.detach().cpu()
    fast: Option | None = None
    slow: Option | None = None
    for name in candidates(coder):
        codec = get_codec(name)
        if not codec.applies_to(t):
            continue
        data = codec.encode(t)
        cost = codec.decode_ns(t)
        if cost == 0.0 and (fast is None or len(data) < len(fast.data)):
            fast = Option(name, data, 0.0)
        elif cost > 0.0 and (slow is None or len(data) < len(slow.data)):
            slow = Option(name, data, cost)
    if fast is None:
        raise FormatError(f"no codec allowed by coder {coder!r} can store a {t.dtype} tensor")
    return fast, (slow if slow is not None and len(slow.data) < len(fast.data) else None)


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
