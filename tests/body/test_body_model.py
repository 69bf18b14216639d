"""The body models: the procedural stand-in's structure, the 6-number pose, file loading."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import smplx.lbs
import torch

from portrait_engine.body import (
    HEAD_JOINT,
    NECK_JOINT,
    body_model,
    load_body_model,
    procedural_body_model,
)
from portrait_engine.body.procedural import _JOINTS
from portrait_engine.ops.reference import SMPL_PARENTS


@pytest.fixture(scope="module")
def model():
    return procedural_body_model(rings=12, around=16, dtype=torch.float64)


def test_structure_is_smpl_shaped(model):
    V, F = 12 * 16 + 2, 2 * 12 * 16
    assert model.v_template.shape == (V, 3)
    assert model.faces.shape == (F, 3) and model.faces.dtype == torch.int64
    assert int(model.faces.min()) == 0 and int(model.faces.max()) == V - 1
    assert model.shapedirs.shape == (V, 3, 10)
    assert model.posedirs.shape == (23 * 9, V * 3)
    assert model.J_regressor.shape == (24, V)
    assert model.lbs_weights.shape == (V, 24)
    assert model.parents.tolist() == list(SMPL_PARENTS)


def test_skinning_weights_are_a_partition_of_unity(model):
    assert (model.lbs_weights >= 0).all()
    torch.testing.assert_close(model.lbs_weights.sum(1), torch.ones(model.num_vertices).double())
    # the crown follows the head, the chest does not
    crown = model.v_template[:, 1].argmax()
    chest = model.v_template[:, 1].argmin()
    assert model.lbs_weights[crown, HEAD_JOINT] > 0.9
    assert model.lbs_weights[chest, HEAD_JOINT] < 0.01


def test_joint_regressor_reproduces_the_joints(model):
    joints = model.J_regressor @ model.v_template
    torch.testing.assert_close(joints, torch.tensor(_JOINTS, dtype=torch.float64))
    torch.testing.assert_close(model.J_regressor.sum(1), torch.ones(24, dtype=torch.float64))


def test_mesh_is_closed_and_outward(model):
    faces = model.faces
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    # every directed edge once, and its reverse once: a closed, consistently oriented surface
    keys = edges[:, 0] * 100000 + edges[:, 1]
    reverse = edges[:, 1] * 100000 + edges[:, 0]
    assert keys.unique().numel() == keys.numel()
    assert torch.isin(reverse, keys).all()
    tri = model.v_template[faces]
    volume = torch.linalg.det(tri).sum() / 6  # divergence theorem: positive when outward
    assert volume > 0


def test_six_number_pose_rotates_neck_and_head_only(model):
    body_pose = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], dtype=torch.float64)
    full = model.full_pose(body_pose).view(1, 24, 3)
    torch.testing.assert_close(full[0, NECK_JOINT], body_pose[0, :3])
    torch.testing.assert_close(full[0, HEAD_JOINT], body_pose[0, 3:])
    others = [j for j in range(24) if j not in (NECK_JOINT, HEAD_JOINT)]
    assert (full[0, others] == 0).all()


def test_canonical_mesh_has_the_neck_at_the_origin(model):
    canonical, neck = model.canonical(batch_size=2)
    assert canonical.shape == (2, model.num_vertices, 3)
    joints = torch.einsum("jv,bvc->bjc", model.J_regressor, canonical)
    torch.testing.assert_close(joints[:, NECK_JOINT], torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close(neck[0, 0], torch.tensor(_JOINTS[NECK_JOINT]).double())


def test_zero_pose_is_the_canonical_mesh_and_a_head_turn_moves_the_head(model):
    canonical, neck = model.canonical()
    rest = model.posed(torch.zeros(1, 6, dtype=torch.float64), neck=neck)
    torch.testing.assert_close(rest, canonical)
    turned = model.posed(torch.tensor([[0.0, 0, 0, 0, 0.8, 0]], dtype=torch.float64), neck=neck)
    moved = (turned - canonical).norm(dim=-1)[0]
    crown = model.v_template[:, 1].argmax()
    chest = model.v_template[:, 1].argmin()
    assert moved[crown] < 0.05  # the crown sits on the yaw axis
    face = (model.v_template[:, 1] > 0.6) & (model.v_template[:, 1] < 0.7)
    assert moved[face].max() > 0.04  # the face swings round
    assert moved[chest] < 1e-3


def test_lbs_of_the_model_is_smplx(model):
    generator = torch.Generator().manual_seed(0)
    betas = torch.randn(2, 10, generator=generator, dtype=torch.float64)
    pose = 0.3 * torch.randn(2, 72, generator=generator, dtype=torch.float64)
    got = model.forward(betas, pose, backend="torch")
    want = smplx.lbs.lbs(
        betas, pose, model.v_template, model.shapedirs, model.posedirs, model.J_regressor,
        model.parents, model.lbs_weights,
    )  # fmt: skip
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_stand_in_is_deterministic():
    a = procedural_body_model(rings=5, around=6)
    b = procedural_body_model(rings=5, around=6)
    for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert body_model().num_vertices == procedural_body_model().num_vertices


def test_missing_model_file_says_it_is_never_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="licensed downloads"):
        load_body_model(tmp_path / "SMPL_NEUTRAL.pkl")


def test_loads_an_smpl_format_file_through_smplx(tmp_path, model):
    """The stand-in written in SMPL's pickle layout reads back identically through smplx."""
    V = model.num_vertices
    data = {
        "v_template": model.v_template.numpy(),
        "shapedirs": model.shapedirs.numpy(),
        "posedirs": model.posedirs.T.reshape(V, 3, 207).numpy(),
        "J_regressor": model.J_regressor.numpy(),
        "weights": model.lbs_weights.numpy(),
        "kintree_table": np.stack([model.parents.numpy(), np.arange(24)]),
        "f": model.faces.numpy().astype(np.uint32),
    }
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(pickle.dumps(data))
    loaded = load_body_model(path, dtype=torch.float64)
    for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights"):
        torch.testing.assert_close(getattr(loaded, name), getattr(model, name))
    assert torch.equal(loaded.faces, model.faces)
    assert loaded.parents.tolist() == list(SMPL_PARENTS)
