"""Weight sharing as a parametrization: the weight is ``codebook[indices]``.

The codebook is an ``nn.Parameter`` of the parametrization and the indices a buffer, so a
fine-tuning stage trains the shared centroids by the summed gradients of their members while
every weight keeps its cluster (Deep Compression §3): autograd's backward of the gather sums
the gradients per index. Pruned weights point at a reserved slot 0 that is a constant zero,
so they stay exactly zero and carry the pruning mask inside the indices.

Example:
    >>> cb = Codebook(torch.tensor([[1, 0], [2, 1]]), torch.tensor([-0.5, 0.5]), zero_slot=True)
    >>> cb(torch.zeros(2, 2))
    tensor([[-0.5000,  0.0000], [ 0.5000, -0.5000]], grad_fn=...)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from modelzip.errors import FormatError
from modelzip.nn.constraints import Constraint, Encoded


def index_dtype(n_codes: int) -> torch.dtype:
    """Smallest unsigned-friendly integer dtype for codes 0..n_codes-1."""
    if n_codes <= 256:
        return torch.uint8
    if n_codes <= 32768:
        return torch.int16
    return torch.int32


#: From this many codes on, ``lookup`` gathers two codes at a time (the setup is ~0.3 ms).
PAIR_LOOKUP_MIN = 1 << 16


def lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table[idx]`` for decoding. Byte codes into a float32 table of at most 256 entries are
    gathered in pairs: the codes viewed as 16-bit numbers index a table of every value pair,
    which halves the gathers (the cost of a gather, not of memory, bounds this step)."""
    if (
        idx.dtype != torch.uint8
        or table.dtype != torch.float32
        or table.numel() > 256
        or idx.numel() < PAIR_LOOKUP_MIN
    ):
        return table[idx.long()]
    values = torch.zeros(256, dtype=torch.float32)
    values[: table.numel()] = table.detach()
    v = values.numpy()
    pairs = np.empty((256, 256, 2), dtype=np.float32)  # [high byte, low byte] -> (low, high)
    pairs[:, :, 0] = v[None, :]
    pairs[:, :, 1] = v[:, None]
    codes = idx.reshape(-1).contiguous().numpy()
    even = codes.size - codes.size % 2
    halves = codes[:even].view("<u2")  # little-endian: code 2i in the low byte
    out = np.empty(codes.size, dtype=np.float32)
    flat_pairs = pairs.reshape(-1, 2).view(np.int64).reshape(-1)
    # mode="clip" is a no-op here (every 16-bit number is a row) but skips numpy's buffering
    np.take(flat_pairs, halves, out=out[:even].view(np.int64), mode="clip")
    if even < codes.size:
        out[-1] = v[codes[-1]]
    return torch.from_numpy(out).reshape(idx.shape)


class Codebook(Constraint):
    """Shared values: ``forward`` returns ``table[indices]`` whatever its input.

    Args:
        indices: integer codes, the weight's shape. With ``zero_slot`` code 0 is the constant
            zero and codes 1..K select ``codebook[code - 1]``.
        codebook: K shared values (a Parameter may be passed to share it across layers).
        zero_slot: reserve code 0 for exact zeros (pruned weights).
    """

    kind = "codebook"
    indices: torch.Tensor

    def __init__(
        self, indices: torch.Tensor, codebook: torch.Tensor, *, zero_slot: bool = False
    ) -> None:
        super().__init__()
        n_codes = codebook.numel() + int(zero_slot)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_codes):
            raise ValueError(f"indices must lie in [0, {n_codes}), got a code out of range")
        self.zero_slot = bool(zero_slot)
        self.register_buffer("indices", indices.to(index_dtype(n_codes)))
        if isinstance(codebook, nn.Parameter):
            self.codebook = codebook
        else:
            self.codebook = nn.Parameter(codebook.detach().float().clone())

    def table(self) -> torch.Tensor:
        """Value of every code (slot 0 is a constant zero when ``zero_slot``)."""
        if self.zero_slot:
            return torch.cat([self.codebook.new_zeros(1), self.codebook])
        return self.codebook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table()[self.indices.long()].to(x.dtype)

    def encode(self, x: torch.Tensor) -> Encoded:
        return Encoded(
            self.kind,
            {"indices": self.indices.detach().clone(), "codebook": self.codebook.detach().float()},
            {"zero": int(self.zero_slot)},
        )

    gather_field = "indices"

    @classmethod
    def gather_table(cls, fields: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        cb = fields.get("codebook")
        if cb is None:
            raise FormatError("codebook tensor needs fields 'indices' and 'codebook'")
        if cb.dim() != 1 or not cb.is_floating_point():
            raise FormatError("codebook must be a 1-D float tensor")
        zero = bool(meta.get("zero", 0)) if isinstance(meta, dict) else False
        return torch.cat([cb.new_zeros(1), cb]) if zero else cb

    @classmethod
    def decode(cls, fields: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        idx = fields.get("indices")
        if idx is None:
            raise FormatError("codebook tensor needs fields 'indices' and 'codebook'")
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise FormatError(f"codebook indices must be integers, got {idx.dtype}")
        table = cls.gather_table(fields, meta)
        if idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= table.numel():
                raise FormatError(
                    f"codebook index out of range: codes span [{lo}, {hi}] but the table has "
                    f"{table.numel()} entries"
                )
        return lookup(table, idx)


class RowCodebook(Constraint):
    """One codebook per row (or per group of ``group_size`` values along each row):
    ``weight.reshape(R, -1)[r, j] = codebook[r, indices[r, j]]`` with R = rows x groups.

    The codebooks are fixed after fitting (``cluster`` with ``per: row|group``); the stored
    form is the indices (the weight's shape) and the (R, K) tables."""

    kind = "row-codebook"
    indices: torch.Tensor
    codebook: torch.Tensor

    def __init__(self, indices: torch.Tensor, codebook: torch.Tensor) -> None:
        super().__init__()
        self._check(indices, codebook)
        self.register_buffer("indices", indices)
        self.register_buffer("codebook", codebook.float())

    @staticmethod
    def _check(idx: torch.Tensor, cb: torch.Tensor) -> None:
        if idx.is_floating_point() or idx.dtype == torch.bool or idx.dim() < 1:
            raise FormatError(f"row codebook indices must be integers, got {idx.dtype}")
        if cb.dim() != 2 or not cb.is_floating_point() or cb.shape[0] == 0:
            raise FormatError(f"row codebook must be a 2-D float table, got {tuple(cb.shape)}")
        if idx.numel() % cb.shape[0]:
            raise FormatError(
                f"row codebook: {cb.shape[0]} tables do not divide {idx.numel()} indices"
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= cb.shape[1]):
            raise FormatError(f"row codebook index out of range [0, {cb.shape[1]})")

    @staticmethod
    def _value(idx: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
        flat = idx.reshape(cb.shape[0], -1).long()
        return torch.gather(cb.float(), 1, flat).reshape(idx.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._value(self.indices, self.codebook).to(x.dtype)

    def encode(self, x: torch.Tensor) -> Encoded:
        fields = {"indices": self.indices.clone(), "codebook": self.codebook.clone()}
        return Encoded(self.kind, fields, {})

    @classmethod
    def decode(cls, fields: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        idx, cb = fields.get("indices"), fields.get("codebook")
        if idx is None or cb is None:
            raise FormatError("row codebook needs fields 'indices' and 'codebook'")
        cls._check(idx, cb)
        return cls._value(idx, cb)
