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
    _EAGER[f"portrait_engine::{forward}"] = _eager_entry(
        getattr(torch.ops.portrait_engine, forward),
        getattr(torch.ops.portrait_engine, backward),
        setup_context,
        make_backward,
    )


# --------------------------------------------------------------------------------------------
# The eager entry of a registered forward op
#
# torch.library runs a registered autograd formula from the op's Autograd kernel through
# Python: the dispatcher calls back into Python, the schema's defaults are filled in again
# (torch 2.13's ``fill_defaults`` reads the schema's argument list once per argument), and the
# op is redispatched below autograd. For a small op that frame is a large part of the cost. On
# the CPU (2 threads, 2026-11-27, minima of 12 alternated rounds of 300 public-op calls,
# forward+backward, validation included), registered op -> eager entry: skin_points of 64
# points 147 -> 120 µs, softplus of 256 values 70 -> 53 µs, ray_march of 16 rays 139 -> 109 µs,
# triplane_sample of 64 points 223 -> 192 µs. At the quick benchmark sizes (milliseconds of
# kernels) the difference is within the noise. A GPU pays the frame as host time, and small
# ops are bound by their host time there: skin_points at lbs's size (B = 32) ran 0.98 ms of wall
# time on the H100, against about 0.1 ms of kernels for its forward, backward and reduction
# products in lbs's profile (benchmarks/results/NVIDIA-H100-80GB-HBM3/logs-2026-11-27/).
#
# ``eager(op)`` is that Function, built from the same three pieces, so the eager path and the
# registered one run the same kernels and the same formula. Under torch.compile, which traces
# the registered op and its formula, it hands back the op itself.
# --------------------------------------------------------------------------------------------

_EAGER: dict[str, Callable] = {}


def _eager_entry(forward_op, backward_op, setup_context: Callable, make_backward: Callable):
    name = f"Eager_{forward_op._qualified_op_name.split('::')[-1]}"
    formula = make_backward(backward_op)

    def forward(*inputs):
        with torch._C._AutoDispatchBelowAutograd():
            return forward_op(*inputs)

    def forward_with_ctx(ctx, *inputs):
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    # ctx in forward: Function.apply's fast path (with a separate setup_context, apply binds the
    # arguments through inspect.signature on every call: 20-30 µs on the CPU, all of the gain)
    function = type(
        name,
        (torch.autograd.Function,),
        {"forward": staticmethod(forward_with_ctx), "backward": staticmethod(formula)},
    )
    # a separate setup_context, as torch.func requires: used only under its transforms (where
    # torch.library's generated Function refuses to run)
    functorch_function = type(
        name,
        (torch.autograd.Function,),
        {
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(formula),
        },
    )

    def call(*inputs):
        if torch._C._are_functorch_transforms_active():
            return functorch_function.apply(*inputs)
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*inputs):
            return function.apply(*inputs)
        return forward(*inputs)  # nothing to differentiate

    return call


def eager(op) -> Callable:
    """``op`` (a ``torch.ops.portrait_engine`` forward op) or, in plain eager mode, its eager
    entry: the same kernels and autograd formula without torch.library's Python frame (above).
    Positional arguments only, all of them (no schema defaults are filled in)."""
    if torch.compiler.is_compiling():
        return op
    return _EAGER.get(op._qualified_op_name, op)


def register_native_pair(forward: str, backward: str, **kwargs) -> bool:
    """:func:`register_pair` for C++ ops, when the built extension has them; whether it had."""
    if not (_extension.has_op(forward) and _extension.has_op(backward)):
        return False
    register_pair(forward, backward, **kwargs)
    return True
