"""Loading of the compiled extension ``portrait_engine._C``.

The extension registers the native ops under ``torch.ops.portrait_engine``. It is optional:
without it the package imports and runs on its ``torch`` and ``triton`` backends, and
:func:`portrait_engine.backend_status` says why ``native`` is missing.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def load() -> tuple[bool, str]:
    """Import the extension once; return ``(loaded, reason_if_not)``."""
    try:
        import portrait_engine._C  # noqa: F401
    except ImportError as error:
        return False, (
            f"the C++ extension portrait_engine._C is not built ({error}); "
            "build it with `pip install --no-build-isolation -e .`"
        )
    return True, ""


@functools.cache
def build_info() -> dict[str, str]:
    """The extension's build flags (``{}`` when it is not built)."""
    loaded, _ = load()
    if not loaded:
        return {}
    import portrait_engine._C as native

    # the module constant (no C++ string crosses into libtorch); the op for older builds
    text = getattr(native, "BUILD_INFO", None) or torch.ops.portrait_engine.build_info()
    return dict(item.split("=", 1) for item in text.split(";") if "=" in item)


def has_cuda_kernels() -> bool:
    """Whether the extension was compiled with its CUDA kernels."""
    return build_info().get("cuda", "0") == "1"


@functools.cache
def has_op(name: str) -> bool:
    """Whether the loaded extension defines ``portrait_engine::<name>`` (a stale build may not)."""
    if not load()[0]:
        return False
    try:
        getattr(torch.ops.portrait_engine, name)
    except (AttributeError, RuntimeError):
        return False
    return True
