"""Capture and restore the random number generators a training step draws from."""

from __future__ import annotations

import torch


def capture_rng_state(
    device: torch.device | None = None, generators: dict[str, torch.Generator] | None = None
) -> dict[str, torch.Tensor]:
    """The global torch RNG (``torch_rng``), the CUDA RNG of ``device`` (``cuda_rng``) and
    each named generator (``generator.<name>``), as uint8 tensors for safetensors."""
    state = {"torch_rng": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    for name, generator in (generators or {}).items():
        state[f"generator.{name}"] = generator.get_state()
    return state


def restore_rng_state(
    state: dict[str, torch.Tensor],
    device: torch.device | None = None,
    generators: dict[str, torch.Generator] | None = None,
) -> None:
    """Restore what :func:`capture_rng_state` captured (generators absent from ``state`` are
    left as they are)."""
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    for name, generator in (generators or {}).items():
        key = f"generator.{name}"
        if key in state:
            generator.set_state(state[key])
