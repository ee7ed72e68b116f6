import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("MUONSCOPE_TEST_THREADS", "2")))


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
