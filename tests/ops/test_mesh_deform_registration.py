"""mesh_deform: validation, torch.library registration (opcheck), torch.compile."""

from __future__ import annotations

import pytest
import torch

from portrait_engine.ops import mesh_deform
from tests.ops.test_mesh_deform import KERNEL_BACKENDS, make_inputs

OPS = {
    "triton": ("mesh_deform_triton_forward", "mesh_deform_triton_backward"),
    "native": ("mesh_deform_forward", "mesh_deform_backward"),
}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_opcheck(backend):
    forward, backward = OPS[backend]
    points, posed, canonical, faces = make_inputs(count=30, rings=4, around=5)
    args = [x.requires_grad_() for x in (points, posed, canonical)]
    forward_op = getattr(torch.ops.portrait_engine, forward)
    torch.library.opcheck(forward_op, (*args, faces, 0.03))
    out, index = forward_op(*args, faces, 0.03)
    assert (index >= 0).any()
    torch.library.opcheck(
        getattr(torch.ops.portrait_engine, backward),
        (torch.randn_like(out), *[x.detach() for x in args], faces, index),
    )


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    points, posed, canonical, faces = make_inputs(count=30, rings=4, around=5)

    def fn(p, v, c):
        return mesh_deform(p, v, c, faces, thickness=0.03, backend=backend).square().sum()

    # the torch reference's nearest-face search loops over point chunks: no fullgraph there
    compiled = torch.compile(fn, fullgraph=backend != "torch", backend="aot_eager")
    a = [x.clone().requires_grad_() for x in (points, posed, canonical)]
    compiled(*a).backward()
    b = [x.clone().requires_grad_() for x in (points, posed, canonical)]
    fn(*b).backward()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.grad, y.grad)


def bad_cases():
    points, posed, canonical, faces = make_inputs()
    return [
        ("points not a tensor", dict(points=0), TypeError, "points must be a torch.Tensor"),
        (
            "points rank 2",
            dict(points=points[0]),
            ValueError,
            r"points must have shape \(B, N, 3\)",
        ),
        ("posed batch", dict(posed_vertices=posed[:1]), ValueError, "batch size B"),
        ("canonical verts", dict(canonical_vertices=canonical[:, :-1]), ValueError, "shape of"),
        ("faces rank", dict(faces=faces[0]), ValueError, r"faces must have shape \(F, 3\)"),
        ("no faces", dict(faces=faces[:0]), ValueError, "F > 0"),
        ("float faces", dict(faces=faces.float()), TypeError, "faces must be an integer"),
        ("face index range", dict(faces=faces + 10000), ValueError, "faces must index vertices"),
        ("negative index", dict(faces=faces - 1), ValueError, "faces must index vertices"),
        ("integer points", dict(points=points.int()), TypeError, "points must be a floating"),
        ("dtype mismatch", dict(posed_vertices=posed.double()), TypeError, "same dtype"),
        ("device mismatch", dict(canonical_vertices=canonical.to("meta")), ValueError, "device"),
        ("zero thickness", dict(thickness=0.0), ValueError, "thickness must be a positive"),
        ("nan thickness", dict(thickness=float("nan")), ValueError, "thickness must be a positive"),
        ("tensor thickness", dict(thickness=torch.tensor(0.1)), TypeError, "thickness must be a"),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=lambda case: case[0])
def test_bad_inputs_raise_clear_errors(case):
    _, override, error, message = case
    points, posed, canonical, faces = make_inputs()
    kwargs = dict(points=points, posed_vertices=posed, canonical_vertices=canonical, faces=faces)
    thickness = override.pop("thickness", 0.03)
    kwargs.update(override)
    with pytest.raises(error, match=message):
        mesh_deform(**kwargs, thickness=thickness)
