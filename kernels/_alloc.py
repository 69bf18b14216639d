"""Output allocation for the launchers.

With ``PORTRAIT_ENGINE_POISON_OUTPUTS=1`` (set by the tests) outputs that a kernel must write
in full start as NaN instead of uninitialised memory, so an element the kernel forgot fails.
"""

from __future__ import annotations

import os

import torch


def empty_output(shape, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if os.environ.get("PORTRAIT_ENGINE_POISON_OUTPUTS") == "1":
        out.fill_(float("nan"))
    return out
