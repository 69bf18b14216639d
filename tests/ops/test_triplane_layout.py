"""planes_to_channels_last / planes_from_channels_last: the layout ops around the tri-plane
kernels (csrc/triplane/layout.cpp), and the helpers that use them."""

from __future__ import annotations

import pytest
import torch

from portrait_engine import _extension
from portrait_engine.ops.triplane import channels_last_planes, planes_to_channels_last

pytestmark = pytest.mark.skipif(
    not _extension.has_op("planes_to_channels_last"), reason="needs the built extension"
)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [
    (1, 3, 32, 1, 64, 64),  # EG3D's tri-plane as the kernels see it (D = 1)
    (2, 3, 5, 3, 7, 9),  # a tri-grid, odd sizes: partial tiles on both axes
    (1, 3, 33, 40, 40),  # rank 5, more rows and columns than one tile
    (2, 2, 19, 13, 11),  # 8 x 8 blocks beside partial ones on both axes, both directions
    (1, 2, 37, 1, 3),  # more channels than texels: the other band order each way
    (2, 1, 1, 1, 1),  # C = 1, one texel
    (2, 3, 4, 0, 5),  # empty spatial axis
    (0, 3, 4, 5),  # empty batch
]


def to_op(x):
    return torch.ops.portrait_engine.planes_to_channels_last(x)


def from_op(x):
    return torch.ops.portrait_engine.planes_from_channels_last(x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_both_directions_match_movedim(shape, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))).to(dtype)
    last = to_op(x)
    assert last.is_contiguous() and torch.equal(last, x.movedim(2, -1).contiguous())
    back = from_op(last)
    assert back.is_contiguous() and torch.equal(back, x)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
@pytest.mark.parametrize(
    "shape",
    [
        (1, 3, 32, 1, 64, 64),  # 8 x 8 blocks only; to channels-last: far-apart source rows
        (2, 2, 19, 13, 11),  # partial blocks and tiles on both axes (C = 19, 143 texels)
        (1, 2, 37, 1, 3),  # more channels than texels: the other band order each way
        (1, 1, 8, 8),  # one block
    ],
    ids=str,
)
def test_every_isa_path_moves_the_bits(shape, isa, monkeypatch):
    """The 4-byte transposes on each instruction-set path (the AVX2 8 x 8 blocks, the element
    loop) move every bit: random 32-bit patterns (NaN payloads included) come back as they
    were. A path the CPU lacks runs the widest one it has."""
    monkeypatch.setenv("PORTRAIT_ENGINE_CPU_ISA", isa)
    gen = torch.Generator().manual_seed(sum(shape))
    bits = torch.randint(-(2**31), 2**31 - 1, shape, generator=gen, dtype=torch.int32)
    x = bits.view(torch.float32)
    last = to_op(x)
    assert torch.equal(last.view(torch.int32), bits.movedim(2, -1).contiguous())
    assert torch.equal(from_op(last).view(torch.int32), bits)


def test_non_contiguous_input():
    base = torch.randn(2, 3, 6, 10, 12)
    x = base[..., ::2]  # strided last axis
    assert not x.is_contiguous()
    assert torch.equal(to_op(x), x.movedim(2, -1).contiguous())
    y = torch.randn(2, 3, 10, 8, 4).transpose(2, 3)  # (B, P, H, W, C) non-contiguous
    assert torch.equal(from_op(y), y.movedim(-1, 2).contiguous())


@pytest.mark.parametrize("op", [to_op, from_op])
def test_gradients(op):
    x = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))


@pytest.mark.parametrize("name", ["planes_to_channels_last", "planes_from_channels_last"])
def test_opcheck(name):
    x = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.portrait_engine, name).default, (x,))


@pytest.mark.parametrize("op", [to_op, from_op])
def test_bad_rank_names_the_argument(op):
    with pytest.raises(RuntimeError, match="planes must have at least 3 dimensions"):
        op(torch.randn(4, 5))


def test_channels_last_planes_gives_the_planes_a_contiguous_gradient():
    # the gradient comes back through the blocked transpose, already in the planes' layout, so
    # autograd hands it to .grad as it is (no permuted copy)
    planes = torch.randn(1, 3, 8, 16, 16, requires_grad=True)
    view = channels_last_planes(planes)
    assert view.shape == planes.shape and torch.equal(view, planes)
    assert view.movedim(2, -1).is_contiguous()
    weights = torch.randn_like(planes)
    (view * weights).sum().backward()
    assert planes.grad.is_contiguous() and torch.equal(planes.grad, weights)


def test_planes_to_channels_last_is_a_view_when_the_memory_is_in_order():
    planes = torch.randn(1, 3, 8, 1, 16, 16)
    ordered = planes.movedim(2, -1).contiguous().movedim(-1, 2)
    out = planes_to_channels_last(ordered)
    assert out.data_ptr() == ordered.data_ptr() and out.is_contiguous()
    copied = planes_to_channels_last(planes)
    assert copied.data_ptr() != planes.data_ptr() and torch.equal(copied, out)


def test_under_compile():
    fn = torch.compile(lambda x: from_op(to_op(x) * 2), fullgraph=True, dynamic=False)
    x = torch.randn(1, 3, 4, 5, 6)
    assert torch.equal(fn(x), x * 2)
