"""sample_importance: every backend against the reference and a float64 per-ray transcription of
EG3D's formulas; the random path by a Kolmogorov-Smirnov distance; registration and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import sample_importance
from portrait_engine.ops.reference import importance_uniforms, sample_importance_reference
from tests.helpers import assert_close

NATIVE_OP = "sample_importance"


def _backend_param(name):
    ok, reason = pe.backend_status("cpu", NATIVE_OP)[name]
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=reason))


KERNEL_BACKENDS = [_backend_param("triton"), _backend_param("native")]
ALL_BACKENDS = [pytest.param("torch")] + KERNEL_BACKENDS


def make_inputs(batch=2, rays=5, samples=12, seed=0, dtype=torch.float32, near=2.25, far=3.3):
    """Sorted jittered depths in [near, far] and ray-marcher-like weights (sum <= 1, peaked)."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.linspace(near, far, samples).expand(batch, rays, samples)
    jitter = torch.rand(batch, rays, samples, generator=generator) * (far - near) / samples
    depths = (steps + jitter).unsqueeze(-1)
    raw = torch.rand(batch, rays, samples - 1, generator=generator) ** 4
    weights = (raw / raw.sum(-1, keepdim=True).clamp_min(1e-12) * 0.9).unsqueeze(-1)
    return depths.to(dtype), weights.to(dtype)


