"""Sentence-embedding models from a local Hugging Face / sentence-transformers folder.

The encoder takes token ids (padding id 0 marks padding) and returns the mean-pooled,
L2-normalised sentence embedding, exactly as sentence-transformers' all-MiniLM-L6-v2
pipeline (Transformer -> mean Pooling -> Normalize) does.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.errors import ModelError


class SentenceEncoder(nn.Module):
    """A transformers encoder with mean pooling and normalisation, on token-id input."""

    def __init__(self, encoder: nn.Module, pad_id: int = 0):
        super().__init__()
        self.encoder = encoder
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_id).to(torch.int64)
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, p=2, dim=1)


def build_encoder(folder: str | os.PathLike[str], *, pretrained: bool) -> SentenceEncoder:
    """The architecture from ``config.json``; the pretrained weights too when asked."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: not a Hugging Face model folder (no config.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        if pretrained:
            encoder = AutoModel.from_pretrained(str(folder), local_files_only=True)
        else:
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: cannot load the model ({exc})") from None
    pad = getattr(encoder.config, "pad_token_id", 0) or 0
    return SentenceEncoder(encoder.eval(), pad_id=int(pad)).eval()
