"""The native CPU kernels' cache of large output blocks (csrc/output_cache.h): blend_shapes'
grad_dirs, lbs's posedirs gradient, comes from it; a freed block is reused with its pages
mapped, the results stay right on reused (stale) memory, the limit and the switch hold, and the
profiler still sees the allocation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import cpu_cache_info, empty_cpu_cache

_OK, _REASON = pe.backend_status("cpu", "blend_shapes_backward")["native"]
# grad_dirs comes from the cache on the kernels' own paths: float on an AVX2 or AVX-512 CPU
# (the SSE2 baseline's BLAS product allocates its own output)
_TILED = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
pytestmark = [
    pytest.mark.skipif(not _OK, reason=_REASON),
    pytest.mark.skipif(not _TILED, reason="grad_dirs takes the kernels' paths on AVX2 / AVX-512"),
]

# (23, 16384) floats: a 1.44 MiB grad_dirs (over the 1 MiB threshold), 23 blocks of 64 KiB
FEATURES, COLUMNS = 23, 16384
BLOCK_BYTES = FEATURES * COLUMNS * 4


def _inputs(batch, seed):
    generator = torch.Generator().manual_seed(seed)
    grad = torch.randn(batch, COLUMNS, generator=generator)
    coeffs = torch.randn(batch, FEATURES, generator=generator)
    dirs = torch.randn(FEATURES, COLUMNS, generator=generator)
    return grad, coeffs, dirs


def _backward(grad, coeffs, dirs):
    return torch.ops.portrait_engine.blend_shapes_backward(grad, coeffs, dirs, True)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("batch", [1, 2, 9])
def test_freed_grad_dirs_block_is_reused_and_results_stay_right(batch):
    empty_cpu_cache()
    assert cpu_cache_info()["blocks"] == 0
    _, grad_dirs = _backward(*_inputs(batch, seed=0))
    first = grad_dirs.data_ptr()
    del grad_dirs
    info = cpu_cache_info()
    assert info == {"blocks": 1, "bytes": BLOCK_BYTES, "limit_bytes": info["limit_bytes"]}
    # the next request of the size takes that block (its old values in place), and the kernel
    # writes all of it: the poison fill is NaN, a stale value would differ from the product
    grad, coeffs, dirs = _inputs(batch, seed=1)
    grad_coeffs, grad_dirs = _backward(grad, coeffs, dirs)
    assert grad_dirs.data_ptr() == first
    assert cpu_cache_info()["blocks"] == 0
    # float32 sums of `batch` products (grad_dirs) and of 16384 (grad_coeffs, |sum| ~ 128)
    expected_dirs = coeffs.double().t() @ grad.double()
    torch.testing.assert_close(grad_dirs.double(), expected_dirs, rtol=1e-5, atol=1e-5)
    expected_coeffs = grad.double() @ dirs.double().t()
    torch.testing.assert_close(grad_coeffs.double(), expected_coeffs, rtol=1e-4, atol=2e-3)


def test_small_outputs_skip_the_cache_and_empty_cpu_cache_frees_idle_blocks():
    empty_cpu_cache()
    _, grad_dirs = _backward(*_inputs(1, seed=0))
    del grad_dirs
    generator = torch.Generator().manual_seed(2)
    # 23 x 4096 floats (368 KiB): below the threshold, from at::empty
    small = [torch.randn(*shape, generator=generator) for shape in ((1, 4096), (1, 23), (23, 4096))]
    _, small_grad = _backward(*small)
    assert cpu_cache_info()["blocks"] == 1
    del small_grad
    assert cpu_cache_info()["blocks"] == 1
    empty_cpu_cache()
    assert cpu_cache_info() == {
        "blocks": 0,
        "bytes": 0,
        "limit_bytes": cpu_cache_info()["limit_bytes"],
    }


def test_profiler_sees_cached_blocks_while_a_tensor_holds_them():
    from portrait_engine.benchmark import memory

    grad, coeffs, dirs = _inputs(1, seed=3)
    for _ in range(2):  # the second call takes the block the first one freed
        peak, _ = memory.peak_memory(lambda: _backward(grad, coeffs, dirs), torch.device("cpu"))
        assert peak is not None and peak * 2**20 >= FEATURES * COLUMNS * 4


def _run_with(env_value, code):
    env = dict(os.environ, PORTRAIT_ENGINE_CPU_CACHE_MB=env_value)
    prefix = (
        "import torch, portrait_engine.ops as o\n"
        "g = torch.Generator().manual_seed(0)\n"
        f"def bwd():\n"
        f"    a = [torch.randn(1, {COLUMNS}, generator=g), torch.randn(1, {FEATURES}, generator=g),"
        f" torch.randn({FEATURES}, {COLUMNS}, generator=g)]\n"
        "    return torch.ops.portrait_engine.blend_shapes_backward(*a, True)[1]\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prefix + code], env=env, capture_output=True, text=True, timeout=120
    )


def test_limit_and_switch_come_from_the_environment():
    code = "x, y = bwd(), bwd()\ndel x, y\nprint(sorted(o.cpu_cache_info().items()))"
    # 2 MiB: the first freed block (1.44 MiB) is kept, the second would pass the limit
    result = _run_with("2", code)
    assert result.returncode == 0, result.stderr
    assert f"[('blocks', 1), ('bytes', {BLOCK_BYTES}), ('limit_bytes', {2 << 20})]" in result.stdout
    result = _run_with("0", code)  # off: at::empty, nothing kept
    assert result.returncode == 0, result.stderr
    assert "[('blocks', 0), ('bytes', 0), ('limit_bytes', 0)]" in result.stdout
    result = _run_with("lots", "bwd()")
    assert result.returncode != 0
    assert "PORTRAIT_ENGINE_CPU_CACHE_MB must be a whole number of MiB" in result.stderr
