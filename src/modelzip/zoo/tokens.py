"""Text to token ids with the model's own tokenizer.

Which ids a sentence becomes depends on the model's vocabulary, so text is always tokenized by
the tokenizer that came with the model: the ``tokenizer.json`` of its Hugging Face folder, which
a .mzip made from that folder records. Only models that carry none (the zoo's MiniLM, files
written before tokenizers were recorded) use the bundled MiniLM tokenizer, which is what they
were made with. A RoBERTa- or MPNet-style model read through MiniLM's BERT WordPiece would get
ids from another vocabulary, and padding (id 0) that its own padding id (1) does not mask.

The tokenizer is kept as the text of its ``tokenizer.json`` (the ``tokenizers`` library's
complete serialised form: normaliser, pre-tokeniser, vocabulary, special-token template) and
read by that library's JSON parser: data only, nothing in it is imported or executed.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modelzip.errors import FormatError, ModelError, first_line

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from torch import nn

FILE = "tokenizer.json"
#: The files of tokenizers saved without ``tokenizer.json`` (WordPiece, BPE, SentencePiece),
#: from which ``transformers`` builds the same fast tokenizer. Without any of them
#: ``transformers`` 5 still returns a tokenizer (of its special tokens only): never used.
SLOW_FILES = (
    "vocab.txt",
    "vocab.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)


@dataclass(frozen=True)
class TextTokenizer:
    """A tokenizer as its ``tokenizer.json`` text (``spec``) and the model's padding id."""

    spec: str
    pad_id: int

    @property
    def key(self) -> str:
        """Equal for tokenizers that give the same ids (what a data set was tokenized with)."""
        return hashlib.sha256(f"{self.pad_id}|{self.spec}".encode()).hexdigest()[:16]

    def encode(self, texts: list[str], *, max_tokens: int, pad_to_max: bool) -> torch.Tensor:
        """Token ids ``[len(texts), length]`` (int64): special tokens added, truncated at
        ``max_tokens``, padded with ``pad_id`` to ``max_tokens`` or to the longest text."""
        tok = _configured(self.spec, self.pad_id, max_tokens, pad_to_max)
        return torch.tensor([e.ids for e in tok.encode_batch(texts)], dtype=torch.int64)


@functools.lru_cache(maxsize=8)
def _backend(spec: str) -> Tokenizer:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(spec)


@functools.lru_cache(maxsize=16)
def _configured(spec: str, pad_id: int, max_tokens: int, pad_to_max: bool) -> Tokenizer:
    """A tokenizer of its own per padding and truncation setting, never changed afterwards,
    so threads may encode with different settings at once."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(spec)
    pad_token = tok.id_to_token(pad_id)
    if pad_token is None:  # checked when made; a hand-built one may still lack it
        raise ModelError(f"the tokenizer has no token with the padding id {pad_id}")
    tok.enable_truncation(max_length=max_tokens)
    tok.enable_padding(
        pad_id=pad_id, pad_token=pad_token, length=max_tokens if pad_to_max else None
    )
    return tok


def from_spec(spec: Any, pad_id: int, where: str) -> TextTokenizer:
    """A checked tokenizer from ``tokenizer.json`` text (a file's or a .mzip's record)."""
    if not isinstance(spec, str):
        raise FormatError(f"{where}: the recorded tokenizer is not text")
    try:
        tok = _backend(spec)
    except Exception as exc:  # the tokenizers library raises its own exception types
        raise FormatError(f"{where}: not a tokenizers tokenizer.json ({first_line(exc)})") from None
    if tok.id_to_token(pad_id) is None:
        raise FormatError(f"{where}: the tokenizer has no token with padding id {pad_id}")
    return TextTokenizer(spec, pad_id)


def from_folder(folder: str | Path, pad_id: int) -> TextTokenizer:
    """The tokenizer of a Hugging Face folder: its ``tokenizer.json``, or the fast form that
    ``transformers`` builds from its other tokenizer files. A ModelError when it has none."""
    folder = Path(folder)
    path = folder / FILE
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
            compact = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"{path}: cannot read the tokenizer ({first_line(exc)})") from None
        return from_spec(compact, pad_id, str(path))
    backend = None
    if any((folder / name).is_file() for name in SLOW_FILES):
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
            backend = getattr(tok, "backend_tokenizer", None)
        except Exception:  # noqa: BLE001  (transformers raises many types for bad files)
            backend = None
    if backend is None:
        raise ModelError(
            f"{folder}: no tokenizer (tokenizer.json) in the model folder; save the model's "
            "tokenizer there (tokenizer.save_pretrained(folder))"
        )
    return from_spec(backend.to_str(), pad_id, str(folder))


@functools.lru_cache(maxsize=1)
def minilm() -> TextTokenizer:
    """The bundled MiniLM tokenizer (BERT uncased WordPiece, padding id 0)."""
    from modelzip.zoo.text import minilm_dir

    return from_folder(minilm_dir(), 0)


def of_model(model: nn.Module) -> TextTokenizer:
    """The tokenizer a text model reads (``SentenceEncoder.tokenizer``), else MiniLM's."""
    tok = getattr(model, "tokenizer", None)
    return tok if isinstance(tok, TextTokenizer) else minilm()
