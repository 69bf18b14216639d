"""lbs's native pose-blend-shape kernels (``blend_shapes_{forward,backward}``), and lbs at a mesh
large enough that the streamed kernels (batches below 8) run several column blocks."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from tests.helpers import assert_close, results_on_threads
from tests.ops.test_lbs import DIFFERENTIABLE, make_inputs, run

_OK, _REASON = pe.backend_status("cpu", "blend_shapes_forward")["native"]
pytestmark = pytest.mark.skipif(not _OK, reason=_REASON)

# 1100 columns: below a batch of 8, one partial 4096-column block of the streamed AVX-512
# kernels, its rows starting at varying 64-byte offsets (4400-byte rows; the test below runs
# several blocks); from 8, one BLAS call per product (grad_dirs: cpu_tile_gemm.h's tiles on an
# AVX2 / AVX-512 CPU)
COLUMNS = 1100
FEATURES = 23


def blend_inputs(batch, base_rows, dtype, seed=0, features=FEATURES):
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(base_rows, COLUMNS, generator=generator).to(dtype)
    coeffs = torch.randn(batch, features, generator=generator).to(dtype)
    dirs = torch.randn(features, COLUMNS, generator=generator).to(dtype)
    return base, coeffs, dirs


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# below 8 rows the streamed AVX-512 kernels (one instance per batch: 1, 3 and 7 run here); from
# 8 rows (9, 17, 40): on AVX-512 the forward's 384-column strips of 48-column panels (1100
# columns: two whole strips and a partial one ending in a partial panel; 8-row tiles and single
# rows) and grad_coeffs' 8 slabs of dot-product tiles (4 rows by 6 features and the single ones
# left over: 23 and 37 features), on AVX2 the forward on cpu_tile_gemm.h's tiles over 16-column
# panels and grad_coeffs one BLAS call; grad_dirs from 2 rows on cpu_tile_gemm.h's tiles over
# 512-column strips (row tiles of 8 (AVX-512) or 6 (AVX2) and the smaller remainder tiles);
# baseline: the BLAS
@pytest.mark.parametrize(
    ("batch", "base_rows"), [(1, 1), (3, 3), (7, 1), (9, 9), (9, 1), (17, 1), (40, 40)]
)
@pytest.mark.parametrize("dirs_grad", [True, False])
@pytest.mark.parametrize("features", [FEATURES, 37])
# avx2 caps the run-time choice below the AVX-512 kernels: the BLAS path of a CPU without
# AVX-512 (and grad_dirs' AVX2 tiles); baseline: the BLAS everywhere
@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_blend_shapes_matches_addmm(dtype, batch, base_rows, dirs_grad, features, isa, monkeypatch):
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    base, coeffs, dirs = blend_inputs(batch, base_rows, dtype, features=features)
    ops = torch.ops.portrait_engine
    out = ops.blend_shapes_forward(base, coeffs, dirs)
    b, k, d = base.double(), coeffs.double(), dirs.double()
    assert_close(out, torch.addmm(b, k, d), dtype)
    grad = torch.randn(batch, COLUMNS, dtype=dtype)
    grad_coeffs, grad_dirs = ops.blend_shapes_backward(grad, coeffs, dirs, dirs_grad)
    # grad_coeffs sums 1100 products of unit normals (|sum| ~ 33) in blocks: fp32 rounding of
    # such a sum is ~ 33 * 1e-7 * sqrt(1100), above the 1e-5 absolute tolerance near zero
    assert_close(grad_coeffs, grad.double() @ d.t(), dtype, scale=10)
    if dirs_grad:
        assert_close(grad_dirs, k.t() @ grad.double(), dtype)
    else:
        assert grad_dirs.numel() == 0


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize(
    "batch, columns",
    # the forward's 4096-column blocks: two full ones and a partial one of 108; the backward
    # takes whole rows up to 65536 grad values (B x C), chunks of 4096 columns beyond (4 x 20000:
    # four full chunks and one of 3616, each row's dots summed over them in order)
    [(1, 8300), (7, 8300), (4, 20000)],
)
@pytest.mark.parametrize("dirs_grad", [True, False])
# one thread: the BLAS products (and B = 1's streamed outer product); two: the streamed passes
@pytest.mark.parametrize("threads", [1, 2])
def test_blend_shapes_streamed_over_several_blocks(batch, columns, dirs_grad, threads):
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(1, columns, generator=generator)
    coeffs = torch.randn(batch, FEATURES, generator=generator)
    dirs = torch.randn(FEATURES, columns, generator=generator)
    grad = torch.randn(batch, columns, generator=generator)
    ops = torch.ops.portrait_engine
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = ops.blend_shapes_forward(base, coeffs, dirs)
        grad_coeffs, grad_dirs = ops.blend_shapes_backward(grad, coeffs, dirs, dirs_grad)
    finally:
        torch.set_num_threads(before)
    b, k, d = base.double(), coeffs.double(), dirs.double()
    assert_close(out, torch.addmm(b, k, d), torch.float32)
    # sums of 8300-20000 products of unit normals (|sum| ~ 91-141): fp32 rounding as in the test
    # above
    assert_close(grad_coeffs, grad.double() @ d.t(), torch.float32, scale=30)
    if dirs_grad:
        assert_close(grad_dirs, k.t() @ grad.double(), torch.float32)
    else:
        assert grad_dirs.numel() == 0


def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as info:
            return "avx512f" in info.read()
    except OSError:
        return False


@pytest.mark.skipif(not _cpu_has_avx512(), reason="grad_coeffs takes a threaded BLAS call here")
@pytest.mark.parametrize("batch", [9, 32])
def test_blend_shapes_tiles_do_not_depend_on_threads(batch):
    """From 8 rows on an AVX-512 CPU the products run on fixed strips and slabs (grad_coeffs: a
    partial per slab, summed in order): bit-identical results on one thread and on two."""
    _assert_same_on_threads(batch, 8300, seed=5, counts=(1, 2))


@pytest.mark.skipif(not _cpu_has_avx512(), reason="the streamed passes need AVX-512")
@pytest.mark.parametrize("batch, columns", [(1, 20670), (3, 8300), (4, 20000)])
def test_blend_shapes_streamed_passes_do_not_depend_on_threads(batch, columns):
    """Below 8 rows (two threads or more) the backward splits dirs by rows, each row's dots
    summed by one task over its column chunks in order: bit-identical on two threads and three."""
    _assert_same_on_threads(batch, columns, seed=6, counts=(2, 3))


def _assert_same_on_threads(batch, columns, seed, counts):
    """blend_shapes forward and backward on random inputs give the same bits on each of
    `counts` threads."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(1, columns, generator=generator)
    coeffs = torch.randn(batch, FEATURES, generator=generator)
    dirs = torch.randn(FEATURES, columns, generator=generator)
    grad = torch.randn(batch, columns, generator=generator)
    ops = torch.ops.portrait_engine

    def both():
        out = ops.blend_shapes_forward(base, coeffs, dirs)
        return (out, *ops.blend_shapes_backward(grad, coeffs, dirs, True))

    results = results_on_threads(counts, both)
    for first, other in zip(results[0], results[1], strict=True):
        assert torch.equal(first, other)


