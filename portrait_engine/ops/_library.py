"""Registration helpers shared by the op families.

Each op family has a kernel-level forward op and a backward op per kernel backend (Triton ops
defined in Python with ``torch.library.custom_op``; native ops whose schemas live in
``csrc/ops.cpp``). Both get the same fake (meta) implementations and the same autograd formula,
attached here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from portrait_engine import _extension


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels accumulate in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def register_pair(
    forward: str,
    backward: str,
    *,
    fake_forward: Callable,
    fake_backward: Callable,
    setup_context: Callable,
    make_backward: Callable[[Callable], Callable],
) -> None:
    """Attach fakes to ``portrait_engine::{forward,backward}`` and autograd to the forward.

    ``make_backward(backward_op)`` returns the autograd formula, which calls the registered
    backward op (so the backward is itself a custom op, visible to ``torch.compile``).
    """
    torch.library.register_fake(f"portrait_engine::{forward}")(fake_forward)
    torch.library.register_fake(f"portrait_engine::{backward}")(fake_backward)
    torch.library.register_autograd(
        f"portrait_engine::{forward}",
        make_backward(getattr(torch.ops.portrait_engine, backward)),
        setup_context=setup_context,
    )


def register_native_pair(forward: str, backward: str, **kwargs) -> bool:
    """:func:`register_pair` for C++ ops, when the built extension has them; whether it had."""
    if not (_extension.has_op(forward) and _extension.has_op(backward)):
        return False
    register_pair(forward, backward, **kwargs)
    return True
