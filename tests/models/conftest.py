"""Fixtures of the model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _torch_threads(request):
    """Intra-op threads for a test module that sets ``TORCH_THREADS`` (restored afterwards): 1 for small models, where
    extra threads only spin on a shared 2-core machine; modules without it keep the session's setting."""
    threads = getattr(request.module, "TORCH_THREADS", None)
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(previous)