@pytest.mark.parametrize("dirs_grad", [True, False])
def test_opcheck_blend_shapes(dirs_grad):
    base, coeffs, dirs = blend_inputs(9, 1, torch.float32)
    ops = torch.ops.portrait_engine
    args = (base.requires_grad_(), coeffs.requires_grad_(), dirs.requires_grad_(dirs_grad))
    torch.library.opcheck(ops.blend_shapes_forward, args)
    grad = torch.randn(9, COLUMNS)
    torch.library.opcheck(
        ops.blend_shapes_backward, (grad, coeffs.detach(), dirs.detach(), dirs_grad)
    )


def test_gradcheck_blend_shapes_float64():
    base, coeffs, dirs = blend_inputs(9, 1, torch.float64)
    leaves = [x.requires_grad_() for x in (base, coeffs, dirs)]
    # fast mode (random projections of the Jacobian): the full one has ~36k input columns
    assert torch.autograd.gradcheck(
        torch.ops.portrait_engine.blend_shapes_forward, leaves, fast_mode=True
    )


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("batch", [1, 9, 32])
@pytest.mark.parametrize("model_grads", [True, False])
def test_lbs_on_a_larger_mesh_matches_smplx(batch, model_grads):
    # 20 x 24 rings: 482 vertices, 1446 blend-shape columns
    inputs = make_inputs(batch=batch, rings=20, around=24)
    if not model_grads:  # GAN training: only betas and pose need gradients
        got = _run_pose_only("native", inputs)
        want = _run_pose_only("smplx", inputs)
    else:
        got = run("native", inputs)
        want = run("smplx", inputs)
    for g, w in zip(got, want, strict=True):
        # as test_lbs: fp32 sums of many products in another order than smplx's
        assert_close(g, w, torch.float32, scale=10)


