import os

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(int(os.environ.get("MUONSCOPE_TEST_THREADS", "2")))
# NS runs in fp32 unless a test asks for another dtype: the default (bf16 where bf16 GEMM is fast)
# depends on the machine, and tests must not.
os.environ.setdefault("MUONSCOPE_NS_DTYPE", "float32")

# Reproducible runs: hypothesis examples derived from the test, global RNG seeded per test.
settings.register_profile("muonscope", derandomize=True, deadline=None)
settings.load_profile("muonscope")


@pytest.fixture(autouse=True)
def _seed_global_rng():
    torch.manual_seed(0)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
