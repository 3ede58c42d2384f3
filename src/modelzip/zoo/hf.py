"""Sentence-embedding models from a local Hugging Face / sentence-transformers folder.

The encoder takes token ids (padding id 0 marks padding) and returns the mean-pooled,
L2-normalised sentence embedding, exactly as sentence-transformers' all-MiniLM-L6-v2
pipeline (Transformer -> mean Pooling -> Normalize) does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
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


#: sentence-transformers modules this encoder reproduces, by class name (``modules.json``
#: types, ``sentence_transformers.models.Pooling`` before 6.0 and
#: ``sentence_transformers.base.modules.pooling.Pooling`` after, are read as names only:
#: nothing they name is imported)
ST_MODULES = {"Transformer": "transformer", "Pooling": "pooling", "Normalize": "normalize"}
#: sentence-transformers' pooling modes (``1_Pooling/config.json``: ``pooling_mode``)
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
#: the same as flags, as sentence-transformers before 6.0 wrote them
_POOLING_FLAGS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
#: ``model_max_length`` values at least this large mean "not set" (transformers writes 1e30)
_NO_LIMIT = 1 << 24


@dataclass(frozen=True)
class Pipeline:
    """What a sentence-transformers folder does after the transformer: the pooling, whether
    embeddings are L2-normalised, and the token limit (``max_seq_length``). A plain Hugging Face
    folder gets all-MiniLM-L6-v2's: mean pooling, normalised, no limit of its own."""

    pooling: str = "mean"
    normalize: bool = True
    max_seq_length: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_seq_length": self.max_seq_length,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Pipeline:
        """Validate a recorded pipeline (a .mzip's); None: the default (older files)."""
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise FormatError("bad sentence pipeline record: not an object")
        pooling, norm, limit = obj.get("pooling"), obj.get("normalize"), obj.get("max_seq_length")
        if pooling not in POOLINGS or not isinstance(norm, bool):
            raise FormatError(f"bad sentence pipeline record: {str(obj)[:80]}")
        if limit is not None and (not isinstance(limit, int) or not 1 <= limit <= 1 << 20):
            raise FormatError(f"bad sentence pipeline record: max_seq_length {limit!r}")
        return cls(pooling, norm, limit)


def read_pipeline(folder: str | os.PathLike[str]) -> Pipeline:
    """The folder's sentence-transformers pipeline (``modules.json``, ``1_Pooling``,
    ``sentence_bert_config.json``), or the default for a folder without ``modules.json``.
    A module or pooling this encoder cannot reproduce is a ModelError naming it: an
    embedding computed another way would silently differ from the user's."""
    folder = Path(folder)

    def load(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"{path}: cannot read it ({exc})") from None

    if not (folder / "modules.json").is_file():
        return Pipeline(max_seq_length=_token_limit(folder, load))
    modules = load(folder / "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelError(f"{folder / 'modules.json'}: not a list of modules")
    kinds = []
    pooling, normalize = None, False
    for m in modules:
        name = str(m.get("type"))
        kind = ST_MODULES.get(name.rsplit(".", 1)[-1]) if name.startswith("sentence_") else None
        if kind is None:
            raise ModelError(
                f"{folder}: sentence-transformers module {name[:80]!r} is not supported "
                f"(supported: {', '.join(ST_MODULES)})"
            )
        kinds.append(kind)
        if kind == "normalize":
            normalize = True
        elif kind == "pooling":
            cfg = load(folder / str(m.get("path", "")) / "config.json")
            cfg = cfg if isinstance(cfg, dict) else {}
            mode = cfg.get("pooling_mode")
            if mode is None:
                on = [p for p, flag in _POOLING_FLAGS.items() if cfg.get(flag)]
            else:
                on = [str(x) for x in mode] if isinstance(mode, list) else [str(mode)]
            if len(on) != 1 or on[0] not in POOLINGS:
                raise ModelError(
                    f"{folder}: pooling {', '.join(on) or 'none'} is not supported (one of: "
                    f"{', '.join(POOLINGS)})"
                )
            pooling = on[0]
    if kinds[:2] != ["transformer", "pooling"] or kinds[2:] not in ([], ["normalize"]):
        raise ModelError(
            f"{folder}: modules {' -> '.join(kinds)} are not supported (Transformer -> Pooling "
            "-> optional Normalize)"
        )
    return Pipeline(pooling or "mean", normalize, _token_limit(folder, load))


def _token_limit(folder: Path, load: Any) -> int | None:
    """sentence-transformers' ``max_seq_length``: ``sentence_bert_config.json``'s (before 6.0),
    else the tokenizer's ``model_max_length`` (``tokenizer_config.json``), if set."""
    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ):
        if (folder / name).is_file():
            cfg = load(folder / name)
            value = cfg.get(key) if isinstance(cfg, dict) else None
            if isinstance(value, int) and 0 < value < _NO_LIMIT:
                return value
    return None


