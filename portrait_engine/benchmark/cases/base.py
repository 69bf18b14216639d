"""The benchmark case record shared by every op family (and by end-to-end steps)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# "sdpa": the op posed as torch's scaled_dot_product_attention, where that applies
PROVIDERS = ("torch", "torch_compile", "sdpa", "triton", "native")
# What the harness can time: the function alone (under no_grad), or it and its backward.
MODES = ("forward", "forward+backward")


@dataclass
class Case:
    """One op (or one end-to-end step) at one size: what the harness times per provider, dtype.

    An op case names the C++ op its ``native`` provider needs (``native_op``) and the bytes
    the op must move; an end-to-end case (``kind="end-to-end"``: renderer forward+backward, a
    training step) leaves ``native_op`` unset, may offer only some providers (those in
    ``functions``), may return ``None`` from ``bytes_moved`` (no GB/s is then reported), and
    returns a tensor — a scalar loss for a training step — that the harness backpropagates
    with a random gradient in the ``forward+backward`` mode.
    """

    op: str
    shape: str
    params: dict
    # (device, dtype, generator) -> (inputs, keyword arguments). Inputs are random (never
    # all zeros); the floating ones are the differentiable ones.
    make_inputs: Callable[..., tuple[list[torch.Tensor], dict]]
    # provider -> function(*inputs, **kwargs) -> output tensor. "torch" is the reference
    # every other provider is checked against; it is required.
    functions: dict[str, Callable[..., torch.Tensor]]
    # (dtype, with_backward) -> bytes that must cross memory at least once (None: unknown)
    bytes_moved: Callable[[torch.dtype, bool], int | None]
    description: str = ""
    native_op: str | None = None  # the C++ op the native provider needs
    extra: dict = field(default_factory=dict)
    kind: str = "op"  # "op" or "end-to-end"
    modes: tuple[str, ...] = MODES  # which of MODES to time
    # (dtype, with_backward) -> floating point operations, for a fraction of the matrix rate
    flops: Callable[[torch.dtype, bool], int | None] | None = None
    # relative L2 error allowed against the float32 reference (None: the harness's default
    # for the dtype); a case whose arithmetic legitimately differs more says so here
    tolerance: float | None = None
    # (inputs, kwargs) -> boolean mask broadcastable to the output: where the providers must
    # agree. The check compares the output there only and backpropagates an output gradient
    # that is zero elsewhere (as the tests do around an op's discontinuities, e.g. points
    # equidistant from two faces, whose choice float rounding decides). None: everywhere.
    check_mask: Callable[[list, dict], torch.Tensor] | None = None
    # provider -> why it is not timed in --quick runs (e.g. a compile time that alone exceeds
    # the quick CPU budget); such rows are reported "skipped: <why>"
    quick_skip: dict[str, str] = field(default_factory=dict)
