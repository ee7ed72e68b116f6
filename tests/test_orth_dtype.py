"""The NS compute-dtype default: bf16 where bf16 products are fast, fp32 elsewhere, env override.

Nothing here depends on how fast this machine's bf16 GEMM is: the probe's decision rule is fed
injected timings and the probe itself is replaced where a default is read.
"""

import pytest
import torch

from muonscope.errors import ConfigError
from muonscope.orth import matrix_ns as M
from muonscope.orth.gram_ns import gram_compute_dtype


def test_decision_rule_from_injected_timings():
    assert M.bf16_is_fast(1.0, 2.0)  # bf16 twice as fast (native bf16 units)
    assert M.bf16_is_fast(2.0, 2.0)  # parity is enough: bf16 halves memory traffic too
    assert not M.bf16_is_fast(60.0, 1.0)  # emulated bf16 (AVX2-only CPUs: 50-80x slower)
    assert not M.bf16_is_fast(1.01, 1.0)
    assert M.bf16_is_fast(60.0, 1.0, native=True)  # AVX512-BF16/AMX reported: no timing needed
    assert not M.bf16_is_fast(float("nan"), 1.0)


@pytest.fixture
def unpinned(monkeypatch):
    monkeypatch.delenv(M.NS_DTYPE_ENV, raising=False)
    M.cpu_bf16_fast.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    M.cpu_bf16_fast.cache_clear()


@pytest.mark.parametrize("fast", [True, False])
def test_cpu_default_follows_probe(unpinned, fast):
    unpinned.setattr(M, "cpu_bf16_fast", lambda: fast)
    assert M.default_compute_dtype("cpu") == (torch.bfloat16 if fast else torch.float32)
    assert M.default_compute_dtype("cuda") == torch.bfloat16
    assert gram_compute_dtype("cuda") == torch.float16
    assert gram_compute_dtype("cpu") == M.default_compute_dtype("cpu")


@pytest.mark.parametrize("native,t16,t32,want", [(True, 9.0, 1.0, True), (False, 0.5, 1.0, True),
                                                 (False, 9.0, 1.0, False), (False, 1.5, 1.0, False)])
def test_probe_combines_capability_and_timings(unpinned, native, t16, t32, want):
    calls = []

    def fake_time(dtype, n=M.PROBE_SIZE, repeats=3):
        calls.append((dtype, n))
        return t16 if dtype == torch.bfloat16 else t32

    unpinned.setattr(M, "_native_cpu_bf16", lambda: native)
    unpinned.setattr(M, "time_matmul", fake_time)
    assert M.cpu_bf16_fast() is want
    assert M.cpu_bf16_fast() is want  # cached: probed once per process
    if native:
        assert calls == []
    elif t16 > 4 * t32:
        assert len(calls) == 2  # the 128² screen stops an emulated bf16 early
    M.cpu_bf16_fast.cache_clear()


@pytest.mark.parametrize("value,want", [("bf16", torch.bfloat16), ("float32", torch.float32),
                                        ("torch.float16", torch.float16), ("FP64", torch.float64)])
def test_env_var_overrides_every_device(unpinned, value, want):
    unpinned.setattr(M, "cpu_bf16_fast", lambda: True)
    unpinned.setenv(M.NS_DTYPE_ENV, value)
    assert M.default_compute_dtype("cpu") == want
    assert M.default_compute_dtype("cuda") == want
    assert gram_compute_dtype("cuda") == want


def test_env_var_auto_and_bad_values(unpinned):
    unpinned.setattr(M, "cpu_bf16_fast", lambda: False)
    unpinned.setenv(M.NS_DTYPE_ENV, "auto")
    assert M.default_compute_dtype("cpu") == torch.float32
    unpinned.setenv(M.NS_DTYPE_ENV, "int8")
    with pytest.raises(ConfigError, match="MUONSCOPE_NS_DTYPE"):
        M.default_compute_dtype("cpu")


def test_real_probe_answers_a_bool_quickly(unpinned):
    # Which way it goes depends on the CPU; that it answers, once, without error does not.
    assert isinstance(M.cpu_bf16_fast(), bool)