def eg3d_oracle(depths: torch.Tensor, weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """EG3D's sample_importance + sample_pdf, one ray at a time in float64 numpy, from the
    formulas (max-pool with -inf padding, avg-pool, +0.01, inner S-3 weights + 1e-5, cdf,
    searchsorted right, clamped neighbours, denominators < 1e-5 -> 1)."""
    batch, rays, samples, _ = depths.shape
    z_all = depths.double().reshape(-1, samples).numpy()
    w_all = weights.double().reshape(-1, samples - 1).numpy()
    u_all = u.double().numpy()
    out = np.empty(u_all.shape)
    for r in range(z_all.shape[0]):
        z, w = z_all[r], w_all[r]
        padded = np.concatenate([[-np.inf], w, [-np.inf]])
        pooled = np.maximum(padded[:-1], padded[1:])  # length S
        smoothed = 0.5 * (pooled[:-1] + pooled[1:]) + 0.01  # length S-1
        inner = smoothed[1:-1] + 1e-5
        n_bins = inner.shape[0]
        cdf = np.concatenate([[0.0], np.cumsum(inner / inner.sum())]) if n_bins else np.zeros(1)
        mids = 0.5 * (z[:-1] + z[1:])
        for k, uk in enumerate(u_all[r]):
            i = int(np.searchsorted(cdf, uk, side="right"))
            below, above = max(i - 1, 0), min(i, n_bins)
            denom = cdf[above] - cdf[below]
            denom = 1.0 if denom < 1e-5 else denom
            out[r, k] = mids[below] + (uk - cdf[below]) / denom * (mids[above] - mids[below])
    return torch.from_numpy(out).reshape(batch, rays, -1, 1)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("samples", [4, 5, 7, 48])
@pytest.mark.parametrize("deterministic", [False, True], ids=["random", "deterministic"])
def test_matches_eg3d_formulas(backend, samples, deterministic):
    depths, weights = make_inputs(samples=samples, seed=samples)
    n = 9
    got = sample_importance(
        depths,
        weights,
        n,
        deterministic=deterministic,
        generator=torch.Generator().manual_seed(3),
        backend=backend,
    )
    u = importance_uniforms(
        10, n, deterministic=deterministic, generator=torch.Generator().manual_seed(3)
    )
    want = eg3d_oracle(depths, weights, u)
    assert got.shape == (2, 5, n, 1) and got.dtype == torch.float32
    assert_close(got, want, torch.float32)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("sort", [False, True])
# 48 draws: Triton sorts a row in the kernel; 1500: the row is longer than the sort tile (also
# under the interpreter), so the launcher sorts with torch.sort and the kernel loops over blocks
@pytest.mark.parametrize("draws", [48, 1500])
def test_kernels_match_reference_on_the_same_draws(backend, sort, draws):
    depths, weights = make_inputs(batch=3, rays=7, samples=48, seed=11)
    got = sample_importance(
        depths,
        weights,
        draws,
        generator=torch.Generator().manual_seed(5),
        sort=sort,
        backend=backend,
    )
    want = sample_importance_reference(
        depths, weights, draws, generator=torch.Generator().manual_seed(5), sort=sort
    )
    assert_close(got, want, torch.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_sorted_output_is_the_same_samples_in_depth_order(backend):
    depths, weights = make_inputs(samples=20, seed=4)
    unsorted = sample_importance(
        depths, weights, 30, generator=torch.Generator().manual_seed(8), backend=backend
    )
    ordered = sample_importance(
        depths, weights, 30, generator=torch.Generator().manual_seed(8), sort=True, backend=backend
    )
    assert bool((ordered[..., 1:, :] >= ordered[..., :-1, :]).all())
    assert not bool((unsorted[..., 1:, :] >= unsorted[..., :-1, :]).all())
    assert_close(ordered, torch.sort(unsorted, dim=-2).values, torch.float32)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("draws", [15, 16, 48, 256, 257])
def test_sorted_draw_counts_on_the_cpu_kernel(draws, deterministic):
    """The native CPU kernel sorts a ray's draws by a counting pass into 64 buckets and an
    insertion sort from 16 to 256 draws, by the insertion sort alone outside that range: each
    gives the unsorted samples in depth order (deterministic draws: u = linspace(0, 1), 1
    included, already in order)."""
    ok, reason = pe.backend_status("cpu", NATIVE_OP)["native"]
    if not ok:
        pytest.skip(reason)
    depths, weights = make_inputs(samples=20, seed=draws)

    def draw(sort):
        generator = torch.Generator().manual_seed(3)
        return sample_importance(
            depths, weights, draws, deterministic=deterministic, generator=generator, sort=sort,
            backend="native",
        )  # fmt: skip

    ordered = draw(True)
    assert bool((ordered[..., 1:, :] >= ordered[..., :-1, :]).all())
    assert_close(ordered, torch.sort(draw(False), dim=-2).values, torch.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_generator_makes_draws_reproducible(backend):
    depths, weights = make_inputs(seed=1)

    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return sample_importance(depths, weights, 16, generator=generator, backend=backend)

    torch.testing.assert_close(draw(7), draw(7), rtol=0, atol=0)
    assert not torch.equal(draw(7), draw(8))


def test_global_generator_gives_eg3d_draws():
    """generator=None draws torch.rand(B*R, n) from the global generator, as EG3D does."""
    depths, weights = make_inputs(seed=2)
    torch.manual_seed(123)
    got = sample_importance(depths, weights, 6, backend="torch")
    torch.manual_seed(123)
    u = torch.rand(10, 6)
    torch.testing.assert_close(got, eg3d_oracle(depths, weights, u).float())


def piecewise_linear_cdf(depths, weights, t):
    """The distribution sample_pdf draws from, evaluated at sorted points t (float64, one ray)."""
    z = depths.double().flatten().numpy()
    w = weights.double().flatten().numpy()
    padded = np.concatenate([[-np.inf], w, [-np.inf]])
    pooled = np.maximum(padded[:-1], padded[1:])
    inner = (0.5 * (pooled[:-1] + pooled[1:]) + 0.01)[1:-1] + 1e-5
    cdf = np.concatenate([[0.0], np.cumsum(inner / inner.sum())])
    mids = 0.5 * (z[:-1] + z[1:])
    # bin k spans mids[k] .. mids[k + 1] with mass inner[k] / sum
    return np.interp(t, mids[: cdf.shape[0]], cdf)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_random_draws_follow_the_importance_distribution(backend):
    """Kolmogorov-Smirnov distance between the draws and the piecewise-linear CDF."""
    depths, weights = make_inputs(batch=1, rays=1, samples=24, seed=9)
    n = 20000
    draws = sample_importance(
        depths, weights, n, generator=torch.Generator().manual_seed(0), backend=backend
    )
    t = np.sort(draws.double().flatten().numpy())
    expected = piecewise_linear_cdf(depths, weights, t)
    empirical_hi = np.arange(1, n + 1) / n
    empirical_lo = np.arange(0, n) / n
    ks = max(np.max(empirical_hi - expected), np.max(expected - empirical_lo))
    # the 0.1 % critical value of the one-sample KS statistic is 1.95 / sqrt(n)
    assert ks < 1.95 / np.sqrt(n), ks
    # and a wrong distribution (the uniform one over the same bins) is rejected
    mids = 0.5 * (depths.flatten()[:-1] + depths.flatten()[1:]).double().numpy()
    uniform = np.interp(t, [mids[0], mids[-2]], [0.0, 1.0])
    assert np.max(np.abs(uniform - empirical_hi)) > 5 / np.sqrt(n)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_no_gradient_flows(backend):
    depths, weights = make_inputs()
    depths.requires_grad_()
    weights.requires_grad_()
    fine = sample_importance(depths, weights, 4, backend=backend)
    assert not fine.requires_grad


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_edge_inputs(backend):
    depths, weights = make_inputs(batch=1, rays=4, samples=10)
    weights = weights.clone()
    weights[0, 0] = 0.0  # an empty ray: the +0.01 smoothing makes it uniform
    weights[0, 1] = 1.0  # all weight everywhere
    weights[0, 2, 4:] = 0.0
    weights[0, 2, 4] = 1.0  # all weight in one interval
    u = importance_uniforms(4, 33, generator=torch.Generator().manual_seed(1))

    def kwargs():
        return dict(generator=torch.Generator().manual_seed(1), backend=backend)

    got = sample_importance(depths, weights, 33, **kwargs())
    assert torch.isfinite(got).all()
    assert_close(got, eg3d_oracle(depths, weights, u), torch.float32)
    # one ray alone (EG3D's squeeze() breaks on it), non-contiguous inputs, empty batches
    single = sample_importance(depths[:, 2:3], weights[:, 2:3], 33, **kwargs())
    assert_close(single, eg3d_oracle(depths[:, 2:3], weights[:, 2:3], u[:1]), torch.float32)
    wide_depths, wide_weights = make_inputs(batch=2, rays=6, samples=10)
    strided = sample_importance(wide_depths[:, ::2], wide_weights[:, ::2], 5, **kwargs())
    u = importance_uniforms(6, 5, generator=torch.Generator().manual_seed(1))
    want = eg3d_oracle(wide_depths[:, ::2], wide_weights[:, ::2], u)
    assert_close(strided, want, torch.float32)
    assert sample_importance(depths[:0], weights[:0], 5, backend=backend).shape == (0, 4, 5, 1)
    assert sample_importance(depths, weights, 0, backend=backend).shape == (1, 4, 0, 1)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(backend, dtype):
    if dtype == torch.float64 and backend == "triton":
        pytest.skip("the Triton kernels compute in float32")
    depths, weights = make_inputs(samples=16, dtype=dtype)
    got = sample_importance(
        depths, weights, 12, generator=torch.Generator().manual_seed(2), backend=backend
    )
    assert got.dtype == dtype
    u = importance_uniforms(10, 12, generator=torch.Generator().manual_seed(2))
    assert_close(got, eg3d_oracle(depths, weights, u), dtype)


OPS = {"triton": "sample_importance_triton", "native": "sample_importance"}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("sort", [False, True])
def test_opcheck(backend, sort):
    depths, weights = make_inputs(batch=1, rays=3, samples=8)
    u = importance_uniforms(3, 5, generator=torch.Generator().manual_seed(0))
    op = getattr(torch.ops.portrait_engine, OPS[backend])
    torch.library.opcheck(op, (depths.reshape(3, 8), weights.reshape(3, 7), u, sort))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    depths, weights = make_inputs(samples=10)

    def fn(depths, weights):
        return sample_importance(depths, weights, 6, deterministic=True, sort=True, backend=backend)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(depths, weights), fn(depths, weights))


def bad_cases():
    depths, weights = make_inputs()
    with_nan = weights.clone()
    with_nan[0, 1, 2, 0] = float("nan")
    return [
        ("depths not a tensor", dict(depths=[1.0]), TypeError, "depths must be a torch.Tensor"),
        ("weights not a tensor", dict(weights=None), TypeError, "weights must be a torch.Tensor"),
        ("depths rank", dict(depths=depths[0]), ValueError, r"depths must have shape \(B, R, S, 1"),
        ("depths last dim", dict(depths=depths.expand(-1, -1, -1, 2)), ValueError, "depths must"),
        (
            "too few samples",
            dict(depths=depths[:, :, :3], weights=weights[:, :, :2]),
            ValueError,
            "at least 4",
        ),
        (
            "weights length",
            dict(weights=weights[:, :, :-1]),
            ValueError,
            r"weights must have shape \(B, R, S-1, 1\)",
        ),
        ("weights rays", dict(weights=weights[:, :2]), ValueError, "weights must have shape"),
        ("integer depths", dict(depths=depths.long()), TypeError, "depths must be a floating"),
        ("dtype mismatch", dict(weights=weights.double()), TypeError, "same dtype"),
        ("n not int", dict(n_importance=4.0), TypeError, "n_importance must be an int"),
        ("n bool", dict(n_importance=True), TypeError, "n_importance must be an int"),
        ("n negative", dict(n_importance=-1), ValueError, "n_importance must be >= 0"),
        ("deterministic", dict(deterministic=1), TypeError, "deterministic must be a bool"),
        ("sort", dict(sort="yes"), TypeError, "sort must be a bool"),
        ("generator type", dict(generator=0), TypeError, "generator must be a torch.Generator"),
        ("nan weights", dict(weights=with_nan), ValueError, "weights must be finite"),
        ("backend", dict(backend="cuda"), ValueError, "backend must be one of"),
    ]


@pytest.mark.parametrize(
    "name,override,error,match", bad_cases(), ids=[case[0] for case in bad_cases()]
)
def test_bad_inputs_raise_clear_errors(name, override, error, match):
    depths, weights = make_inputs()
    args = dict(depths=depths, weights=weights, n_importance=4)
    args.update(override)
    with pytest.raises(error, match=match):
        sample_importance(**args)
