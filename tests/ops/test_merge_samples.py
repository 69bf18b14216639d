"""merge_samples: every backend against the reference and a float64 per-ray two-pointer merge,
forward and backward; ties; edge and bad inputs."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import merge_samples
from portrait_engine.ops.reference import merge_samples_reference

NATIVE_OP = "merge_samples_index"


def _backend_param(name):
    ok, reason = pe.backend_status("cpu", NATIVE_OP)[name]
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=reason))


KERNEL_BACKENDS = [_backend_param("triton"), _backend_param("native")]
ALL_BACKENDS = [pytest.param("torch")] + KERNEL_BACKENDS


def make_inputs(batch=2, rays=3, first=6, second=5, channels=(4, 1), seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    depths1 = torch.sort(torch.rand(batch, rays, first, 1, generator=generator), dim=-2).values
    depths2 = torch.sort(torch.rand(batch, rays, second, 1, generator=generator), dim=-2).values
    values1 = tuple(torch.randn(batch, rays, first, c, generator=generator) for c in channels)
    values2 = tuple(torch.randn(batch, rays, second, c, generator=generator) for c in channels)
    cast = lambda ts: tuple(t.to(dtype) for t in ts)  # noqa: E731
    return depths1.to(dtype), depths2.to(dtype), cast(values1), cast(values2)


def two_pointer_merge(depths1, depths2, values1, values2):
    """The classic merge of two sorted lists, ray by ray (ties: the first list first)."""
    batch, rays, first, _ = depths1.shape
    second = depths2.shape[2]
    out_depths = torch.empty(batch, rays, first + second, 1, dtype=torch.float64)
    out_values = [torch.empty(batch, rays, first + second, v.shape[-1]) for v in values1]
    for b in range(batch):
        for r in range(rays):
            i = j = 0
            for k in range(first + second):
                take_first = j >= second or (
                    i < first and depths1[b, r, i, 0] <= depths2[b, r, j, 0]
                )
                src, idx, vals = (depths1, i, values1) if take_first else (depths2, j, values2)
                out_depths[b, r, k] = src[b, r, idx].double()
                for out, v in zip(out_values, vals, strict=True):
                    out[b, r, k] = v[b, r, idx].float()
                i, j = (i + 1, j) if take_first else (i, j + 1)
    return out_depths, tuple(out_values)


def run(backend, depths1, depths2, values1, values2, grad_seed=3):
    leaves = [t.detach().clone().requires_grad_() for t in (depths1, depths2, *values1, *values2)]
    n = len(values1)
    d1, d2, v1, v2 = leaves[0], leaves[1], leaves[2 : 2 + n], leaves[2 + n :]
    merged_depths, merged_values = merge_samples(d1, d2, v1, v2, backend=backend)
    generator = torch.Generator().manual_seed(grad_seed)
    loss = sum(
        (out * torch.randn(out.shape, generator=generator).to(out)).sum()
        for out in (merged_depths, *merged_values)
    )
    loss.backward()
    return (merged_depths, *merged_values), tuple(leaf.grad for leaf in leaves)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("sizes", [(6, 5), (48, 48), (1, 1), (1, 7), (9, 1)], ids=str)
def test_matches_two_pointer_merge(backend, sizes):
    depths1, depths2, values1, values2 = make_inputs(
        first=sizes[0], second=sizes[1], seed=sum(sizes)
    )
    merged_depths, merged_values = merge_samples(
        depths1, depths2, values1, values2, backend=backend
    )
    want_depths, want_values = two_pointer_merge(depths1, depths2, values1, values2)
    torch.testing.assert_close(merged_depths.double(), want_depths, rtol=0, atol=0)
    for got, want in zip(merged_values, want_values, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernels_match_reference_forward_and_backward(backend, dtype):
    inputs = make_inputs(first=10, second=7, channels=(3, 1, 2), seed=5, dtype=dtype)
    got_out, got_grads = run(backend, *inputs)
    want_out, want_grads = run("torch", *inputs)
    # a permutation and its inverse: exact in every dtype
    for got, want in zip(got_out + got_grads, want_out + want_grads, strict=True):
        assert got.dtype == want.dtype == dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_large_outputs_are_written_in_full(backend):
    # 384 rays x (48 + 48) samples x 64 channels: the merged values (9.4 MiB) and the value
    # gradients (4.7 MiB each) are above the 4 MiB threshold of csrc/cpu_memory.h's huge-page
    # allocation; the depths (0.1 MiB) below it. Every element is still written, in the same
    # permutation as the reference's stable sort, ties included (some second-set depths repeat
    # first-set ones).
    depths1, depths2, values1, values2 = make_inputs(
        batch=1, rays=384, first=48, second=48, channels=(64,), seed=21
    )
    depths2[:, ::3, ::4] = depths1[:, ::3, ::4]
    depths2 = torch.sort(depths2, dim=-2).values
    got_out, got_grads = run(backend, depths1, depths2, values1, values2)
    want_out, want_grads = run("torch", depths1, depths2, values1, values2)
    for got, want in zip(got_out + got_grads, want_out + want_grads, strict=True):
        assert not bool(torch.isnan(got).any())
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_ties_put_the_first_set_first(backend):
    depths1 = torch.tensor([0.0, 1.0, 1.0, 2.0]).reshape(1, 1, 4, 1)
    depths2 = torch.tensor([1.0, 1.0, 3.0]).reshape(1, 1, 3, 1)
    tag1 = torch.zeros(1, 1, 4, 1)
    tag2 = torch.ones(1, 1, 3, 1)
    index1 = torch.arange(4.0).reshape(1, 1, 4, 1)
    index2 = torch.arange(3.0).reshape(1, 1, 3, 1)
    depths, (tags, indices) = merge_samples(
        depths1, depths2, (tag1, index1), (tag2, index2), backend=backend
    )
    assert depths.flatten().tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0]
    assert tags.flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert indices.flatten().tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 3.0, 2.0]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradcheck_float64(backend):
    if backend == "triton":
        pytest.skip("the Triton kernels take fp32 / fp16 / bf16")
    d1, d2, v1, v2 = make_inputs(batch=1, rays=2, first=4, second=3, channels=(2,), seed=1)
    d1, d2 = d1.double(), d2.double()
    a = v1[0].double().requires_grad_()
    b = v2[0].double().requires_grad_()

    def fn(a, b):
        return merge_samples(d1, d2, (a,), (b,), backend=backend)[1][0]

    assert torch.autograd.gradcheck(fn, (a, b))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_edge_inputs(backend):
    d1, d2, v1, v2 = make_inputs(batch=2, rays=4, first=5, second=4)
    # non-contiguous inputs, an empty batch, no values, an empty second set
    depths, values = merge_samples(
        d1[:, ::2], d2[:, ::2], [v[:, ::2] for v in v1], [v[:, ::2] for v in v2], backend=backend
    )
    want_depths, want_values = merge_samples_reference(
        d1[:, ::2], d2[:, ::2], [v[:, ::2] for v in v1], [v[:, ::2] for v in v2]
    )
    torch.testing.assert_close(depths, want_depths, rtol=0, atol=0)
    for got, want in zip(values, want_values, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    depths, values = merge_samples(
        d1[:0], d2[:0], [v[:0] for v in v1], [v[:0] for v in v2], backend=backend
    )
    assert depths.shape == (0, 4, 9, 1) and values[0].shape == (0, 4, 9, 4)
    depths, values = merge_samples(d1, d2, backend=backend)
    assert values == () and depths.shape == (2, 4, 9, 1)
    depths, values = merge_samples(d1, d2[:, :, :0], (v1[0],), (v2[0][:, :, :0],), backend=backend)
    torch.testing.assert_close(depths, d1, rtol=0, atol=0)
    torch.testing.assert_close(values[0], v1[0], rtol=0, atol=0)


def bad_cases():
    d1, d2, v1, v2 = make_inputs()
    unsorted = d1.flip(-2)
    with_nan = d2.clone()
    with_nan[0, 0, 2, 0] = float("nan")
    return [
        ("depths1 not a tensor", dict(depths1=1.0), TypeError, "depths1 must be a torch.Tensor"),
        (
            "depths2 rank",
            dict(depths2=d2[0]),
            ValueError,
            r"depths2 must have shape \(B, R, S, 1\)",
        ),
        ("depths1 last dim", dict(depths1=d1.expand(-1, -1, -1, 2)), ValueError, "depths1 must"),
        ("rays mismatch", dict(depths2=d2[:, :2]), ValueError, r"the same \(B, R\)"),
        ("integer depths", dict(depths1=d1.long()), TypeError, "depths1 must be a floating"),
        ("dtype mismatch", dict(depths2=d2.double()), TypeError, "same dtype"),
        ("values not a list", dict(values1=v1[0]), TypeError, "values1 must be a tuple or list"),
        ("values count", dict(values2=v2[:1]), ValueError, "same number of tensors"),
        ("values shape", dict(values1=(v1[0][:, :, :3], v1[1])), ValueError, r"values1\[0\]"),
        ("values channels", dict(values2=(v2[0][..., :2], v2[1])), ValueError, "channel count"),
        ("values dtype", dict(values2=(v2[0].double(), v2[1])), TypeError, "same dtype"),
        ("unsorted", dict(depths1=unsorted), ValueError, "depths1 must be sorted"),
        ("nan", dict(depths2=with_nan), ValueError, "depths2 must not contain NaN"),
    ]


@pytest.mark.parametrize(
    "name,override,error,match", bad_cases(), ids=[case[0] for case in bad_cases()]
)
def test_bad_inputs_raise_clear_errors(name, override, error, match):
    d1, d2, v1, v2 = make_inputs()
    args = dict(depths1=d1, depths2=d2, values1=v1, values2=v2)
    args.update(override)
    with pytest.raises(error, match=match):
        merge_samples(**args)


OPS = {
    "triton": (
        "merge_samples_triton_index",
        "merge_samples_triton_scatter",
        "merge_samples_triton_gather",
    ),
    "native": ("merge_samples_index", "merge_samples_scatter", "merge_samples_gather"),
}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(backend, requires_grad):
    index, scatter, gather = (getattr(torch.ops.portrait_engine, name) for name in OPS[backend])
    d1, d2, v1, v2 = make_inputs(batch=1, rays=3, first=5, second=4, channels=(3,))
    d1, d2 = d1.reshape(3, 5), d2.reshape(3, 4)
    torch.library.opcheck(index, (d1, d2))
    p1, p2 = index(d1, d2)
    a = v1[0].reshape(3, 5, 3).requires_grad_(requires_grad)
    b = v2[0].reshape(3, 4, 3).requires_grad_(requires_grad)
    torch.library.opcheck(scatter, (a, b, p1, p2))
    torch.library.opcheck(gather, (torch.randn(3, 9, 3), p1, p2))


# (N, S1, S2, C) of the kernel ops: EG3D's 48 + 48 with its colour+density C = 33 and the
# depths' C = 1, a C that is a multiple of the 16-byte vector, S1 != S2 either way round, and
# empty lists
KERNEL_SHAPES = [
    (5, 48, 48, 33),
    (9, 48, 48, 1),
    (3, 13, 6, 8),
    (4, 6, 13, 3),
    (3, 0, 5, 4),
    (2, 5, 0, 4),
]


def offset_tensor(values: torch.Tensor, offset: int) -> torch.Tensor:
    """``values`` as a contiguous tensor starting ``offset`` elements into its storage: a data
    pointer off the 16-byte alignment of a fresh allocation when ``offset`` is not a multiple
    of the vector (1 and 3 elements of every dtype)."""
    storage = torch.empty(values.numel() + offset, dtype=values.dtype, device=values.device)
    out = storage[offset:].view(values.shape)
    out.copy_(values)
    return out


def check_scatter_and_gather(backend, device, rays, first, second, channels, dtype, offset):
    """The kernel ops against index arithmetic on the positions they return: every merged row is
    its source row, every gradient row its merged row, bit for bit."""
    index, scatter, gather = (getattr(torch.ops.portrait_engine, name) for name in OPS[backend])
    generator = torch.Generator().manual_seed(rays * 1000 + first * 10 + second + channels)
    # depths on a grid of 16 values: many ties within and across the lists
    d1, d2 = (
        torch.sort(torch.randint(0, 16, (rays, n), generator=generator) / 16.0, dim=-1).values
        for n in (first, second)
    )
    v1 = torch.randn(rays, first, channels, generator=generator).to(dtype)
    v2 = torch.randn(rays, second, channels, generator=generator).to(dtype)
    grad = torch.randn(rays, first + second, channels, generator=generator).to(dtype)
    d1, d2 = d1.to(device), d2.to(device)
    v1, v2, grad = (offset_tensor(t.to(device), offset) for t in (v1, v2, grad))
    p1, p2 = index(d1, d2)
    merged_rows = torch.cat([p1, p2], dim=1).sort(dim=1).values.cpu()
    assert torch.equal(merged_rows, torch.arange(first + second).expand(rays, -1))
    rows = torch.arange(rays, device=device)[:, None]
    want = torch.empty(rays, first + second, channels, dtype=dtype, device=device)
    want[rows, p1.long()] = v1
    want[rows, p2.long()] = v2
    got = scatter(v1, v2, p1, p2)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    grad1, grad2 = gather(grad, p1, p2)
    torch.testing.assert_close(grad1, grad[rows, p1.long()], rtol=0, atol=0)
    torch.testing.assert_close(grad2, grad[rows, p2.long()], rtol=0, atol=0)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=str)
def test_scatter_and_gather_ops_move_whole_rows(backend, shape, dtype, offset):
    check_scatter_and_gather(backend, "cpu", *shape, dtype, offset)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("shape", [(5, 48, 48, 33), (4, 6, 13, 3)], ids=str)
def test_triton_copies_with_int64_offsets(shape, monkeypatch):
    # the int64 path (WIDE) is taken above 2^31 elements; force it at a testable size
    if not pe.backend_status("cpu", NATIVE_OP)["triton"][0]:
        pytest.skip("Triton is not available")
    from portrait_engine.kernels import importance as kernels

    monkeypatch.setattr(kernels, "_INT32_LIMIT", 0)
    check_scatter_and_gather("triton", "cpu", *shape, torch.float32, 1)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    d1, d2, v1, v2 = make_inputs(channels=(3,))

    def fn(d1, d2, a, b):
        depths, (values,) = merge_samples(d1, d2, (a,), (b,), backend=backend)
        return (depths * values).square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a, b = v1[0].clone().requires_grad_(), v2[0].clone().requires_grad_()
    compiled(d1, d2, a, b).backward()
    c, e = v1[0].clone().requires_grad_(), v2[0].clone().requires_grad_()
    fn(d1, d2, c, e).backward()
    torch.testing.assert_close(a.grad, c.grad)
    torch.testing.assert_close(b.grad, e.grad)


# --- depths known sorted: checked once per tensor version ------------------------------------


class _CountComparisons(torch.overrides.TorchFunctionMode):
    """Counts the ``>=`` comparisons (the sortedness check's pass) run under it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.__ge__, torch.Tensor.ge, torch.ge):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_checked_tensor_is_checked_again_only_after_a_change(backend):
    depths1, depths2, values1, values2 = make_inputs()
    with _CountComparisons() as counter:
        merge_samples(depths1, depths2, values1, values2, backend=backend)
    assert counter.count == 2
    with _CountComparisons() as counter:
        merged, _ = merge_samples(depths1, depths2, values1, values2, backend=backend)
    assert counter.count == 0
    # the merged depths are sorted by construction: merging them again checks nothing
    with _CountComparisons() as counter:
        merge_samples(merged, depths2, (), (), backend=backend)
    assert counter.count == 0
    depths1[0, 0, 0, 0] = 2.0  # in place: the version counter moves, the check runs (and fails)
    with pytest.raises(ValueError, match="depths1 must be sorted"):
        merge_samples(depths1, depths2, values1, values2, backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_what_is_not_known_sorted_is_checked(backend):
    """Importance samples are checked on their first merge (absurd weights can overflow their
    pdf into NaN); depths with inf (sorted, but not finite) and inference-mode tensors (no
    version counter) on every merge."""
    from portrait_engine.ops import sample_importance

    generator = torch.Generator().manual_seed(0)
    depths = torch.sort(torch.rand(2, 3, 8, 1, generator=generator) + 2, dim=-2).values
    weights = torch.rand(2, 3, 7, 1, generator=generator)
    merge_samples(depths, depths, (), (), backend=backend)  # depths now known
    fine = sample_importance(depths, weights, 5, sort=True, generator=generator, backend=backend)
    with _CountComparisons() as counter:  # not known from the sampler: checked (then known)
        merge_samples(depths, fine, (), (), backend=backend)
    assert counter.count == 1
    far = depths.clone()
    far[..., -1, :] = float("inf")
    for _ in range(2):
        with _CountComparisons() as counter:
            merged, _ = merge_samples(far, depths, (), (), backend=backend)
        assert counter.count == 1
    with torch.inference_mode():
        frozen = depths.clone()
        for _ in range(2):
            with _CountComparisons() as counter:
                merge_samples(frozen, frozen, (), (), backend=backend)
            assert counter.count == 2
