"""Test-wide settings: one intra-op thread (tiny models run several times faster without thread contention,
especially on a loaded 2-core machine); tests that need more set it themselves."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
