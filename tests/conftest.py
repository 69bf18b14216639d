"""Test setup: Triton's interpreter on machines without a GPU, and the ``cuda`` marker.

``TRITON_INTERPRET=1`` must be in the environment before any ``@triton.jit`` kernel module is
imported (the decorator picks the interpreter then), so it is set here, at collection time,
unless a GPU is present.
"""

import os

import pytest

# Under pytest-xdist (-n 2 on CI's 2 cores) each worker would take torch's and OpenMP's default
# of one thread per core: 4 threads on 2 cores, whose waiting slows both workers (tests/nn and
# test_triplane.py: 142 s with OMP_NUM_THREADS=1 against 159 s, 2026-11-27). Set before torch is
# imported, so OpenMP reads it; tests that need several threads set them themselves.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _cores = os.cpu_count() or 1
    _workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // _workers))

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
