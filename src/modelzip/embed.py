"""Run a sentence encoder (original or compressed) on text: one embedding per sentence.

Python: ``modelzip.embed.embed("minilm.mzip", ["A sentence.", ...])`` returns a float32 array
``[n, dim]``; ``embed_file`` reads a UTF-8 text file (one sentence per line) and writes ``.npy``
or JSON lines (``{"text": ..., "embedding": [...]}``) atomically. The CLI is ``modelzip embed``.
Sentences are tokenized with the model's own tokenizer (``modelzip.zoo.tokens``: its folder's,
or the one its .mzip recorded; MiniLM's for the zoo's MiniLM), cut at the model's token limit
and padded per batch; pooling and normalisation follow the folder's sentence-transformers
configuration (``modelzip.zoo.hf.Pipeline``).

Runtimes (``runtime``): ``torch`` runs the model traced and frozen by TorchScript; ``onnxruntime``
runs ``modelzip export``'s ONNX file (in memory) in an ONNX Runtime session, after checking it
against the PyTorch model; ``auto`` stays with ``torch`` for a text shorter than
``AUTO_MIN_BATCHES`` batches, and else builds both on the first batch, times them there and
keeps the faster. ``torch`` is the default: measured on 8,000 real sentences
(``benchmarks/results/embed_runtime.md``, AMD EPYC with AVX-512 VNNI), ONNX Runtime made the
whole job 1.26x faster for the w8a8 MiniLM on 1 thread but only 1.02x on 2 (fp32: 1.04x), and
the first batch's timing did not predict which wins (``auto``: 1.23x, 1.06x, 0.97x).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelzip.errors import ConfigError, ModelError, first_line
from modelzip.zoo import tokens
from modelzip.zoo.corpus import read_lines
from modelzip.zoo.hf import SentenceEncoder

FORMATS = (".npy", ".jsonl")
RUNTIMES = ("auto", "torch", "onnxruntime")
#: ``auto`` tries ONNX Runtime from this many batches on. Why so many: on the w8a8 MiniLM (AMD
#: EPYC with AVX-512 VNNI, 2,000 real sentences in batches of 32) ONNX Runtime ran a batch
#: 15-18% faster than the frozen TorchScript form (81 against 97 ms on 2 threads, 141 against
#: 160 ms on 1), but exporting and checking it took 3.1-3.4 s against 1.4-1.8 s to trace: the
#: export is repaid after some 100-200 batches (fp32: 152 against 190 ms, 2.6 s to export).
AUTO_MIN_BATCHES = 128
#: Smallest cosine accepted between an ONNX Runtime embedding and the model's own. Why not
#: equality: the integer products are exact in both, but the float work between them (the
#: rotation, LayerNorm, softmax) rounds in another order, which moves a few activations across
#: an int8 rounding boundary; six layers of per-token quantization carry such flips on
#: (measured on the w8a8 MiniLM, 256 real sentences: each layer within 6e-6 of its largest
#: output, the embeddings at mean cosine 0.99991 and min 0.99973 to PyTorch's, about a third of
#: the int8 error itself; fp32 models agree to 2e-7).
AGREE_COSINE = 0.999
#: Token limit for a model that states none (no ``max_seq_length``, no position embeddings).
DEFAULT_MAX_TOKENS = 512


def _encoder(model: nn.Module | str) -> SentenceEncoder:
    if isinstance(model, str):
        from modelzip.api import load_model

        model = load_model(model)
    if not isinstance(model, SentenceEncoder):
        raise ModelError(
            f"{type(model).__name__} is not a text model: embed needs a sentence encoder "
            "(zoo:minilm, a Hugging Face model folder, or a .mzip made from one)"
        )
    return model.eval()


def embed(
    model: nn.Module | str,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_tokens: int | None = None,
    frozen: bool = True,
    runtime: str = "torch",
    info: dict[str, Any] | None = None,
) -> np.ndarray:
    """Embeddings ``[len(texts), dim]`` (float32; L2-normalised unless the model's
    sentence-transformers pipeline has no ``Normalize``) of ``texts``.

    Sentences are cut at ``max_tokens`` tokens, by default the model's own limit
    (``SentenceEncoder.max_tokens``: its ``max_seq_length``, 256 for all-MiniLM-L6-v2, within
    its position embeddings; ``DEFAULT_MAX_TOKENS`` when it states none), never past the
    position embeddings. ``runtime`` is one of ``RUNTIMES`` (see the module doc); with
    ``torch``, ``frozen`` runs the model traced and frozen by TorchScript (same values, less
    overhead) or, when False, the module itself. ``info``, when given, receives the runtime
    used and why."""
    _check_runtime(runtime)
    if not texts:
        raise ConfigError("embed needs at least one sentence")
    if max_tokens is not None and (isinstance(max_tokens, bool) or max_tokens < 2):
        raise ConfigError(
            f"max_tokens must be an integer of at least 2 (a sentence's start and end "
            f"tokens), got {max_tokens!r}"
        )
    encoder = _encoder(model)
    tok = tokens.of_model(encoder)
    limit = encoder.max_tokens
    if max_tokens is None:
        max_tokens = limit or DEFAULT_MAX_TOKENS
    elif limit is not None:
        max_tokens = min(max_tokens, limit)
    batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    report = info if info is not None else {}
    report["max_tokens"] = max_tokens
    out = []
    runner: Any = None
    with torch.inference_mode():
        for chunk in batches:
            ids = tok.encode(chunk, max_tokens=max_tokens, pad_to_max=False)
            if runner is None:
                runner = _pick_runner(encoder, ids, runtime, frozen, len(batches), report)
            out.append(np.asarray(runner(ids), dtype=np.float32))
    return np.concatenate(out).astype(np.float32)


def _check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; valid runtimes: {', '.join(RUNTIMES)}")


def _pick_runner(
    encoder: nn.Module,
    ids: torch.Tensor,
    runtime: str,
    frozen: bool,
    n_batches: int,
    report: dict[str, Any],
) -> Any:
    """The runner ``runtime`` asks for, built on the first batch ``ids`` (see the module doc)."""
    torch_runner = _runner(encoder, ids, frozen) if runtime != "onnxruntime" else None
    if runtime == "torch" or (runtime == "auto" and n_batches < AUTO_MIN_BATCHES):
        report["runtime"] = "torch"
        if runtime == "auto":
            report["why"] = f"{n_batches} batch(es): too few to repay an ONNX export"
        return _as_numpy(torch_runner)
    t0 = time.perf_counter()
    try:
        ort_runner = _ort_runner(encoder, ids)
    except Exception as exc:  # noqa: BLE001  (no onnxruntime, or the model does not export)
        if runtime == "onnxruntime":
            raise
        report.update(runtime="torch", why=f"ONNX Runtime unavailable: {first_line(exc)[:200]}")
        return _as_numpy(torch_runner)
    report["onnx_setup_s"] = round(time.perf_counter() - t0, 2)
    if runtime == "onnxruntime":
        report["runtime"] = "onnxruntime"
        return ort_runner
    times = _time_both(_as_numpy(torch_runner), ort_runner, ids)
    faster = "onnxruntime" if times["onnxruntime"] < times["torch"] else "torch"
    report.update(
        runtime=faster,
        why="faster on the first batch ("
        + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items())
        + ")",
    )
    return ort_runner if faster == "onnxruntime" else _as_numpy(torch_runner)


def _as_numpy(runner: Any) -> Any:
    return lambda ids: runner(ids).float().numpy()


def _ort_runner(encoder: nn.Module, ids: torch.Tensor) -> Any:
    """``encoder`` exported to ONNX in memory, in an ONNX Runtime session on torch's thread
    count; refused (``UnsupportedError``) unless it agrees with the model on ``ids``."""
    from modelzip.errors import UnsupportedError
    from modelzip.export import onnx_bytes, ort_session

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UnsupportedError(
            "runtime onnxruntime needs ONNX Runtime: pip install 'modelzip[onnx]'"
        ) from None
    data, _ = onnx_bytes(encoder, example=ids, check=False)
    session = ort_session(data, torch.get_num_threads())
    # the first batch, and one sentence of another length (the length axis stays symbolic)
    for x in (ids, ids[:1, : ids.shape[1] // 2 + 1]):
        with torch.no_grad():
            want = encoder(x).float().numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        cos = float((want * got).sum(1).min()) if got.shape == want.shape else float("nan")
        if not cos >= AGREE_COSINE:  # NaN (a wrong shape) refuses too
            raise UnsupportedError(
                f"the ONNX Runtime export disagrees with the model (cosine {cos:.5f} < "
                f"{AGREE_COSINE})"
            )
    return lambda ids: session.run(None, {"input": ids.numpy()})[0]


def _time_both(torch_runner: Any, ort_runner: Any, ids: torch.Tensor) -> dict[str, float]:
    """Median ms of each runner on ``ids`` over interleaved rounds (after warm-up calls)."""
    runners = {"torch": torch_runner, "onnxruntime": ort_runner}
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for run in runners.values():  # TorchScript's executor specializes over its first calls
        run(ids)
        run(ids)
    for _ in range(3):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(ids)
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def _runner(encoder: nn.Module, example: torch.Tensor, frozen: bool) -> Any:
    """The encoder traced and frozen (``eval.latency.inference_form``), or itself when it
    cannot be traced. Why: at batch 1 a frozen int8 MiniLM ran 2.3x faster than the module
    (6.2 against 14.2 ms, 1 thread), with bit-identical outputs at any batch size and any
    sentence length (the trace keeps the shapes symbolic)."""
    if not frozen:
        return encoder
    from modelzip.eval.latency import inference_form

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python values
            return inference_form(encoder, example)
    except Exception:  # noqa: BLE001  (any tracing failure: the module itself still runs)
        return encoder


def _write_atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def embed_file(
    model: nn.Module | str,
    text_file: str | Path,
    out: str | Path,
    *,
    batch_size: int = 32,
    runtime: str = "torch",
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """Embed every non-blank line of ``text_file`` into ``out`` (.npy or .jsonl); lines are
    cut at ``max_tokens`` tokens (see ``embed``)."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"output must end in {' or '.join(FORMATS)}, got {out.name}")
    if not out.parent.is_dir():
        raise ConfigError(f"output folder does not exist: {out.parent}")
    _check_runtime(runtime)
    lines = read_lines(text_file)
    used: dict[str, Any] = {}
    emb = embed(
        model, lines, batch_size=batch_size, max_tokens=max_tokens, runtime=runtime, info=used
    )
    if out.suffix.lower() == ".npy":
        _write_atomic(out, lambda f: np.save(f, emb))
    else:

        def write(f: Any) -> None:
            for text, row in zip(lines, emb, strict=True):
                rec = {"text": text, "embedding": [round(float(v), 7) for v in row]}
                f.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))

        _write_atomic(out, write)
    return {"sentences": len(lines), "dim": int(emb.shape[1]), "output": str(out), **used}


__all__ = ["embed", "embed_file"]
