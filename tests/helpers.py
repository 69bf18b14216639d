"""Comparison helpers shared by the tests."""

from __future__ import annotations

import torch

# (rtol, atol) of a kernel against the float32/float64 reference, per input dtype.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (4e-2, 4e-2),
}


def first_mismatches(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, limit: int = 5
) -> str:
    """A readable list of the first mismatching indices, NaN/inf disagreements included."""
    a, e = actual.double(), expected.double()
    bad = ~torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    indices = bad.nonzero()[:limit]
    parts = [
        f"{tuple(i.tolist())}: got {a[tuple(i)].item():.6g}, want {e[tuple(i)].item():.6g}"
        for i in indices
    ]
    return f"{int(bad.sum())} of {bad.numel()} elements differ; first: " + "; ".join(parts)


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype,
    scale: float = 1.0,
    max_flip_fraction: float = 0.0,
) -> None:
    """``isclose`` elementwise at the dtype's tolerance (times ``scale``).

    ``max_flip_fraction`` allows that fraction of elements to differ: for quantities that jump
    at a discontinuity (a gradient w.r.t. a coordinate on a texel border).
    """
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    rtol, atol = TOLERANCES[dtype]
    rtol, atol = rtol * scale, atol * scale
    bad = ~torch.isclose(actual.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True)
    allowed = int(max_flip_fraction * bad.numel())
    assert int(bad.sum()) <= allowed, first_mismatches(actual, expected, rtol, atol)


def results_on_threads(counts, fn):
    """fn() run once with each of `counts` intra-op threads (the count restored after), for
    tests that results do not depend on the threads."""
    before = torch.get_num_threads()
    results = []
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            results.append(fn())
    finally:
        torch.set_num_threads(before)
    return results


def relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double(), expected.double()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def fused_by_default_on_a_gpu(renderer, planes: torch.Tensor, decoder, monkeypatch) -> bool:
    """``renderer.use_fused`` for planes of ``planes``' shape on a GPU under the native backend:
    meta planes and the backend's resolution stand in for one (the CPU default is the unfused
    ops whatever the backend)."""
    from portrait_engine.nn import renderer as renderer_module

    with monkeypatch.context() as patch:
        patch.setattr(renderer_module._backend, "resolve", lambda *args: "native")
        on_gpu = torch.empty(planes.shape, device="meta")
        return renderer.use_fused(on_gpu, decoder)
