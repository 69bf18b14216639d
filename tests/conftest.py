"""Test setup: Triton's interpreter on machines without a GPU, and the ``cuda`` marker.

``TRITON_INTERPRET=1`` must be in the environment before any ``@triton.jit`` kernel module is
imported (the decorator picks the interpreter then), so it is set here, at collection time,
unless a GPU is present.
"""

import os

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def poison_outputs(monkeypatch):
    """Kernels fill their outputs with NaN before writing, so an unwritten element shows."""
    monkeypatch.setenv("PORTRAIT_ENGINE_POISON_OUTPUTS", "1")
    yield