class SentenceEncoder(nn.Module):
    """A transformers encoder with sentence-transformers' pooling and normalisation
    (``Pipeline``: mean pooling, normalised, unless the folder says otherwise), on token-id
    input."""

    def __init__(
        self,
        encoder: nn.Module,
        pad_id: int = 0,
        tokenizer: TextTokenizer | None = None,
        pipeline: Pipeline | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.pad_id = pad_id
        #: what turns text into this model's token ids (``modelzip.zoo.tokens``); None: the
        #: bundled MiniLM tokenizer (the zoo's MiniLM, files that recorded none)
        self.tokenizer = tokenizer
        self.pipeline = pipeline or Pipeline()

    @property
    def max_tokens(self) -> int | None:
        """The most tokens a sentence may have: the pipeline's ``max_seq_length`` within what
        the position embeddings hold (RoBERTa-style models start positions after the padding
        id, so they hold that many fewer)."""
        positions = getattr(getattr(self.encoder, "config", None), "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            emb = getattr(self.encoder, "embeddings", None)
            offset = getattr(emb, "padding_idx", None)
            learned = isinstance(getattr(emb, "position_embeddings", None), nn.Embedding)
            positions -= offset + 1 if isinstance(offset, int) and learned else 0
        else:
            positions = None
        limits = [n for n in (self.pipeline.max_seq_length, positions) if n is not None]
        return min(limits) if limits else None

    def token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Which positions hold real tokens (True) rather than padding: what attention and
        pooling read, and what calibration statistics should (``methods.gptq``)."""
        return input_ids != self.pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = self.token_mask(input_ids).to(torch.int64)
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        pooled = pool(hidden, mask, self.pipeline.pooling)
        return F.normalize(pooled, p=2, dim=1) if self.pipeline.normalize else pooled


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """sentence-transformers' pooling of ``hidden [batch, tokens, dim]`` over real tokens."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":  # padding never wins, as in sentence-transformers
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    if pooling == "lasttoken":  # the last real token of right-padded rows
        last = (mask.sum(1) - 1).clamp_min(0)
        return hidden[torch.arange(hidden.shape[0]), last]
    if pooling == "weightedmean":  # token i of a right-padded row weighs i + 1
        ramp = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype).view(1, -1, 1)
        weights = weights * ramp
    total = (hidden * weights).sum(1)
    count = weights.sum(1).clamp_min(1e-9)
    return total / (count.sqrt() if pooling == "mean_sqrt_len_tokens" else count)


#: transformers heads whose outputs are the model's answers (a classifier's logits, a reranker's
#: score): an encoder read through ``AutoModel`` would silently drop them
TASK_HEADS = (
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
)


def check_encoder_folder(folder: str | os.PathLike[str], architectures: Any) -> None:
    """A ModelError when the folder holds a task model (classifier, cross-encoder reranker,
    ...) rather than an encoder: modelzip reads Hugging Face folders as sentence encoders, and
    compressing the encoder without its head would hand back a model that answers something
    else. A sentence-transformers folder (``modules.json``) is an encoder whatever its config
    says."""
    if (Path(folder) / "modules.json").is_file() or not isinstance(architectures, list):
        return
    heads = [a for a in architectures if isinstance(a, str) and a.endswith(TASK_HEADS)]
    if heads:
        raise ModelError(
            f"{folder}: a {heads[0][:60]} (its task head would be dropped); modelzip compresses "
            "Hugging Face sentence encoders (AutoModel, with sentence-transformers pooling)"
        )


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
    check_encoder_folder(folder, getattr(encoder.config, "architectures", None))
    pad = int(getattr(encoder.config, "pad_token_id", 0) or 0)
    tok = tokens.from_folder(folder, pad)
    return SentenceEncoder(encoder.eval(), pad, tok, read_pipeline(folder)).eval()


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
    check_encoder_folder(folder, values.get("architectures"))
    for key in (*REMOTE_CODE_KEYS, "_name_or_path"):  # no code, no local paths
        values.pop(key, None)
    return json.loads(json.dumps(values, default=str))


def encoder_from_config(
    values: dict[str, Any],
    *,
    max_elements: int | None = None,
    tokenizer: str | None = None,
    pipeline: Any = None,
) -> nn.Module:
    """A freshly initialised encoder from recorded config values, built by transformers' own
    class for the recorded ``model_type``; nothing the values name is imported or called.
    With ``max_elements``, architectures whose tensors hold more elements are refused before
    anything real is allocated. ``tokenizer``: the recorded ``tokenizer.json`` text;
    ``pipeline``: the recorded ``Pipeline`` (JSON)."""
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
    return SentenceEncoder(encoder.eval(), pad, tok, Pipeline.from_json(pipeline)).eval()
