"""Int8 layers are exact to an integer reference on every x86 CPU, with or without VNNI.

This machine has AVX-512 VNNI; a CPU without it (AVX2-only AMD EPYC) is emulated in a subprocess
by capping the libraries' instruction sets: ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` (FBGEMM runs the
Linear layers) and ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN runs the Conv2d layers). Forcing the
engine's kernels under those caps shows that the cases saturate (so the checks can fail), and the
automatic choice is exact there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from modelzip.nn import int8_runtime
from modelzip.testing import int8_check

AVX2 = {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def run_check(env: dict[str, str], *args: str) -> dict:
    inherited = ("MODELZIP_INT8_KERNELS", "DNNL_MAX_CPU_ISA", *AVX2)
    full = {k: v for k, v in os.environ.items() if k not in inherited}
    full.update({"OMP_NUM_THREADS": "1", **env})
    out = subprocess.run(
        [sys.executable, "-m", "modelzip.testing.int8_check", *args],
        capture_output=True,
        text=True,
        check=True,
        env=full,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("make", [int8_check.linear_case, int8_check.conv_case])
def test_large_activations_and_weights_match_the_integer_reference_here(make):
    case = make()
    assert int8_check.error_steps(case) <= 0.5 + 1e-3  # one rounding to the output grid


def test_the_reference_kernel_is_exact_too(monkeypatch):
    monkeypatch.setenv("MODELZIP_INT8_KERNELS", "reference")
    assert int8_runtime.kernels().kernel == "reference"
    for make in (int8_check.linear_case, int8_check.conv_case):
        assert int8_check.error_steps(make()) <= 0.5 + 1e-3


def test_without_vnni_the_engine_saturates_and_the_automatic_choice_is_exact(tmp_path):
    # A layer made (and saved) on this VNNI machine, then run on an emulated AVX2-only CPU.
    case = int8_check.linear_case()
    path = tmp_path / "layer.pt"
    torch.save({"x": case.x, "state": case.layer.state_dict()}, path)
    forced = run_check({**AVX2, "MODELZIP_INT8_KERNELS": "engine"})
    assert forced["kernel"] == "engine"
    assert forced["linear"] > 10 and forced["conv"] > 10  # the saturation the tests must catch
    # 7-bit weights cannot saturate: the same kernels are exact on them
    assert max(forced["linear_7bit"], forced["conv_7bit"]) <= 0.5 + 1e-3
    assert forced["matmul_kernel"] == "int_mm"
    if "avx512_vnni" in int8_runtime.cpu_flags():
        # oneDNN capped to AVX2 on a VNNI CPU pairs in int16 too; on a real AVX2-only AMD EPYC
        # its s8 GEMM was measured exact (and ~100x slower than fp32), so only the cap shows it.
        assert forced["dynamic"] > 0.01
    auto = run_check(AVX2, str(path))
    # both exact candidates may win the timing (split _int_mm, or fp32 on the codes)
    assert auto["kernel"] == "reference" and auto["matmul_kernel"] in ("split", "reference")
    assert max(auto["linear"], auto["conv"], auto["saved_linear"]) <= 0.5 + 1e-3
    assert auto["engine_7bit"]  # 7-bit layers keep the engine's int8 speed without VNNI
    assert max(auto["linear_7bit"], auto["conv_7bit"]) <= 0.5 + 1e-3
    assert auto["dynamic"] < 1e-5  # the weight-split int8 GEMM is exact without VNNI


def test_the_rule_follows_the_cpu_and_the_isa_caps():
    vnni = frozenset({"avx2", "avx512f", "avx512_vnni"})
    avx2 = frozenset({"avx2", "fma"})
    assert int8_runtime.decide("x86", vnni, True, None).kernel == "engine"
    assert int8_runtime.decide("x86", avx2, True, None).kernel == "reference"
    # AVX-VNNI (256-bit) alone: FBGEMM has no kernel for it, so still reference
    assert int8_runtime.decide("x86", avx2 | {"avx_vnni"}, True, None).kernel == "reference"
    capped = int8_runtime.decide("x86", vnni, True, "ONEDNN_MAX_CPU_ISA=AVX2")
    assert capped.kernel == "reference" and "ONEDNN_MAX_CPU_ISA=AVX2" in capped.why
    assert int8_runtime.decide("qnnpack", frozenset(), False, None).kernel == "engine"


def test_isa_caps_are_read_from_the_environment(monkeypatch):
    for var in ("FBGEMM_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)
    assert int8_runtime._isa_cap() is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert int8_runtime._isa_cap() is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core")
    assert int8_runtime._isa_cap() == "ONEDNN_MAX_CPU_ISA=AVX512_CORE"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX512_E1")
    assert int8_runtime._isa_cap() is None
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX512")
    assert int8_runtime._isa_cap() == "FBGEMM_ENABLE_INSTRUCTIONS=AVX512"


def test_a_bad_forced_kernel_name_is_refused(monkeypatch):
    monkeypatch.setenv("MODELZIP_INT8_KERNELS", "fast")
    with pytest.raises(ValueError, match="not one of auto, engine, reference"):
        int8_runtime.kernels()


def test_stage_notes_say_which_kernels_ran_and_their_distance_to_the_reference(digits):
    from test_quantize_w8a8 import run_stage

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU())
    model.append(torch.nn.Linear(32, 10))
    _, notes = run_stage(model, digits, activations={"observer": "minmax"})
    info = notes["int8_kernels"]
    assert info["kernel"] in ("engine", "reference") and info["why"]
    assert "run time" in info["decided"]
    # one output step of the last layer at most (rounding ties), nothing like saturation
    assert info["max_abs_diff_vs_reference"] <= 0.05


def test_every_matmul_candidate_is_exact_past_the_fp32_integer_range():
    # K = 2,100 full-range codes: one fp32 dot product could reach 2,100 * 127 * 127 > 2**24,
    # so the fp32 candidate must add its K chunks in int32 to stay exact.
    gen = torch.Generator().manual_seed(3)
    x = torch.full((4, 2100), 127, dtype=torch.int8)
    x[1:] = torch.randint(-127, 128, (3, 2100), generator=gen, dtype=torch.int8)
    w = torch.randint(-127, 128, (24, 2100), generator=gen, dtype=torch.int8)
    w[0] = 127
    exact = x.long() @ w.long().T
    assert int(exact[0, 0]) > 2**24
    for kernel in ("split", "reference"):
        got = int8_runtime.int8_mm(x, int8_runtime.pack_weight(w, kernel), kernel)
        assert torch.equal(got.long(), exact), kernel


def test_the_dynamic_product_is_chosen_by_timing_among_exact_candidates():
    chosen = int8_runtime.matmul_kernel()
    exact_here = ("int_mm", "reference") if int8_runtime.kernels().exact_engine else ("split",)
    assert chosen in (*exact_here, "reference")
    times = int8_runtime.probe_times(
        ("int_mm", "reference") if int8_runtime.kernels().exact_engine else ("split", "reference")
    )
    assert chosen == min(times, key=times.__getitem__)
    assert int8_runtime.describe()["matmul_kernel"] == chosen
