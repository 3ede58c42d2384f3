import pytest
from torch import nn

from modelzip.errors import ConfigError
from modelzip.targets import per_layer, select
from modelzip.zoo.models import LeNet5


@pytest.fixture
def net():
    return LeNet5((1, 28, 28), 10)


def test_patterns_exact_glob_regex_class(net):
    assert list(select(net)) == ["conv1", "conv2", "fc1", "fc2"]
    assert list(select(net, ["fc1"])) == ["fc1"]
    assert list(select(net, ["conv*"])) == ["conv1", "conv2"]
    assert list(select(net, ["re:fc\\d"])) == ["fc1", "fc2"]
    assert list(select(net, ["Linear"])) == ["fc1", "fc2"]
    assert list(select(net, exclude=["fc2"])) == ["conv1", "conv2", "fc1"]


def test_pattern_matching_nothing_lists_layers(net):
    with pytest.raises(ConfigError) as exc:
        select(net, ["fc9"])
    assert "'fc9'" in str(exc.value) and "conv1, conv2, fc1, fc2" in str(exc.value)


def test_per_layer_values_exact_beats_pattern_and_default(net):
    layers = select(net)
    got = per_layer({"default": 4, "conv*": 6, "conv1": 8}, layers)
    assert got == {"conv1": 8, "conv2": 6, "fc1": 4, "fc2": 4}
    assert per_layer(5, layers) == dict.fromkeys(layers, 5)
    assert per_layer({"fc2": 8}, layers) == {"fc2": 8}  # no default: others untouched
    with pytest.raises(ConfigError):
        per_layer({"fcx": 8}, layers)


def test_model_without_weight_layers():
    with pytest.raises(ConfigError, match="no layers"):
        select(nn.Sequential(nn.ReLU()))
