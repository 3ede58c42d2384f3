"""Sparse codecs: positions of nonzeros (relative indices / run lengths, a bitmask, or a
column-context mask) plus the nonzero values. Listed in ``codecs.CODECS``."""

from __future__ import annotations

import math

import numpy as np
import torch

from modelzip.codec import entropy
from modelzip.codec.base import (
    COLUMN_MAX_ROWS,
    GAP_CAP,
    SLOW_NS,
    SPARSE_MIN_ZEROS,
    Codec,
    code,
    fits_alphabet,
    from_bytes,
    ints,
    is_int,
    nonzero,
    offsets,
    to_bytes,
    to_dtype,
    uncode,
)
from modelzip.codec.bits import Reader, bitmap, section, unbitmap, unzigzag, varint, zigzag
from modelzip.errors import FormatError


def gaps_of(flat_nonzero: np.ndarray, cap: int) -> np.ndarray:
    """Run lengths of zeros before each nonzero; a symbol ``cap`` is a filler that skips
    ``cap`` zeros without an entry (Deep Compression's filler zeros)."""
    pos = np.flatnonzero(flat_nonzero)
    gaps = np.diff(pos, prepend=-1) - 1
    fillers = gaps // cap
    if not fillers.any():
        return gaps
    rep = fillers + 1
    out = np.full(int(rep.sum()), cap, dtype=np.int64)
    out[np.cumsum(rep) - 1] = gaps % cap
    return out


def positions_of(gaps: np.ndarray, cap: int, n: int) -> np.ndarray:
    """Inverse of ``gaps_of``: flat positions of the entries, validated against ``n``."""
    gaps = gaps.astype(np.int64)
    if gaps.size and (int(gaps.min()) < 0 or int(gaps.max()) > cap):
        raise FormatError(f"sparse index: gap symbol outside [0, {cap}]")
    entry = gaps != cap
    ends = np.cumsum(gaps + entry)  # elements consumed after each symbol (fillers included)
    if ends.size and int(ends[-1]) > n:
        raise FormatError(f"sparse index: gaps run {int(ends[-1])} elements, past the {n}")
    pos = (ends - 1)[entry]
    return pos


def sparse_streams(t: torch.Tensor, cap: int) -> list[np.ndarray]:
    """The symbol streams a gap-coded sparse codec entropy-codes: gaps (fillers at ``cap``),
    then the nonzero integer values offset by their minimum."""
    flat = t.detach().cpu().reshape(-1)
    nz = nonzero(flat).numpy()
    out = [gaps_of(nz, cap)]
    if is_int(t):
        out.append(offsets(ints(flat[torch.from_numpy(nz)]))[1])
    return out


