"""lbs's one autograd node (``_LBS`` in ``portrait_engine/ops/skinning.py``): every route of its
shape part and every broadcast against ``smplx.lbs.lbs``, with any subset of the inputs needing
gradients (the hand-written backward must return each input's gradient, and ``None`` for the
others)."""

from __future__ import annotations

import pytest
import smplx.lbs
import torch

from portrait_engine.ops import lbs
from portrait_engine.ops import skinning as skinning_module
from tests.helpers import assert_close
from tests.ops.test_lbs import KERNEL_BACKENDS, make_inputs

NAMES = ["betas", "pose", "v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights"]
INDEX = {
    "betas": 0,
    "pose": 1,
    "v_template": 2,
    "shapedirs": 3,
    "posedirs": 4,
    "J_regressor": 5,
    "lbs_weights": 7,
}


def _run(backend, inputs, needs):
    leaves = [
        x.detach().clone().requires_grad_(i in needs) if x.is_floating_point() else x
        for i, x in enumerate(inputs)
    ]
    if backend == "smplx":
        vertices, joints = smplx.lbs.lbs(*leaves)
    else:
        vertices, joints = lbs(*leaves, backend=backend)
    generator = torch.Generator().manual_seed(3)
    gv = torch.randn(vertices.shape, generator=generator).to(vertices)
    gj = torch.randn(joints.shape, generator=generator).to(joints)
    torch.autograd.backward([vertices, joints], [gv, gj])
    return [vertices.detach(), joints.detach()] + [leaves[i].grad for i in INDEX.values()]


def _variant(kind):
    """smplx's arguments for one route / broadcast of the shape part."""
    inputs = make_inputs(batch=4, rings=5, around=6)
    if kind == "more_shapes_than_betas":  # B = 4 > NB = 2: "kernel" (CPU native), "regressed"
        inputs[0] = inputs[0][:, :2].contiguous()
        inputs[3] = inputs[3][..., :2].contiguous()
    elif kind == "one_betas_row":  # v_shaped of one row, the pose batch of 4
        inputs[0] = inputs[0][:1]
    elif kind == "one_pose_row":  # four shapes under one pose
        inputs[1] = inputs[1][:1]
    elif kind == "batched_template":  # (B, V, 3) templates
        inputs[2] = inputs[2] + 0.01 * torch.randn((4, *inputs[2].shape))
    elif kind == "batched_template_one_betas_row":
        inputs[2] = inputs[2] + 0.01 * torch.randn((4, *inputs[2].shape))
        inputs[0] = inputs[0][:1]
    elif kind == "template_of_one_row":  # (1, V, 3)
        inputs[2] = inputs[2].unsqueeze(0)
    elif kind == "single":  # B = 1
        inputs[0], inputs[1] = inputs[0][:1], inputs[1][:1]
    return inputs


def _expected(kind, inputs, needs):
    """smplx's results for the variant; smplx broadcasts neither betas nor pose rows."""
    repeated = list(inputs)
    batch = max(inputs[0].shape[0], inputs[1].shape[0])
    if kind in ("one_betas_row", "batched_template_one_betas_row"):
        repeated[0] = inputs[0].expand(batch, -1)
    if kind == "one_pose_row":
        repeated[1] = inputs[1].expand(batch, -1)
    want = _run("smplx", repeated, needs)
    for name, rows in (("betas", inputs[0].shape[0]), ("pose", inputs[1].shape[0])):
        slot = 2 + NAMES.index(name)
        if want[slot] is not None and rows == 1 and batch > 1:
            want[slot] = want[slot].sum(0, keepdim=True)
    return want


KINDS = [
    "plain",
    "more_shapes_than_betas",
    "one_betas_row",
    "one_pose_row",
    "batched_template",
    "batched_template_one_betas_row",
    "template_of_one_row",
    "single",
]
NEEDS = {
    "all": tuple(INDEX.values()),
    "betas_pose": (0, 1),  # GAN training: the model tensors need no gradient
    "model_only": (2, 3, 4, 5, 7),
    "pose_only": (1,),
    "shape_only": (0, 3),
}


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("needs", list(NEEDS))
def test_every_route_and_broadcast_matches_smplx(backend, kind, needs):
    inputs = _variant(kind)
    got = _run(backend, inputs, NEEDS[needs])
    want = _expected(kind, inputs, NEEDS[needs])
    for name, g, w in zip(["vertices", "joints", *NAMES], got, want, strict=True):
        if w is None:
            assert g is None, f"{name}: a gradient where smplx has none"
            continue
        assert g is not None, f"{name}: no gradient"
        assert g.shape == w.shape, name
        assert_close(g, w, torch.float32, scale=10)


@pytest.mark.parametrize("kind", ["one_betas_row", "single"])
@pytest.mark.parametrize("needs", list(NEEDS))
def test_rows_route_matches_smplx(monkeypatch, kind, needs):
    """The GPU's route for one shape (a (V, 3) template, one betas row), forced on the CPU."""
    routes = []

    def rows(*args):
        routes.append("rows")
        return "rows"

    monkeypatch.setattr(skinning_module, "_shape_route", rows)
    inputs = _variant(kind)
    got = _run("native", inputs, NEEDS[needs])
    assert routes, "lbs did not ask for a route"
    want = _expected(kind, inputs, NEEDS[needs])
    for name, g, w in zip(["vertices", "joints", *NAMES], got, want, strict=True):
        assert (g is None) == (w is None), name
        if w is not None:
            assert_close(g, w, torch.float32, scale=10)


@pytest.mark.parametrize("batch, betas, route", [(1, 10, "direct"), (4, 2, "regressed")])
def test_shape_route_choice(batch, betas, route):
    """Up to NB shapes the joints come from 𝒥 v_shaped; beyond, from 𝒥 [T | S] (the CPU
    native backend runs that route as its shape_blend kernel)."""
    inputs = make_inputs(batch=batch, rings=3, around=4)
    got = skinning_module._shape_route("triton", inputs[0][:, :betas], inputs[2])
    assert got == route
    batched = inputs[2].expand(batch, -1, -1)
    assert skinning_module._shape_route("triton", inputs[0][:, :betas], batched) == "direct"
