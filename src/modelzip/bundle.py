"""The data a compression run works on: loaders per split and the task (core, not zoo).

``modelzip.zoo.data`` reads data sets into a ``DataBundle``; anything else may build one
directly from its own loaders (``DataBundle("mine", (3, 32, 32), 10, loaders, sizes)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from modelzip.errors import DataError
from modelzip.task import Classification, Inputs, Task, get_task, split_batch

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TextSource:
    """The sentences a text data set was tokenized from, so that it can be tokenized again
    with another model's tokenizer (``modelzip.zoo.text.for_model``)."""

    splits: dict[str, list[str]]
    batch_size: int
    seed: int
    #: ``TextTokenizer.key`` of the tokenizer that made the loaders' token ids
    tokenizer_key: str


@dataclass
class DataBundle:
    """A task's data: loaders per split and what a model needs to know about the inputs."""

    name: str
    sample_shape: tuple[int, ...]
    num_classes: int
    loaders: dict[str, DataLoader]
    sizes: dict[str, int]
    #: What the model is for (``modelzip.task``): its loss and metric. ``Classification``
    #: (y are class labels) or ``Embedding`` (outputs are compared with the original model's:
    #: the metric is cosine_mean, fine-tuning matches the original).
    task: Task = field(default_factory=Classification)
    #: for text data: the sentences behind the token ids (None for other data)
    text: TextSource | None = None

    def __post_init__(self) -> None:
        self.task = get_task(self.task)  # a task may be given by name ("embedding")

    def loader(self, split: str) -> DataLoader:
        """The loader of one split; unknown names raise a DataError listing the splits."""
        if split not in self.loaders:
            raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return self.loaders[split]

    @property
    def train(self) -> DataLoader:
        return self.loaders["train"]

    @property
    def val(self) -> DataLoader:
        return self.loaders["val"]

    @property
    def test(self) -> DataLoader:
        return self.loaders["test"]

    def example_inputs(self, n: int = 2) -> Inputs:
        """A small batch of real test inputs: one tensor, or a tuple of tensors when the
        data's batches carry several inputs (``model(*inputs)``)."""
        x, _ = split_batch(next(iter(self.loaders["test"])))
        return tuple(t[:n] for t in x) if isinstance(x, tuple) else x[:n]

    def example(self, n: int = 2) -> torch.Tensor:
        """A small batch of real test inputs (for tracing, shape checks and latency) of data
        with one input tensor; ``example_inputs`` also serves data with several."""
        x = self.example_inputs(n)
        if isinstance(x, tuple):
            raise DataError(
                f"{self.name}: batches carry {len(x)} input tensors; this step takes one"
            )
        return x