class GapSparse(Codec):
    """Positions of nonzeros as gaps (+ fillers), then the nonzero values."""

    def applies_to(self, t: torch.Tensor) -> bool:
        if t.numel() == 0 or t.dtype == torch.bool:
            return False
        flat = t.reshape(-1)
        nz = nonzero(flat)
        if t.numel() - int(nz.sum()) < SPARSE_MIN_ZEROS * t.numel():
            return False
        # integer values go through the family's symbol coder: their range must fit it
        return not is_int(t) or fits_alphabet(self.family, offsets(ints(flat[nz]))[1])

    def encode(self, t: torch.Tensor) -> bytes:
        flat = t.detach().cpu().reshape(-1)
        nz = nonzero(flat).numpy()
        cap = self._pick_cap(nz)
        gaps = gaps_of(nz, cap)
        head = varint(cap) + varint(gaps.size) + section(code(self.family, gaps))
        return head + self._values(flat[torch.from_numpy(nz)])

    def _pick_cap(self, nz: np.ndarray) -> int:
        return GAP_CAP

    def _values(self, vals: torch.Tensor) -> bytes:
        if is_int(vals):
            v = ints(vals)
            lo, off = offsets(v)
            return varint(zigzag(lo)) + code(self.family, off)
        return to_bytes(vals)

    def decode(self, data: memoryview, dtype: torch.dtype, n: int) -> torch.Tensor:
        r = Reader(data, f"{self.name} payload")
        cap = r.varint(1 << 30)
        if cap < 1:
            raise FormatError("sparse index: gap cap must be >= 1")
        m = r.varint(n + n // cap + 1)
        pos = positions_of(uncode(self.family, r.section(), m), cap, n)
        k = pos.size
        if dtype.is_floating_point:
            vals = from_bytes(r.take(r.remaining()), dtype, k)
        else:
            lo = unzigzag(r.varint())
            vals = to_dtype(uncode(self.family, r.take(r.remaining()), k), dtype, lo)
        if k and not bool(nonzero(vals).all()):
            raise FormatError("sparse values: a stored entry is zero (corrupted index)")
        out = torch.zeros(n, dtype=dtype)
        out[torch.from_numpy(pos)] = vals
        return out

    def decode_ns(self, t: torch.Tensor) -> float:
        # a gap and a value per nonzero, plus fillers; measured ~3.6 symbol-times per nonzero
        nnz = int(nonzero(t.reshape(-1)).sum())
        return SLOW_NS.get(self.family, 0.0) * (3.6 * nnz + t.numel() / GAP_CAP)

    def streams(self, t: torch.Tensor) -> list[np.ndarray]:
        return [] if self.family == "packed" else sparse_streams(t, GAP_CAP)


class SparsePacked(GapSparse):
    """Deep Compression's format: fixed-width relative indices with filler entries."""

    name, family = "sparse-packed", "packed"

    def _pick_cap(self, nz: np.ndarray) -> int:
        # Choose the gap width that minimises entries x width (fillers included).
        best, best_cost = 1, None
        for width in range(1, 17):
            cap = (1 << width) - 1
            cost = gaps_of(nz, cap).size * width
            if best_cost is None or cost < best_cost:
                best, best_cost = cap, cost
        return best


class SparseHuffman(GapSparse):
    name, family = "sparse-huffman", "huffman"


class SparseAns(GapSparse):
    name, family = "sparse-ans", "ans"


class ColumnContext(Codec):
    """Sparse integer matrices: the nonzero mask coded with a per-column adaptive model
    (context = the input feature), then the nonzero codes with block-adaptive ANS."""

    name, family = "sparse-ans-col", "ans"

    def applies_to(self, t: torch.Tensor) -> bool:
        return (
            is_int(t)
            and t.dim() >= 2
            and t.shape[0] <= COLUMN_MAX_ROWS
            and SparseAns.applies_to(self, t)  # type: ignore[arg-type]
        )

    def encode(self, t: torch.Tensor) -> bytes:
        flat = t.detach().cpu().reshape(t.shape[0], -1)
        nz = (flat != 0).numpy()
        v = ints(flat[torch.from_numpy(nz)])
        lo, off = offsets(v)
        mask = entropy.column_mask_encode(nz)
        return section(mask) + varint(zigzag(lo)) + entropy.ans_encode(off)

    def decode(self, data: memoryview, dtype: torch.dtype, n: int) -> torch.Tensor:
        raise FormatError(f"{self.name} needs the tensor shape: use decode_shaped")

    def decode_shaped(self, data: memoryview, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
        if dtype.is_floating_point or len(shape) < 2:
            raise FormatError(f"{self.name} stores integer matrices, not {dtype} {shape}")
        rows = shape[0]
        cols = math.prod(shape[1:])
        if rows > COLUMN_MAX_ROWS:
            raise FormatError(f"{self.name}: {rows} rows exceed {COLUMN_MAX_ROWS}")
        r = Reader(data, f"{self.name} payload")
        mask = entropy.column_mask_decode(r.section(), rows, cols).ravel()
        k = int(mask.sum())
        lo = unzigzag(r.varint())
        vals = to_dtype(entropy.ans_decode(r.take(r.remaining()), k), dtype, lo)
        if k and not bool(nonzero(vals).all()):
            raise FormatError("sparse values: a stored entry is zero (corrupted mask)")
        out = torch.zeros(rows * cols, dtype=dtype)
        out[torch.from_numpy(mask)] = vals
        return out

    def streams(self, t: torch.Tensor) -> list[np.ndarray]:
        flat = t.detach().cpu().reshape(-1)
        nz = (flat != 0).numpy()
        v = ints(flat[torch.from_numpy(nz)])
        return [nz.astype(np.int64), offsets(v)[1]]

    def decode_ns(self, t: torch.Tensor) -> float:
        rows = SLOW_NS["mask-row"] * t.shape[0]  # one library call per row
        return rows + SLOW_NS["mask-bit"] * t.numel() + SLOW_NS["ans"] * int((t != 0).sum())


class Bitmask(Codec):
    """One bit per element (nonzero or not), then the nonzero values (packed ints or raw)."""

    name, family = "bitmask", "packed"

    def applies_to(self, t: torch.Tensor) -> bool:
        return GapSparse.applies_to(self, t)  # type: ignore[arg-type]

    def encode(self, t: torch.Tensor) -> bytes:
        flat = t.detach().cpu().reshape(-1)
        nz = nonzero(flat).numpy()
        return bitmap(nz) + GapSparse._values(self, flat[torch.from_numpy(nz)])  # type: ignore[arg-type]

    def decode(self, data: memoryview, dtype: torch.dtype, n: int) -> torch.Tensor:
        r = Reader(data, "bitmask payload")
        mask = unbitmap(r.take((n + 7) // 8), n)
        k = int(mask.sum())
        if dtype.is_floating_point:
            vals = from_bytes(r.take(r.remaining()), dtype, k)
        else:
            lo = unzigzag(r.varint())
            vals = to_dtype(uncode("packed", r.take(r.remaining()), k), dtype, lo)
        out = torch.zeros(n, dtype=dtype)
        out[torch.from_numpy(mask)] = vals
        return out
