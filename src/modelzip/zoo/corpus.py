"""Real English sentences, offline: ``english`` (from PyTorch's documentation) and user text files.

``english`` is prose that nobody on this project wrote: the sentences of the docstrings that ship
inside the installed ``torch`` package (pinned to one version by the Makefile, so the corpus is the
same on every machine that runs ``make test``). The source files are read as text — triple-quoted
strings found with a regular expression, nothing imported or executed — split into sentences and
kept only when they look like prose: 6 to 40 words, a capital first letter and a final stop, only
letters, digits and ordinary punctuation (no code, markup, math or ``e.g.`` abbreviations).
Duplicates are removed case-insensitively. The order is by a hash of each sentence, and the splits
are fixed slices of that order (``test`` first, then ``val``, then ``train``), so they are disjoint
and do not move when another sentence is added.

User text: ``FILE.txt`` (UTF-8, one sentence per line, blank lines ignored) or ``FILE.parquet`` with
a string column ``text`` (or ``sentence``). Both split by the same hash order (25% test, 15% val).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from pathlib import Path

from modelzip.errors import DataError

#: Sizes of the ``english`` splits: evaluation, calibration/validation, training.
ENGLISH_SPLITS = {"test": 2000, "val": 1000, "train": 5000}
TEXT_COLUMNS = ("text", "sentence")
#: Share of a user's text file that goes to test and val (the rest is train).
TEST_SHARE, VAL_SHARE = 0.25, 0.15
MIN_USER_SENTENCES = 10
MAX_LINE_CHARS = 100_000

_TRIPLE = re.compile(r'"""(.*?)"""', re.S)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PROSE = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'\"()\-/%]+[.!?]$")
_NOT_PROSE = ("::", "e.g", "i.e", "etc.", "TODO", "FIXME", "NB:", "):", "Args", "Returns")
#: A leading ``Word:`` or ``Two words:`` is a docstring section header (Args:, Note:, ...).
_HEADER = re.compile(r"^[A-Za-z]+( [A-Za-z]+)?:")


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def prose_sentences(text: str) -> list[str]:
    """The sentences of ``text`` that look like English prose, in order (pure function)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para or para.startswith((">>>", "..", ":")):
            continue
        for s in _SENTENCE_END.split(para):
            if not 6 <= len(s.split()) <= 40 or not _PROSE.match(s):
                continue
            if _HEADER.match(s) or any(bad in s for bad in _NOT_PROSE):
                continue
            out.append(s)
    return out


def dedupe(sentences: list[str]) -> list[str]:
    """Case-insensitive de-duplication, keeping the first spelling."""
    seen: set[str] = set()
    out = []
    for s in sentences:
        key = " ".join(s.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def hash_order(sentences: list[str]) -> list[str]:
    """A fixed order that does not depend on where the sentences came from."""
    return sorted(sentences, key=lambda s: (_hash(s), s))


@functools.cache
def english_sentences() -> tuple[str, ...]:
    """Every deduplicated prose sentence of the installed torch's docstrings, in hash order."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise DataError("the english data set reads torch's docstrings; torch is not installed")
    root = Path(spec.origin).parent
    found: list[str] = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        text = path.read_text(encoding="utf-8", errors="replace")
        for doc in _TRIPLE.findall(text):
            found.extend(prose_sentences(doc))
    return tuple(hash_order(dedupe(found)))


def english_splits() -> dict[str, list[str]]:
    """The ``english`` data set: disjoint test / val / train sentences (sizes ENGLISH_SPLITS)."""
    corpus = english_sentences()
    need = sum(ENGLISH_SPLITS.values())
    if len(corpus) < need:
        raise DataError(
            f"the english data set needs {need} sentences but the installed torch's "
            f"documentation gives {len(corpus)}"
        )
    out, start = {}, 0
    for split, n in ENGLISH_SPLITS.items():
        out[split] = list(corpus[start : start + n])
        start += n
    return out


def split_user_sentences(name: str, sentences: list[str]) -> dict[str, list[str]]:
    """Hash-ordered test / val / train shares of a user's sentences (duplicates kept once)."""
    unique = hash_order(dedupe(sentences))
    if len(unique) < MIN_USER_SENTENCES:
        raise DataError(
            f"{name}: {len(unique)} distinct sentence(s); at least {MIN_USER_SENTENCES} are "
            "needed to split into train/val/test"
        )
    n_test = max(1, round(TEST_SHARE * len(unique)))
    n_val = max(1, round(VAL_SHARE * len(unique)))
    return {
        "test": unique[:n_test],
        "val": unique[n_test : n_test + n_val],
        "train": unique[n_test + n_val :],
    }


def read_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file (one sentence each), checked.

    Raises:
        DataError: missing file, not UTF-8 (with the byte offset), no sentence, or a line
            too long to be a sentence.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8, "
            "one sentence per line"
        ) from None
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{path}: no sentences (the file is empty or holds only blank lines)")
    for i, line in enumerate(lines):
        if len(line) > MAX_LINE_CHARS:
            raise DataError(
                f"{path}: line {i + 1} has {len(line)} characters (limit {MAX_LINE_CHARS})"
            )
        if "\x00" in line:
            raise DataError(f"{path}: line {i + 1} holds a NUL byte; not a text file")
    return lines


def parquet_text_column(path: Path) -> str | None:
    """The name of the text column of a parquet file, or None when it has none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.ParquetFile(path).schema_arrow
    except pa.ArrowException as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    for name in TEXT_COLUMNS:
        if name in schema.names:
            t = schema.field(name).type
            if pa.types.is_string(t) or pa.types.is_large_string(t):
                return name
            raise DataError(f"{path}: column {name!r} must hold strings, found {t}")
    return None


def read_parquet_text(path: Path, column: str) -> list[str]:
    """The non-empty strings of one parquet column (nulls refused with their count)."""
    import pyarrow.parquet as pq

    values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    nulls = sum(v is None for v in values)
    if nulls:
        raise DataError(f"{path}: column {column!r} has {nulls} null value(s)")
    out = [" ".join(str(v).split()) for v in values]
    out = [v for v in out if v]
    if not out:
        raise DataError(f"{path}: column {column!r} holds no text")
    return out
