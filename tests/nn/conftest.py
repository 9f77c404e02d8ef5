"""Torch-floor test settings: one torch thread (the 2 cores are shared; more threads thrash)."""

import pytest
import torch

from liverfat.nn.device import set_torch_threads


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    set_torch_threads(1)
    yield
    set_torch_threads(previous)
