"""Backend choice: per call (``backend=``), per block (``use_backend``) or globally.

``"auto"`` picks, for the tensor's device, the fastest backend measured there that is
available (see :data:`AUTO_ORDER`); the other names force a backend and raise
:class:`BackendUnavailableError` with the reason when it cannot run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator

import torch

from portrait_engine import _extension

BACKENDS = ("torch", "triton", "native")
_CHOICES = ("auto",) + BACKENDS

# Preference of "auto" per device type. On the CPU the Triton interpreter is a testing tool,
# hundreds of times slower than either alternative, so auto never picks it there.
AUTO_ORDER = {
    "cpu": ("native", "torch"),
    "cuda": ("native", "triton", "torch"),
}

# Per-op exceptions to AUTO_ORDER, (device type, native op) -> order, from measurements:
# ray_march on an H200 (benchmarks/results/NVIDIA-H200/full.md, B=4 128^2 rays, C=32,
# forward+backward): Triton 1.07 ms vs CUDA 1.20 ms at 48 samples, 1.68 vs 2.34 ms at 96.
# render_rays (the fused renderer) on the same H200 (the `renderer` case: ImportanceRenderer
# fwd+bwd, B=4 128^2 rays, 48+48 samples, EG3D planes): Triton 22.6 ms vs CUDA 36.5 ms; the
# CUDA backward (one thread per ray, decoder-weight gradients through per-sample atomics) took
# 65.6 ms of a 64^2-ray case under Nsight Compute (logs-2026-11-26b/ncu_render.log).
# triplane_sample and softplus on an H100 (benchmarks/results/NVIDIA-H100-80GB-HBM3,
# logs-2026-11-27b/bench_stages.log): Triton 1.55 ms vs CUDA 7.15 ms forward and 6.32 vs
# 19.24 ms forward+backward on EG3D's planes (B=4, 128^2 rays x 96 samples), 5.05 vs 12.47 and
# 19.61 vs 34.23 ms on PanoHead's tri-grid; softplus 1.33 vs 1.50 ms fwd+bwd (Triton at eager's
# copy bandwidth). decoder_outputs stays native there (2.15 vs 2.48 ms fwd+bwd).
AUTO_ORDER_BY_OP = {
    ("cuda", "ray_march_forward"): ("triton", "native", "torch"),
    ("cuda", "render_rays_forward"): ("triton", "native", "torch"),
    ("cuda", "triplane_sample_forward"): ("triton", "native", "torch"),
    ("cuda", "softplus_forward"): ("triton", "native", "torch"),
}

_state = threading.local()
_global_backend = os.environ.get("PORTRAIT_ENGINE_BACKEND", "auto")


class BackendUnavailableError(RuntimeError):
    """A backend was requested that cannot run on the given device; the message says why."""


def _check_name(name: str) -> str:
    if name not in _CHOICES:
        raise ValueError(f"backend must be one of {_CHOICES}, got {name!r}")
    return name


def get_backend() -> str:
    """The backend in force: the innermost ``use_backend`` block, else the global one."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else _global_backend


def set_backend(name: str) -> None:
    """Set the global backend (``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``)."""
    global _global_backend
    _global_backend = _check_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed block with ``name`` as the default backend of every op."""
    _check_name(name)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


@functools.cache
def _triton_status() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return False, f"triton is not installed ({error})"
    return True, ""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def backend_status(
    device: torch.device | str = "cpu", native_op: str | None = None
) -> dict[str, tuple[bool, str]]:
    """For each backend: ``(available, reason_if_not)`` on ``device``.

    ``native_op`` names the C++ op a caller needs: an extension built from older sources that
    lacks it counts as unavailable for that op.
    """
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return dict(_backend_status(device_type, native_op, _interpreting()))


# Every op resolves its backend on every call; what decides it (the device type, the op, the
# Triton interpreter switch, what is installed and built) is fixed while the process runs, so
# it is worked out once per key. Host-side work bounds the small ops on a GPU (lbs at SMPL's
# size on the H100: 0.37 ms of kernels in 2.3 ms), and this was ~5 µs of it per call.
@functools.cache
def _backend_status(
    device_type: str, native_op: str | None, interpreting: bool
) -> dict[str, tuple[bool, str]]:
    status: dict[str, tuple[bool, str]] = {"torch": (True, "")}

    triton_ok, reason = _triton_status()
    if triton_ok and device_type == "cpu" and not interpreting:
        triton_ok, reason = (
            False,
            (
                "Triton runs on the CPU only under its interpreter: set TRITON_INTERPRET=1 "
                "before importing portrait_engine"
            ),
        )
    elif triton_ok and device_type == "cuda" and interpreting:
        triton_ok, reason = False, "TRITON_INTERPRET=1 is set, so Triton cannot use the GPU"
    elif triton_ok and device_type not in ("cpu", "cuda"):
        triton_ok, reason = False, f"no Triton support for device type {device_type!r}"
    status["triton"] = (triton_ok, reason)

    native_ok, reason = _extension.load()
    if native_ok and device_type == "cuda" and not _extension.has_cuda_kernels():
        native_ok, reason = False, "the extension was built without its CUDA kernels"
    elif native_ok and device_type not in ("cpu", "cuda"):
        native_ok, reason = False, f"no native kernels for device type {device_type!r}"
    elif native_ok and native_op is not None and not _extension.has_op(native_op):
        native_ok, reason = (
            False,
            (
                f"the built extension has no {native_op} op (built from older sources): rebuild it "
                "with `pip install --no-build-isolation -e .`"
            ),
        )
    status["native"] = (native_ok, reason)
    return status


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on ``device`` (``"torch"`` always can)."""
    return [name for name, (ok, _) in backend_status(device).items() if ok]


@torch.compiler.assume_constant_result
def resolve(backend: str | None, device: torch.device, native_op: str | None = None) -> str:
    """The concrete backend for one call: ``backend`` or the one in force, ``auto`` resolved.

    Under ``torch.compile`` this runs once, while tracing: a compiled function keeps the
    backend that was in force when it was compiled.
    """
    name = _check_name(get_backend() if backend is None else backend)
    status = backend_status(device, native_op)
    if name == "auto":
        order = AUTO_ORDER_BY_OP.get((device.type, native_op)) or AUTO_ORDER.get(
            device.type, ("torch",)
        )
        for candidate in order:
            if status[candidate][0]:
                return candidate
        return "torch"
    ok, reason = status[name]
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} is not available on {device}: {reason}")
    return name
