"""skin_points: validation, torch.library registration (opcheck), torch.compile."""

from __future__ import annotations

import pytest
import torch

from portrait_engine.ops import skin_points
from tests.ops.test_skin_points import KERNEL_BACKENDS, make_inputs

OPS = {
    "triton": ("skin_points_triton_forward", "skin_points_triton_backward"),
    "native": ("skin_points_forward", "skin_points_backward"),
}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("shared", [True, False], ids=["shared_weights", "batched_weights"])
def test_opcheck(backend, inverse, shared):
    forward, backward = OPS[backend]
    points, weights, transforms = make_inputs(count=9, joints=3, shared=shared)
    if shared:
        weights = weights.unsqueeze(0)
    args = [x.requires_grad_() for x in (points, weights, transforms)]
    torch.library.opcheck(getattr(torch.ops.portrait_engine, forward), (*args, inverse))
    grad = torch.randn_like(points)
    torch.library.opcheck(
        getattr(torch.ops.portrait_engine, backward),
        (grad, *[x.detach() for x in args], inverse),
    )


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    points, weights, transforms = make_inputs(count=9, joints=3)

    def fn(p, w, t):
        return skin_points(p, w, t, inverse=True, backend=backend).square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a = [x.clone().requires_grad_() for x in (points, weights, transforms)]
    compiled(*a).backward()
    b = [x.clone().requires_grad_() for x in (points, weights, transforms)]
    fn(*b).backward()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.grad, y.grad)


def bad_cases():
    points, weights, transforms = make_inputs()
    return [
        ("points not a tensor", dict(points=[1.0]), TypeError, "points must be a torch.Tensor"),
        (
            "points rank 2",
            dict(points=points[0]),
            ValueError,
            r"points must have shape \(B, N, 3\)",
        ),
        ("points not 3d", dict(points=points[..., :2]), ValueError, "points must have 3 coord"),
        ("weights rank 1", dict(weights=weights[0]), ValueError, "weights must have shape"),
        ("weights count", dict(weights=weights[:5]), ValueError, "point count N"),
        ("weights joints", dict(weights=weights[:, :2]), ValueError, "joint count J"),
        ("transforms 3x4", dict(transforms=transforms[:, :, :3]), ValueError, r"\(B, J, 4, 4\)"),
        ("transforms batch", dict(transforms=transforms[:1]), ValueError, "batch size B"),
        ("integer points", dict(points=points.long()), TypeError, "points must be a floating"),
        ("dtype mismatch", dict(weights=weights.double()), TypeError, "same dtype"),
        ("device mismatch", dict(transforms=transforms.to("meta")), ValueError, "same device"),
        ("inverse not bool", dict(inverse=1), TypeError, "inverse must be a bool"),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=lambda case: case[0])
def test_bad_inputs_raise_clear_errors(case):
    _, override, error, message = case
    points, weights, transforms = make_inputs()
    kwargs = {"points": points, "weights": weights, "transforms": transforms, "inverse": False}
    kwargs.update(override)
    with pytest.raises(error, match=message):
        skin_points(
            kwargs["points"], kwargs["weights"], kwargs["transforms"], inverse=kwargs["inverse"]
        )
