"""Entropy coders for integer symbol streams: ANS (via ``constriction``) and canonical Huffman.

Both code a stream of ``n`` non-negative integers (``n`` is known to the caller) over an
alphabet ``0..max_symbol`` (at most ``ALPHABET_LIMIT`` symbols). Only the symbols that occur
(the *support*, stored as a bitmap) get probability.

ANS uses a block-adaptive order-0 model, so no frequency table is stored: the stream is cut
into blocks of doubling size and each block is coded with the Krichevsky-Trofimov estimate
(counts + 1/2) of all symbols before it. The decoder rebuilds the same counts, so one
``decode`` call per block suffices (fast), and the cost stays within a few bytes per block
of the empirical entropy. Huffman is the classic baseline (code lengths stored, at most
``MAX_HUFFMAN_LEN`` bits).
"""

from __future__ import annotations

import heapq

import numpy as np

from modelzip.codec.bits import Reader, bitmap, pack, section, unbitmap, unpack, varint
from modelzip.errors import FormatError

ALPHABET_LIMIT = 1 << 16
FIRST_BLOCK = 64
MAX_HUFFMAN_LEN = 20


def _support(symbols: np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray]:
    """(header bytes, support values, dense symbols 0..K-1)."""
    top = int(symbols.max()) if symbols.size else 0
    if top >= ALPHABET_LIMIT or (symbols.size and int(symbols.min()) < 0):
        raise ValueError(f"symbols must lie in [0, {ALPHABET_LIMIT}), got max {top}")
    present = np.zeros(top + 1, dtype=bool)
    present[symbols] = True
    support = np.flatnonzero(present)
    dense = np.searchsorted(support, symbols)
    return varint(top) + bitmap(present), support, dense


