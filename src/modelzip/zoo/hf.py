"""Sentence-embedding models from a local Hugging Face / sentence-transformers folder.

The encoder takes token ids (padding id 0 marks padding) and returns the mean-pooled,
L2-normalised sentence embedding, exactly as sentence-transformers' all-MiniLM-L6-v2
pipeline (Transformer -> mean Pooling -> Normalize) does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.errors import FormatError, ModelError
from modelzip.zoo import tokens
from modelzip.zoo.tokens import TextTokenizer

#: config.json keys that would ask transformers to import code: never honoured.
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")


class SentenceEncoder(nn.Module):
    """A transformers encoder with mean pooling and normalisation, on token-id input."""

    def __init__(self, encoder: nn.Module, pad_id: int = 0, tokenizer: TextTokenizer | None = None):
        super().__init__()
        self.encoder = encoder
        self.pad_id = pad_id
        #: what turns text into this model's token ids (``modelzip.zoo.tokens``); None: the
        #: bundled MiniLM tokenizer (the zoo's MiniLM, files that recorded none)
        self.tokenizer = tokenizer

    def token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Which positions hold real tokens (True) rather than padding: what attention and
        pooling read, and what calibration statistics should (``methods.gptq``)."""
        return input_ids != self.pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = self.token_mask(input_ids).to(torch.int64)
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
    pad = int(getattr(encoder.config, "pad_token_id", 0) or 0)
    return SentenceEncoder(encoder.eval(), pad, tokens.from_folder(folder, pad)).eval()


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The folder's ``config.json`` values as plain JSON (what a .mzip records)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: not a Hugging Face model folder (no config.json)")
    _quiet_transformers()
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: cannot read config.json ({exc})") from None
    values = config.to_dict()
    for key in (*REMOTE_CODE_KEYS, "_name_or_path"):  # no code, no local paths
        values.pop(key, None)
    return json.loads(json.dumps(values, default=str))


def encoder_from_config(
    values: dict[str, Any],
    *,
    max_elements: int | None = None,
    tokenizer: str | None = None,
) -> nn.Module:
    """A freshly initialised encoder from recorded config values, built by transformers' own
    class for the recorded ``model_type``; nothing the values name is imported or called.
    With ``max_elements``, architectures whose tensors hold more elements are refused before
    anything real is allocated. ``tokenizer``: the recorded ``tokenizer.json`` text."""
    _quiet_transformers()
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = values.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise FormatError(f"unknown Hugging Face model_type {str(model_type)[:40]!r}")
    kwargs = {k: v for k, v in values.items() if k not in (*REMOTE_CODE_KEYS, "model_type")}
    try:
        config = AutoConfig.for_model(model_type, **kwargs)
        if max_elements is not None:
            with torch.device("meta"):
                probe = AutoModel.from_config(config, trust_remote_code=False)
            n = sum(t.numel() for t in [*probe.parameters(), *probe.buffers()])
            if n > max_elements:
                raise FormatError(
                    f"the recorded {model_type} config declares {n} weights, more than this "
                    "file can hold (hostile architecture?)"
                )
        encoder = AutoModel.from_config(config, trust_remote_code=False)
    except FormatError:
        raise
    except Exception as exc:  # transformers raises many types on bad config values
        raise FormatError(f"cannot build the recorded {model_type} config: {exc}") from None
    pad = int(getattr(encoder.config, "pad_token_id", 0) or 0)
    tok = tokens.from_spec(tokenizer, pad, "the .mzip") if tokenizer is not None else None
    return SentenceEncoder(encoder.eval(), pad, tok).eval()
