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


def test_roles_come_from_a_real_forward_pass_not_from_names():
    import torch

    from modelzip.testing import user_models as um

    class Backwards(nn.Module):
        """Registered head-first: model order and execution order disagree."""

        def __init__(self):
            super().__init__()
            self.head = nn.Linear(16, 3)
            self.body = nn.Linear(16, 16)
            self.stem = nn.Linear(4, 16)

        def forward(self, x):
            return self.head(torch.relu(self.body(torch.relu(self.stem(x)))))

    x = torch.zeros(2, 4)
    assert list(select(Backwards(), ["role:first"], example=x)) == ["stem"]
    assert list(select(Backwards(), ["role:last"], example=x)) == ["head"]
    assert list(select(Backwards(), ["role:inner"], example=x)) == ["body"]
    res = um.residual_cnn()
    xi = torch.zeros(2, 1, 8, 8)
    assert list(select(res, ["role:first", "role:last"], example=xi)) == ["stem", "head"]
    assert list(select(um.tabular_mlp(), ["role:last"], example=torch.zeros(2, 30))) == ["5"]
    dw = select(um.depthwise_cnn(), ["role:depthwise"], example=xi)
    assert list(dw) == ["features.0", "features.6"]


def test_size_rules_and_roles_in_per_layer_maps(net):
    import torch

    layers = select(net, example=torch.zeros(2, 1, 28, 28))
    rule = {"default": 0.9, "params<50000": 0.8, "params<1000": 0.5, "role:last": 0.6}
    # conv1 520 params, conv2 25,050, fc1 400,500, fc2 5,010 (the output layer)
    assert per_layer(rule, layers) == {"conv1": 0.5, "conv2": 0.8, "fc1": 0.9, "fc2": 0.6}
    assert list(select(net, ["params>=400500"])) == ["fc1"]
    # descriptive patterns may match nothing in one model; a selection that is empty may not
    assert per_layer({"default": 4, "role:depthwise": 8}, layers) == dict.fromkeys(layers, 4)
    with pytest.raises(ConfigError, match="select no layer"):
        select(net, ["params<10"])
    with pytest.raises(ConfigError, match="malformed"):
        select(net, ["params<<5"])
    with pytest.raises(ConfigError, match="valid roles: first, last, inner, depthwise"):
        select(net, ["role:head"], example=torch.zeros(2, 1, 28, 28))
    with pytest.raises(ConfigError, match="needs the model's execution order"):
        per_layer({"role:last": 8}, select(net))
