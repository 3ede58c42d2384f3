"""Every built-in method keeps the shared contract (modelzip.testing.MethodContract)."""

from modelzip.testing import MethodContract


class TestPruneContract(MethodContract):
    stage = {"method": "prune", "sparsity": 0.6, "scope": "layer"}


class TestQuantizeContract(MethodContract):
    stage = {"method": "quantize", "bits": {"default": 8, "fc3": 6}}


class TestFinetuneContract(MethodContract):
    stage = {"method": "finetune", "epochs": 1}


class TestClusterContract(MethodContract):
    stage = {"method": "cluster", "bits": {"default": 4, "fc3": 6}, "init": "density"}


class TestClusterOptimalSharedContract(MethodContract):
    stage = {"method": "cluster", "bits": 5, "algorithm": "optimal", "shared": True}


class TestEncodeContract(MethodContract):
    stage = {"method": "encode", "coder": "huffman", "round_floats": "bf16"}
