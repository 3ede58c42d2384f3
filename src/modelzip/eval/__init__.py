"""Evaluation used by the API, the CLI and the benchmarks alike."""

from modelzip.eval.evaluate import evaluate, torch_save_bytes

__all__ = ["evaluate", "torch_save_bytes"]
