"""The synthetic portraits render the posed body mesh: masks, pose, mirror, rasteriser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from portrait_engine.data.portrait.dataset import PortraitDataset
from portrait_engine.data.portrait.labels import (
    camera_label,
    intrinsics_matrix,
    lookat_cam2world,
    mirror_camera,
    mirror_pose,
)
from portrait_engine.data.portrait.raster import rasterize
from portrait_engine.data.portrait.synthetic import (
    LOOKAT_POINT,
    _background,
    _displacement,
    axis_angle_matrix,
    make_synthetic_dataset,
    posed_figure,
    render_fragments,
    render_portrait,
    sample_identity,
    sample_pose,
    synthetic_body,
    synthetic_entries,
    template_frame,
)

K = intrinsics_matrix()


def _camera(yaw, pitch):
    return lookat_cam2world(yaw, pitch, target=LOOKAT_POINT)


def _ray_cast(origin, directions, triangles):
    """Brute-force Möller–Trumbore: nearest hit distance per ray (inf if none), float64."""
    v0, v1, v2 = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    e1, e2 = v1 - v0, v2 - v0
    d = directions[:, None, :]
    p = np.cross(d, e2[None])
    det = (p * e1[None]).sum(-1)
    ok = np.abs(det) > 1e-15
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin[None, None, :] - v0[None]
    u = (s * p).sum(-1) * inv
    q = np.cross(s, e1[None])
    v = (d * q).sum(-1) * inv
    t = (q * e2[None]).sum(-1) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    return np.where(hit, t, np.inf).min(1)


@pytest.mark.parametrize("yaw, pitch", [(0.3, 0.1), (2.8, -0.2)])
def test_rasteriser_agrees_with_an_independent_ray_cast(yaw, pitch):
    rng = np.random.default_rng(4)
    identity, pose = sample_identity(rng), sample_pose(rng, 1.5)
    cam = _camera(yaw, pitch)
    n = 40
    fragments, vertices, _, faces = render_fragments(identity, pose, cam, K, n)
    triangles = vertices[faces].numpy()
    # Rays through the pixel centres (EG3D's ray sampler's convention).
    iy, ix = np.divmod(rng.choice(n * n, 300, replace=False), n)
    uv = np.stack([(ix + 0.5) / n, (iy + 0.5) / n], -1)
    cam_dirs = np.stack([(uv[:, 0] - 0.5) / K[0, 0], (uv[:, 1] - 0.5) / K[1, 1], np.ones(300)], -1)
    directions = cam_dirs @ cam[:3, :3].T
    t = _ray_cast(cam[:3, 3], directions, triangles)  # distance along the un-normalised ray
    covered = fragments.covered.numpy()[iy, ix]
    np.testing.assert_array_equal(np.isfinite(t), covered)
    assert 0.2 < covered.mean() < 0.9
    # A ray (x/z, y/z, 1) in the camera frame reaches depth z at parameter t = z.
    depth = fragments.depth.numpy()[iy, ix]
    np.testing.assert_allclose(depth[covered], t[covered], rtol=1e-9)


def test_mask_and_image_agree():
    rng = np.random.default_rng(11)
    identity, pose = sample_identity(rng), sample_pose(rng)
    res, ss = 24, 2
    cam = _camera(1.1, 0.05)
    image, mask = render_portrait(identity, pose, cam, K, res, supersample=ss)
    # The mask is the coverage of the supersamples of the same rasterisation.
    fragments, *_ = render_fragments(identity, pose, cam, K, res * ss)
    coverage = fragments.covered.double().reshape(res, ss, res, ss).mean(dim=(1, 3))
    np.testing.assert_allclose(mask, coverage.numpy(), atol=1e-7)
    assert set(np.unique(mask * 4).round(6)) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    # Empty pixels are exactly the background, covered ones are the figure.
    background = _background(identity, res * ss).reshape(res, ss, res, ss, 3).mean(dim=(1, 3))
    background = background.float().numpy()
    empty, full = mask == 0, mask == 1
    assert empty.sum() > 50 and full.sum() > 50
    np.testing.assert_allclose(image[empty], background[empty], atol=1e-6)
    differs = np.abs(image[full] - background[full]).max(-1) > 0.02
    assert differs.mean() > 0.9


def test_written_masks_match_the_written_images(tmp_path):
    data = make_synthetic_dataset(tmp_path / "d.zip", 4, 24, seed=2, mask_path=tmp_path / "m.zip")
    dataset = PortraitDataset(data, mask_path=tmp_path / "m.zip")
    entries = {e[0]: e for e in synthetic_entries(4, 24, seed=2)}
    for i in range(len(dataset)):
        item = dataset[i]
        name = dataset.names[i]
        _, image, label, mask = entries[name]
        assert torch.equal(item["mask"].squeeze(0).to(torch.uint8), torch.from_numpy(mask))
        assert torch.equal(item["image"], torch.from_numpy(image).permute(2, 0, 1))
        np.testing.assert_allclose(item["camera"].numpy(), label[:25], atol=1e-6)
        np.testing.assert_allclose(item["pose"].numpy(), label[25:], atol=1e-6)
        assert 0.1 < (mask > 127).mean() < 0.9


def _nose_vertex() -> int:
    body = synthetic_body()
    template = template_frame(body)
    identity = sample_identity(np.random.default_rng(0))
    # The vertex the nose lifts most is the nose tip.
    face = template[:, 2] > 0.05
    lift = _displacement(template, identity) * face
    return int(lift.argmax())


def _nose_pixel(identity, pose, cam, n):
    """Where the nose tip is seen: the pixel whose surface point is nearest the tip."""
    fragments, vertices, _, faces = render_fragments(identity, pose, cam, K, n)
    tip = vertices[_nose_vertex()]
    c2w = torch.as_tensor(cam)
    points = fragments.interpolate(vertices, faces)  # world position per pixel
    distance = (points - tip).norm(dim=-1)
    distance[~fragments.covered] = np.inf
    iy, ix = np.unravel_index(int(distance.argmin()), distance.shape)
    # ... and where the camera projects it.
    p = (tip - c2w[:3, 3]) @ c2w[:3, :3]
    expected = np.array([K[0, 0] * p[0] / p[2] + 0.5, K[1, 1] * p[1] / p[2] + 0.5]) * n - 0.5
    return np.array([ix, iy], dtype=np.float64), expected, tip.numpy()


@pytest.mark.parametrize(
    "pose_index, angle, image_axis, sign",
    [
        (4, 0.4, 0, +1),  # head yaw about +y: the face turns to +x, right in a frontal view
        (4, -0.4, 0, -1),
        (3, 0.3, 1, +1),  # head pitch about +x: the face tilts down (+v in the image)
        (1, 0.3, 0, +1),  # neck yaw turns the head too
    ],
)
def test_the_pose_label_moves_the_nose_as_the_rotation_says(pose_index, angle, image_axis, sign):
    identity = sample_identity(np.random.default_rng(0))
    cam = _camera(0.0, 0.0)
    n = 96
    rest_px, rest_expected, rest_tip = _nose_pixel(identity, np.zeros(6), cam, n)
    pose = np.zeros(6)
    pose[pose_index] = angle
    px, expected, tip = _nose_pixel(identity, pose, cam, n)
    # The visible surface point nearest the tip is the tip's projection (the tip is in view).
    assert np.abs(rest_px - rest_expected).max() <= 1.0
    assert np.abs(px - expected).max() <= 1.0
    moved = px - rest_px
    assert sign * moved[image_axis] >= 3  # pixels
    # The tip moved as the rigid rotation about the posed joint says (skinning blends the
    # neck's and the head's transforms near the face, hence the loose bound).
    body = synthetic_body()
    betas = torch.zeros(1, body.num_betas, dtype=torch.float64)
    betas[0, :5] = torch.as_tensor(identity.betas)
    v_shaped = body.v_template + body.shapedirs @ betas[0]
    joints = (body.J_regressor @ v_shaped).numpy()
    joint = joints[15 if pose_index >= 3 else 12] - joints[12]
    rotation = axis_angle_matrix(pose[3:] if pose_index >= 3 else pose[:3])
    rigid = rotation @ (rest_tip - joint) + joint
    actual, predicted = tip - rest_tip, rigid - rest_tip
    cosine = actual @ predicted / np.linalg.norm(actual) / np.linalg.norm(predicted)
    assert cosine > 0.95
    assert 0.6 < np.linalg.norm(actual) / np.linalg.norm(predicted) < 1.1


def test_head_rotation_leaves_the_shoulders_in_place():
    identity = sample_identity(np.random.default_rng(3))
    cam = _camera(0.4, 0.0)
    _, rest = render_portrait(identity, np.zeros(6), cam, K, 48)
    _, turned = render_portrait(identity, np.array([0, 0, 0, 0.2, 0.5, 0.2]), cam, K, 48)
    assert np.abs(turned - rest).sum() > 20  # the head moved ...
    np.testing.assert_array_equal(turned[-8:], rest[-8:])  # ... the shoulders did not


@pytest.mark.parametrize("seed", [0, 1])
def test_mirrored_labels_render_the_mirrored_image(seed):
    rng = np.random.default_rng(seed)
    identity, pose = sample_identity(rng), sample_pose(rng, 2.0)
    cam = _camera(float(rng.uniform(-3, 3)), 0.15)
    image, mask = render_portrait(identity, pose, cam, K, 32)
    mirrored = mirror_camera(camera_label(cam, K))[:16].reshape(4, 4)
    image_m, mask_m = render_portrait(identity, mirror_pose(pose), mirrored, K, 32)
    # Pixel centres mirror onto pixel centres; floating-point rounding at an edge may flip
    # one supersample of a pixel, nothing more.
    assert np.abs(mask_m - mask[:, ::-1]).max() <= 0.25
    assert (mask_m != mask[:, ::-1]).mean() < 0.005
    assert np.abs(image_m - image[:, ::-1]).mean() < 1e-3
    # The wrong flip (every pose component negated) is visibly different.
    image_w, _ = render_portrait(identity, -pose, mirrored, K, 32)
    assert np.abs(image_w - image[:, ::-1]).mean() > 5e-3


def test_the_figure_is_the_posed_body_model():
    # Without hair, nose, ears and clothes the figure is exactly the body model posed by the
    # label, neck joint at the origin (the generator's PoseDeformer frame).
    identity = sample_identity(np.random.default_rng(5))
    pose = np.array([0.1, -0.2, 0.05, 0.2, 0.3, -0.1])
    body = synthetic_body()
    vertices, template = posed_figure(identity, pose, body=body)
    betas = torch.zeros(1, body.num_betas, dtype=torch.float64)
    betas[0, :5] = torch.as_tensor(identity.betas)
    expected = body.posed(torch.as_tensor(pose).view(1, 6), betas)[0]
    offset = (vertices - expected).norm(dim=-1)
    lift = _displacement(template, identity)
    torch.testing.assert_close(offset, lift, atol=1e-12, rtol=1e-9)
    rest = body.posed(torch.zeros(1, 6, dtype=torch.float64), betas)[0]
    torch.testing.assert_close(
        body.J_regressor[12] @ rest, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_rasterize_checks_its_inputs():
    with pytest.raises(ValueError, match="vertices"):
        rasterize(torch.zeros(3, 2), torch.zeros(1, 3, dtype=torch.long), torch.eye(3), 8)
    with pytest.raises(ValueError, match="faces"):
        rasterize(torch.zeros(3, 3), torch.zeros(1, 2, dtype=torch.long), torch.eye(3), 8)


def test_flipped_dataset_items_are_renders_of_their_mirrored_labels(tmp_path):
    # The x-flip augmentation of the reader mirrors image, camera and pose; for the synthetic
    # set the flipped item must be what the renderer draws for the flipped labels.
    from portrait_engine.data.portrait.synthetic import sample_view

    seed, count, res = 4, 3, 32
    data = make_synthetic_dataset(tmp_path / "d.zip", count, res, seed=seed)
    dataset = PortraitDataset(data, xflip=True)
    rng = np.random.default_rng(seed)  # replay the generator's draws: identity, pose, view
    identities = []
    for _ in range(count):
        identities.append(sample_identity(rng))
        sample_pose(rng)
        sample_view(rng)
    for i in range(count):
        flipped = dataset[i + count]
        assert flipped["xflip"] and flipped["name"] == dataset[i]["name"]
        camera = flipped["camera"].double().numpy()
        image, _ = render_portrait(
            identities[i], flipped["pose"].double().numpy(), camera[:16].reshape(4, 4), K, res
        )
        rendered = np.round(image * 255).astype(np.int16)
        stored = flipped["image"].permute(1, 2, 0).numpy().astype(np.int16)
        # The reader holds labels in float32 and the mirrored pixel centres are rounded: an
        # edge through a supersample centre may move across it, nowhere else.
        differs = np.abs(rendered - stored).max(-1) > 1
        assert differs.mean() < 0.005
