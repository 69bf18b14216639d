"""The benchmark case record shared by every op family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# "sdpa": the op posed as torch's scaled_dot_product_attention, where that applies
PROVIDERS = ("torch", "torch_compile", "sdpa", "triton", "native")


@dataclass
class Case:
    """One op at one size: what the harness times for every provider and dtype."""

    op: str
    shape: str
    params: dict
    # (device, dtype, generator) -> (differentiable inputs, keyword arguments)
    make_inputs: Callable[..., tuple[list[torch.Tensor], dict]]
    # provider -> function(*inputs, **kwargs) -> output tensor
    functions: dict[str, Callable[..., torch.Tensor]]
    # (dtype, with_backward) -> bytes that must cross memory at least once
    bytes_moved: Callable[[torch.dtype, bool], int]
    description: str = ""
    native_op: str | None = None  # the C++ op the native provider needs
    extra: dict = field(default_factory=dict)
