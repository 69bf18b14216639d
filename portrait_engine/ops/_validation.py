"""Input checks shared by the public ops: each raises a clear error naming the argument."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_float(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {tensor.dtype}"
        )


def check_rank(name: str, tensor: torch.Tensor, ranks: tuple[int, ...], layout: str) -> None:
    if tensor.dim() not in ranks:
        raise ValueError(f"{name} must have shape {layout}, got shape {tuple(tensor.shape)}")


def check_same_device(names: tuple[str, str], a: torch.Tensor, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(
            f"{names[0]} and {names[1]} must be on the same device, "
            f"got {names[0]} on {a.device} and {names[1]} on {b.device}"
        )


def check_same_dtype(names: tuple[str, str], a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dtype != b.dtype:
        raise TypeError(
            f"{names[0]} and {names[1]} must have the same dtype, "
            f"got {names[0]} {a.dtype} and {names[1]} {b.dtype}"
        )


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)
