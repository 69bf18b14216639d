"""portrait_engine: fused Triton and CUDA C++ kernels for 3DPortraitGAN and RI.

The public ops live in :mod:`portrait_engine.ops`; each runs on one of the backends
``"torch"`` (the plain-PyTorch reference), ``"triton"``, ``"native"`` (the C++/CUDA extension
``portrait_engine._C``) or ``"auto"`` (the fastest available for the tensor's device).
"""

from __future__ import annotations

from portrait_engine._backend import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    backend_status,
    get_backend,
    set_backend,
    use_backend,
)

__version__ = "0.1.0"

from portrait_engine import ops  # noqa: E402  (ops import the backend machinery above)

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "__version__",
    "available_backends",
    "backend_status",
    "get_backend",
    "ops",
    "set_backend",
    "use_backend",
]