def _read_support(r: Reader) -> np.ndarray:
    top = r.varint(ALPHABET_LIMIT - 1)
    present = unbitmap(r.take((top + 8) // 8), top + 1)
    support = np.flatnonzero(present)
    if support.size == 0:
        raise FormatError("entropy stream: empty alphabet")
    return support


def _blocks(n: int) -> list[tuple[int, int]]:
    out, start, size = [], 0, FIRST_BLOCK
    while start < n:
        end = min(n, start + size)
        out.append((start, end))
        start, size = end, max(size, end)  # each block as long as everything before it
    return out


def ans_encode(symbols: np.ndarray) -> bytes:
    """ANS-code ``symbols`` (block-adaptive order-0 model, no table)."""
    import constriction

    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if symbols.size == 0:
        return b""
    head, support, dense = _support(symbols)
    k = support.size
    if k == 1:
        return head
    blocks = _blocks(symbols.size)
    counts = np.zeros((len(blocks), k), dtype=np.float64)
    acc = np.zeros(k, dtype=np.float64)
    for j, (a, b) in enumerate(blocks):
        counts[j] = acc
        acc = acc + np.bincount(dense[a:b], minlength=k)
    coder = constriction.stream.stack.AnsCoder()
    dense32 = dense.astype(np.int32)
    for j in range(len(blocks) - 1, -1, -1):
        a, b = blocks[j]
        model = constriction.stream.model.Categorical(counts[j] + 0.5, perfect=False)
        coder.encode_reverse(dense32[a:b], model)
    words = coder.get_compressed().astype("<u4").tobytes()
    return head + section(words)


def _open_stream(
    data: bytes | memoryview, n: int, what: str
) -> tuple[Reader, np.ndarray, np.ndarray | None]:
    """Start decoding a coded stream: (reader, symbol support, the result when the stream is
    trivial: empty, or one symbol repeated, which need no coded bits)."""
    if n == 0:
        if len(data):
            raise FormatError(f"{what}: data present for an empty stream")
        return Reader(data, what), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    r = Reader(data, what)
    support = _read_support(r)
    if support.size == 1:
        r.done()
        return r, support, np.full(n, support[0], dtype=np.int64)
    return r, support, None


def ans_decode(data: bytes | memoryview, n: int) -> np.ndarray:
    """Inverse of ``ans_encode`` for a stream of ``n`` symbols."""
    import constriction

    r, support, trivial = _open_stream(data, n, "ans stream")
    if trivial is not None:
        return trivial
    k = support.size
    raw = r.section()
    r.done()
    if len(raw) % 4:
        raise FormatError("ans stream: compressed words are not whole 32-bit words")
    words = np.frombuffer(raw, dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        out = np.empty(n, dtype=np.int64)
        acc = np.zeros(k, dtype=np.float64)
        for a, b in _blocks(n):
            model = constriction.stream.model.Categorical(acc + 0.5, perfect=False)
            got = np.asarray(coder.decode(model, b - a), dtype=np.int64)
            out[a:b] = got
            acc = acc + np.bincount(got, minlength=k)
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise FormatError(f"ans stream: cannot decode ({exc})") from None
    if out.size and (int(out.max()) >= k or int(out.min()) < 0):
        raise FormatError("ans stream: decoded a symbol outside the alphabet")
    return support[out]


def column_mask_encode(mask: np.ndarray) -> bytes:
    """ANS-code a 2-D boolean mask row by row, each bit with the adaptive (KT) probability of
    its *column* so far: columns (input features) differ widely in how many weights survive
    pruning, which the order-0 model of a flat gap stream cannot see."""
    import constriction

    mask = np.asarray(mask, dtype=bool)
    rows = mask.shape[0]
    before = np.cumsum(mask, axis=0, dtype=np.float64) - mask
    probs = (before + 0.5) / (np.arange(rows, dtype=np.float64)[:, None] + 1.0)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(
        mask.astype(np.int32).ravel(),
        constriction.stream.model.Bernoulli(perfect=False),
        probs.ravel(),
    )
    return coder.get_compressed().astype("<u4").tobytes()


def column_mask_decode(data: bytes | memoryview, rows: int, cols: int) -> np.ndarray:
    """Inverse of ``column_mask_encode`` (one vectorized decode call per row)."""
    import constriction

    if len(data) % 4:
        raise FormatError("mask stream: compressed words are not whole 32-bit words")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    out = np.empty((rows, cols), dtype=bool)
    ones = np.zeros(cols, dtype=np.float64)
    model = constriction.stream.model.Bernoulli(perfect=False)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        for i in range(rows):
            bits = np.asarray(coder.decode(model, (ones + 0.5) / (i + 1.0)), dtype=bool)
            out[i] = bits
            ones += bits
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise FormatError(f"mask stream: cannot decode ({exc})") from None
    return out


# ----------------------------------------------------------------------------------- Huffman


def huffman_lengths(counts: np.ndarray, max_len: int = MAX_HUFFMAN_LEN) -> np.ndarray:
    """Code length per symbol (all counts > 0); counts are flattened until within ``max_len``."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 1:
        return np.ones(1, dtype=np.int64)
    while True:
        heap: list[tuple[int, int, tuple[int, ...]]] = [
            (int(c), i, (i,)) for i, c in enumerate(counts)
        ]
        heapq.heapify(heap)
        lengths = np.zeros(counts.size, dtype=np.int64)
        tie = counts.size
        while len(heap) > 1:
            c1, _, s1 = heapq.heappop(heap)
            c2, _, s2 = heapq.heappop(heap)
            for s in s1 + s2:
                lengths[s] += 1
            heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
            tie += 1
        if lengths.max() <= max_len:
            return lengths
        counts = (counts + 1) // 2


def _canonical(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes (ints, MSB first) for given lengths, in symbol order."""
    order = np.lexsort((np.arange(lengths.size), lengths))
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, prev = 0, int(lengths[order[0]])
    for rank, s in enumerate(order):
        ln = int(lengths[s])
        if rank:
            code = (code + 1) << (ln - prev)
        codes[s] = code
        prev = ln
    return codes


def huffman_encode(symbols: np.ndarray) -> bytes:
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if symbols.size == 0:
        return b""
    head, support, dense = _support(symbols)
    if support.size == 1:
        return head
    lengths = huffman_lengths(np.bincount(dense, minlength=support.size))
    codes = _canonical(lengths)
    ln = lengths[dense]
    total = int(ln.sum())
    starts = np.repeat(np.cumsum(ln) - ln, ln)
    pos = np.arange(total) - starts
    lens_rep = np.repeat(ln, ln)
    bits = (np.repeat(codes[dense], ln) >> (lens_rep - 1 - pos)) & 1
    payload = np.packbits(bits.astype(np.uint8)).tobytes()
    return head + pack(lengths - 1, 5) + section(payload)


def huffman_decode(data: bytes | memoryview, n: int) -> np.ndarray:
    r, support, trivial = _open_stream(data, n, "huffman stream")
    if trivial is not None:
        return trivial
    k = support.size
    lengths = unpack(r.take((k * 5 + 7) // 8), 5, k) + 1
    if (np.sum(2.0 ** -lengths.astype(np.float64))) > 1.0 + 1e-12:
        raise FormatError("huffman stream: code lengths violate the Kraft inequality")
    raw = r.section()
    r.done()
    if n > len(raw) * 8:
        raise FormatError(f"huffman stream: {n} symbols cannot fit in {len(raw)} bytes")
    width = int(lengths.max())
    codes = _canonical(lengths)
    # Lookup table over every ``width``-bit window: symbol and its code length.
    sym_tab = np.full(1 << width, -1, dtype=np.int64)
    len_tab = np.zeros(1 << width, dtype=np.int64)
    for s in range(k):
        lo = int(codes[s]) << (width - int(lengths[s]))
        hi = lo + (1 << (width - int(lengths[s])))
        sym_tab[lo:hi] = s
        len_tab[lo:hi] = lengths[s]
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8)).astype(np.int64)
    bits = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
    nwin = len(bits) - width + 1
    win = np.zeros(nwin, dtype=np.int64)
    for i in range(width):
        win = (win << 1) | bits[i : i + nwin]
    win_l, sym_l, len_l = win.tolist(), sym_tab.tolist(), len_tab.tolist()
    out = [0] * n
    p, limit = 0, len(raw) * 8
    for i in range(n):
        w = win_l[p]
        s = sym_l[w]
        if s < 0:
            raise FormatError("huffman stream: invalid code")
        out[i] = s
        p += len_l[w]
        if p > limit:
            raise FormatError("huffman stream: runs past its data (truncated?)")
    return support[np.asarray(out, dtype=np.int64)]