def _run_pose_only(backend, inputs):
    import smplx.lbs

    from portrait_engine.ops import lbs

    leaves = [x.detach().clone().requires_grad_(i in (0, 1)) for i, x in enumerate(inputs)]
    if backend == "smplx":
        vertices, joints = smplx.lbs.lbs(*leaves)
    else:
        vertices, joints = lbs(*leaves, backend=backend)
    generator = torch.Generator().manual_seed(1)
    gv = torch.randn(vertices.shape, generator=generator)
    gj = torch.randn(joints.shape, generator=generator)
    torch.autograd.backward([vertices, joints], [gv, gj])
    assert all(leaves[i].grad is None for i in DIFFERENTIABLE if i > 1)
    return [vertices.detach(), joints.detach(), leaves[0].grad, leaves[1].grad]


def test_lbs_on_two_threads_matches_smplx():
    """Two threads, model tensors that require grad: the CPU kernels' worker threads (whose
    dispatch state is not the caller's) must still work, and agree."""
    inputs = make_inputs(batch=9, rings=20, around=24)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = run("native", inputs)
    finally:
        torch.set_num_threads(before)
    want = run("smplx", inputs)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float32, scale=10)


@pytest.mark.skipif(not _cpu_has_avx512(), reason="the BLAS runs some products here")
@pytest.mark.parametrize("batch", [1, 6])
def test_lbs_small_batches_do_not_depend_on_threads(batch):
    """Below 8 rows on an AVX-512 CPU native lbs runs no BLAS call: the direct route's shape part
    (shape_direct.h) and the streamed blend passes on fixed blocks, skin_points' per-chunk
    backward, each partial summed in block order. Two threads and three (the streamed passes
    need two or more) give bit-identical values and gradients, on a mesh of several vertex
    blocks and a partial one."""
    inputs = make_inputs(batch=batch, rings=20, around=24)
    results = results_on_threads((2, 3), lambda: run("native", inputs))
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


@pytest.mark.usefixtures("poison_outputs")
# from 8 rows (8 exactly, and 9): a lone partial panel (40 columns), a lone partial strip of
# whole and partial panels (100: grad_coeffs' 8 slabs of 16 columns leave the last ones empty),
# one whole strip (384), a strip and one column (385); 5 features (fewer than a 6-row tile)
@pytest.mark.parametrize("columns", [40, 100, 384, 385])
@pytest.mark.parametrize("batch", [8, 9])
@pytest.mark.parametrize("features", [5, 13])
def test_blend_shapes_tiles_at_edge_sizes(columns, batch, features):
    generator = torch.Generator().manual_seed(columns + batch + features)
    base = torch.randn(1, columns, generator=generator)
    coeffs = torch.randn(batch, features, generator=generator)
    dirs = torch.randn(features, columns, generator=generator)
    grad = torch.randn(batch, columns, generator=generator)
    ops = torch.ops.portrait_engine
    out = ops.blend_shapes_forward(base, coeffs, dirs)
    grad_coeffs, grad_dirs = ops.blend_shapes_backward(grad, coeffs, dirs, True)
    b, k, d, g = base.double(), coeffs.double(), dirs.double(), grad.double()
    assert_close(out, torch.addmm(b, k, d), torch.float32)
    assert_close(grad_coeffs, g @ d.t(), torch.float32, scale=10)
    assert_close(grad_dirs, k.t() @ g, torch.float32)
