"""Deep-engine test settings: one torch thread (the 2 cores are shared; more threads thrash)."""

import pytest

from liverfat.nn.device import torch_threads


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    with torch_threads(1):
        yield
