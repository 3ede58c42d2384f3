"""Models written the way users write them, for tests and benchmarks (not built for modelzip).

Each factory is a plain function returning an ``nn.Module``, usable from Python and as
``FILE.py:FACTORY`` on the command line (``src/modelzip/testing/user_models.py:residual_cnn``):

- ``residual_cnn``: BatchNorm, residual adds, a mean-pooled head, and Python control flow on
  the input in ``forward`` (``torch.fx`` cannot trace it; a real forward pass can).
- ``concat_net``: an Inception-style block whose branches are concatenated on channels.
- ``depthwise_cnn``: depthwise-separable convolutions (grouped 3x3 + pointwise 1x1).
- ``tabular_mlp``: an ``nn.Sequential`` built by a factory, for tabular ``.npz`` data
  (``write_tabular_npz`` writes scikit-learn's bundled breast-cancer table).
- ``regression_mlp``: the same for regression targets (``write_regression_npz``: the bundled
  diabetes table, float targets).
- ``torch_transformer``: PyTorch's own ``nn.TransformerEncoder`` over the 8 rows of a digit as
  8 tokens (eval mode takes PyTorch's fused fast path, which reads weights directly).
- ``lstm_classifier``: a 2-layer ``nn.LSTM`` over the 8 rows of a digit, its last step to a head.
- ``write_tiny_bert``: a randomly initialised tiny BERT encoder as a local Hugging Face
  folder (config, safetensors weights, the bundled MiniLM tokenizer's files).
- ``write_tiny_roberta``: a tiny RoBERTa-style encoder folder with its own byte-level BPE
  tokenizer (another vocabulary than BERT's, padding id 1).

Example:
    >>> model = residual_cnn()
    >>> model(torch.zeros(2, 64)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class ResidualCNN(nn.Module):
    """Stem, two residual blocks, a strided conv, mean-pooled linear head."""

    def __init__(self, side: int = 8, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.side = side
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(_ResBlock(width), _ResBlock(width))
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.down_bn = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # flat rows from a table or a CSV: back to images
            x = x.view(-1, 1, self.side, self.side)
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        x = F.relu(self.down_bn(self.down(x)))
        return self.head(x.mean(dim=(2, 3)))


class ConcatNet(nn.Module):
    """An Inception-style block: 1x1 and 3x3 branches concatenated on channels."""

    def __init__(self, width: int = 12, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.branch1 = nn.Conv2d(width, width, 1)
        self.branch3 = nn.Sequential(
            nn.Conv2d(width, width // 2, 1), nn.ReLU(), nn.Conv2d(width // 2, width, 3, padding=1)
        )
        self.bn = nn.BatchNorm2d(2 * width)
        self.mix = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = torch.cat([self.branch1(x), self.branch3(x)], dim=1)
        x = F.relu(self.mix(F.relu(self.bn(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DepthwiseCNN(nn.Module):
    """MobileNet-style depthwise-separable blocks."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        for cin, cout in ((width, 2 * width), (2 * width, 2 * width)):
            layers += [
                nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),  # depthwise
                nn.BatchNorm2d(cin),
                nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False),  # pointwise
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.features(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TorchTransformer(nn.Module):
    """Rows of an 8x8 image as 8 tokens through ``nn.TransformerEncoder``, mean-pooled."""

    def __init__(self, side: int = 8, width: int = 64, num_classes: int = 10):
        super().__init__()
        self.side = side
        self.embed = nn.Linear(side, width)
        self.pos = nn.Parameter(torch.zeros(1, side, width))
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.flatten(1).unflatten(1, (self.side, -1))) + self.pos
        return self.head(self.encoder(tokens).mean(1))


class LSTMClassifier(nn.Module):
    """Rows of an 8x8 image as 8 time steps through a 2-layer LSTM; the last step classifies."""

    def __init__(self, side: int = 8, hidden: int = 64, num_classes: int = 10):
        super().__init__()
        self.side = side
        self.lstm = nn.LSTM(side, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.flatten(1).unflatten(1, (self.side, -1)))
        return self.head(out[:, -1])


def residual_cnn(num_classes: int = 10) -> ResidualCNN:
    """The residual CNN for 8x8 images (scikit-learn's digits)."""
    torch.manual_seed(0)
    return ResidualCNN(num_classes=num_classes)


def concat_net(num_classes: int = 10) -> ConcatNet:
    torch.manual_seed(0)
    return ConcatNet(num_classes=num_classes)


def depthwise_cnn(num_classes: int = 10) -> DepthwiseCNN:
    torch.manual_seed(0)
    return DepthwiseCNN(num_classes=num_classes)


def torch_transformer(num_classes: int = 10) -> TorchTransformer:
    torch.manual_seed(0)
    return TorchTransformer(num_classes=num_classes)


def lstm_classifier(num_classes: int = 10) -> LSTMClassifier:
    torch.manual_seed(0)
    return LSTMClassifier(num_classes=num_classes)


def tabular_mlp(in_features: int = 30, num_classes: int = 2) -> nn.Sequential:
    """A tabular classifier as users write one: a Sequential from a factory."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(in_features, 64),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, num_classes),
    )


def write_tabular_npz(path: str | Path) -> Path:
    """scikit-learn's bundled breast-cancer table (569 rows, 30 features), standardised."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = d.data.astype(np.float64)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    path = Path(path)
    np.savez(path, x=x, y=d.target.astype(np.int64))
    return path


def write_regression_npz(path: str | Path) -> Path:
    """scikit-learn's bundled diabetes table (442 rows, 10 features; the target, disease
    progression after a year, as a float), inputs and target standardised: a regression task."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = d.data.astype(np.float64)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    y = ((d.target - d.target.mean()) / d.target.std()).astype(np.float32)
    path = Path(path)
    np.savez(path, x=x, y=y)
    return path


def regression_mlp(in_features: int = 10, outputs: int = 1) -> nn.Sequential:
    """A tabular regressor as users write one: the tabular fixture with one output per target."""
    return tabular_mlp(in_features, outputs)


def write_tiny_bert(folder: str | Path, *, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) saved as a Hugging Face folder, with
    the bundled MiniLM tokenizer so the ``sentences`` data fits it."""
    from transformers import BertConfig, BertModel

    from modelzip.zoo.text import minilm_dir

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(folder), safe_serialization=True)
    src = Path(minilm_dir())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, folder / name)
    return folder


def write_tiny_roberta(folder: str | Path, *, seed: int = 0, vocab_size: int = 1000) -> Path:
    """A randomly initialised 2-layer RoBERTa (hidden 32) saved as a Hugging Face folder with
    its own tokenizer, as RoBERTa- and MPNet-based sentence encoders come: a byte-level BPE
    vocabulary (learnt here from the ``sentences`` templates) that is not BERT's, and padding
    id 1 (``<pad>``), not 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    from modelzip.zoo.text import sentences

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials)
    tok.train_from_iterator(sentences(), trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        cls_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    fast.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=fast.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=140,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    RobertaModel(config).save_pretrained(str(folder), safe_serialization=True)
    return folder
