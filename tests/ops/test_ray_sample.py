"""ray_sample and unpack_camera_label: backends against the reference and the pinhole model."""

from __future__ import annotations

import math

import pytest
import torch

import portrait_engine as pe
from portrait_engine.ops import ray_sample, unpack_camera_label
from tests.helpers import assert_close, relative_l2

NATIVE_OP = "ray_sample_forward"


def _backend_param(name):
    ok, reason = pe.backend_status("cpu", NATIVE_OP)[name]
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=reason))


KERNEL_BACKENDS = [_backend_param("triton"), _backend_param("native")]
ALL_BACKENDS = [pytest.param("torch")] + KERNEL_BACKENDS

# EG3D's FFHQ intrinsics: focal 4.2647 image widths (18.837 degree FOV), centred principal point
EG3D_FOCAL = 4.2647


def look_at(position: torch.Tensor) -> torch.Tensor:
    """OpenCV cam2world (x right, y down, z forward) of a camera at ``position`` facing 0."""
    forward = -position / position.norm()
    up = torch.tensor([0.0, -1.0, 0.0], dtype=position.dtype)  # OpenCV: world y down is up
    right = torch.linalg.cross(forward, up)
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    matrix = torch.eye(4, dtype=position.dtype)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = right, down, forward, position
    return matrix


def make_cameras(batch=3, seed=0, dtype=torch.float32, skew=0.05):
    generator = torch.Generator().manual_seed(seed)
    matrices, intrinsics = [], []
    for _ in range(batch):
        yaw, pitch = (torch.rand(2, generator=generator) - 0.5).tolist()
        radius = 2.7
        position = torch.tensor(
            [
                radius * math.sin(2 * yaw) * math.cos(pitch),
                radius * math.sin(pitch),
                radius * math.cos(2 * yaw) * math.cos(pitch),
            ],
            dtype=torch.float64,
        )
        matrices.append(look_at(position))
        jitter = 0.05 * torch.randn(5, generator=generator, dtype=torch.float64)
        intrinsics.append(
            torch.tensor(
                [
                    [EG3D_FOCAL + jitter[0], skew + jitter[4], 0.5 + jitter[2]],
                    [0.0, EG3D_FOCAL + jitter[1], 0.5 + jitter[3]],
                    [0.0, 0.0, 1.0],
                ],
                dtype=torch.float64,
            )
        )
    return torch.stack(matrices).to(dtype), torch.stack(intrinsics).to(dtype)


def pinhole_oracle(cam2world, intrinsics, resolution):
    """Directions ``normalize(R K⁻¹ (u, v, 1))`` at pixel centres, in float64."""
    cam2world, intrinsics = cam2world.double(), intrinsics.double()
    centres = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    pixels = torch.stack((u.flatten(), v.flatten(), torch.ones(resolution**2, dtype=torch.float64)))
    camera = torch.linalg.inv(intrinsics) @ pixels  # (B, 3, M)
    directions = cam2world[:, :3, :3] @ camera
    directions = (directions / directions.norm(dim=1, keepdim=True)).transpose(1, 2)
    origins = cam2world[:, None, :3, 3].expand(-1, resolution**2, 3)
    return origins, directions


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("resolution", [1, 5, 16, 33])
def test_matches_pinhole_oracle(backend, resolution):
    cam2world, intrinsics = make_cameras(seed=resolution)
    origins, directions = ray_sample(cam2world, intrinsics, resolution, backend=backend)
    want_origins, want_directions = pinhole_oracle(cam2world, intrinsics, resolution)
    assert origins.shape == directions.shape == (3, resolution**2, 3)
    assert_close(origins, want_origins, torch.float32)
    assert_close(directions, want_directions, torch.float32, scale=2)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_match_reference(backend, dtype):
    cam2world, intrinsics = make_cameras(dtype=dtype)
    got = ray_sample(cam2world, intrinsics, 8, backend=backend)
    want = ray_sample(cam2world, intrinsics, 8, backend="torch")
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert_close(g, w, dtype)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_centre_ray_looks_at_the_target(backend):
    """Odd resolution, centred principal point, no skew: the middle pixel's ray is the axis."""
    cam2world, intrinsics = make_cameras(skew=0.0)
    intrinsics[:, 0, 2] = intrinsics[:, 1, 2] = 0.5
    intrinsics[:, 0, 1] = 0.0
    _, directions = ray_sample(cam2world, intrinsics, 7, backend=backend)
    centre = directions[:, 3 * 7 + 3]
    assert_close(centre, cam2world[:, :3, 2], torch.float32)
    assert torch.allclose(directions.norm(dim=-1), torch.ones(3, 49), atol=1e-6)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_rows_go_down_and_columns_go_right(backend):
    """Ray i * res + j is row i, column j: x (right) grows with j, y (down) with i."""
    cam2world = torch.eye(4).unsqueeze(0)
    intrinsics = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]])
    _, directions = ray_sample(cam2world, intrinsics, 4, backend=backend)
    grid = directions.reshape(4, 4, 3)
    assert (grid[:, 1:, 0] > grid[:, :-1, 0]).all()
    assert (grid[1:, :, 1] > grid[:-1, :, 1]).all()
    assert torch.allclose(grid[0, 0, :2] / grid[0, 0, 2], torch.tensor([-0.375, -0.375]))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradcheck_float64_in_the_camera(backend):
    cam2world, intrinsics = make_cameras(batch=2, dtype=torch.float64)
    cam2world.requires_grad_()
    intrinsics.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: ray_sample(a, b, 3, backend=backend), (cam2world, intrinsics)
    )


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradients_match_reference(backend):
    cam2world, intrinsics = make_cameras(batch=3)
    grads = []
    for name in (backend, "torch"):
        a = cam2world.clone().requires_grad_()
        b = intrinsics.clone().requires_grad_()
        origins, directions = ray_sample(a, b, 6, backend=name)
        generator = torch.Generator().manual_seed(1)
        (origins * torch.randn(origins.shape, generator=generator)).sum().backward(
            retain_graph=True
        )
        (directions * torch.randn(directions.shape, generator=generator)).sum().backward()
        grads.append((a.grad, b.grad))
    for g, w in zip(grads[0], grads[1], strict=True):
        assert_close(g, w, torch.float32, scale=10)
        assert w.abs().sum() > 0


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_opcheck(backend):
    name = "ray_sample_triton_forward" if backend == "triton" else "ray_sample_forward"
    cam2world, intrinsics = make_cameras(batch=2)
    torch.library.opcheck(
        getattr(torch.ops.portrait_engine, name),
        (cam2world.requires_grad_(), intrinsics.requires_grad_(), 3),
    )


def _native_backward_available():
    return pe.backend_status("cpu", "ray_sample_backward")["native"][0]


native_backward = pytest.mark.skipif(
    not _native_backward_available(), reason="the extension has no ray_sample_backward"
)


@native_backward
@pytest.mark.parametrize("resolution", [1, 5, 64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_backward_matches_the_closed_form(resolution, dtype):
    """The C++ backward against the closed form in torch ops (ops/rays.py), on fresh random
    output gradients; 64² rays span two of the kernel's summation chunks."""
    from portrait_engine.ops.rays import _ray_sample_backward

    cam2world, intrinsics = make_cameras(batch=3, seed=4, dtype=dtype)
    generator = torch.Generator().manual_seed(5)
    shape = (3, resolution * resolution, 3)
    g_o = torch.randn(shape, generator=generator, dtype=dtype)
    g_d = torch.randn(shape, generator=generator, dtype=dtype)
    got = torch.ops.portrait_engine.ray_sample_backward(g_o, g_d, cam2world, intrinsics, resolution)
    want = _ray_sample_backward(g_o, g_d, cam2world, intrinsics, resolution)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        # sums of resolution² terms in another order: 0.34 of the float32 tolerance at 64²
        assert_close(g, w, dtype, scale=2)
    assert not got[0][:, 3].any(), "the bottom row of cam2world gets no gradient"
    assert not got[1][:, 1, 0].any() and not got[1][:, 2].any()


@native_backward
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_native_backward_half_precision(dtype):
    from portrait_engine.ops.rays import _ray_sample_backward

    cam2world, intrinsics = make_cameras(batch=2, seed=6)
    generator = torch.Generator().manual_seed(7)
    g_o, g_d = torch.randn(2, 2, 256, 3, generator=generator)
    args = (cam2world, intrinsics, 16)
    got = torch.ops.portrait_engine.ray_sample_backward(
        g_o.to(dtype), g_d.to(dtype), *[a.to(dtype) for a in args[:2]], 16
    )
    want = _ray_sample_backward(g_o, g_d, *args)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert relative_l2(g.float(), w) < 2e-2


@native_backward
def test_native_backward_does_not_depend_on_the_thread_count():
    cam2world, intrinsics = make_cameras(batch=2, seed=8)
    generator = torch.Generator().manual_seed(9)
    g_o, g_d = torch.randn(2, 2, 96 * 96, 3, generator=generator)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(
                torch.ops.portrait_engine.ray_sample_backward(g_o, g_d, cam2world, intrinsics, 96)
            )
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@native_backward
def test_opcheck_native_backward():
    cam2world, intrinsics = make_cameras(batch=2)
    generator = torch.Generator().manual_seed(10)
    g_o, g_d = torch.randn(2, 2, 9, 3, generator=generator)
    torch.library.opcheck(
        torch.ops.portrait_engine.ray_sample_backward, (g_o, g_d, cam2world, intrinsics, 3)
    )


@native_backward
def test_native_backward_rejects_bad_gradients():
    cam2world, intrinsics = make_cameras(batch=2)
    good = torch.zeros(2, 9, 3)
    with pytest.raises(RuntimeError, match="grad_origins and grad_directions must be"):
        torch.ops.portrait_engine.ray_sample_backward(
            torch.zeros(2, 8, 3), good, cam2world, intrinsics, 3
        )
    with pytest.raises(RuntimeError, match="grad_origins and grad_directions must be"):
        torch.ops.portrait_engine.ray_sample_backward(good, good.double(), cam2world, intrinsics, 3)


def test_unpack_camera_label():
    cam2world, intrinsics = make_cameras()
    label = torch.cat((cam2world.flatten(1), intrinsics.flatten(1)), dim=1)
    got_cam2world, got_intrinsics = unpack_camera_label(label)
    assert torch.equal(got_cam2world, cam2world) and torch.equal(got_intrinsics, intrinsics)


@pytest.mark.parametrize(
    "label, error, message",
    [
        (torch.zeros(2, 24), ValueError, r"label must have shape \(B, 25\)"),
        (torch.zeros(25), ValueError, r"label must have shape \(B, 25\)"),
        (torch.zeros(2, 25, dtype=torch.long), TypeError, "label must be a floating-point"),
        ([0.0] * 25, TypeError, "label must be a torch.Tensor"),
    ],
)
def test_unpack_camera_label_bad_inputs(label, error, message):
    with pytest.raises(error, match=message):
        unpack_camera_label(label)


def bad_cases():
    cam2world, intrinsics = make_cameras()
    return [
        ("cam2world not a tensor", dict(cam2world=None), TypeError, "cam2world must be a torch"),
        (
            "cam2world 3x4",
            dict(cam2world=cam2world[:, :3]),
            ValueError,
            r"cam2world must have shape \(B, 4, 4\)",
        ),
        (
            "intrinsics 4x4",
            dict(intrinsics=cam2world),
            ValueError,
            r"intrinsics must have shape \(B, 3, 3\)",
        ),
        ("batch mismatch", dict(intrinsics=intrinsics[:1]), ValueError, "same batch size"),
        ("integer", dict(cam2world=cam2world.int()), TypeError, "cam2world must be a floating"),
        ("dtype mismatch", dict(intrinsics=intrinsics.double()), TypeError, "same dtype"),
        ("device mismatch", dict(intrinsics=intrinsics.to("meta")), ValueError, "same device"),
        ("resolution float", dict(resolution=64.0), TypeError, "resolution must be an int"),
        ("resolution zero", dict(resolution=0), ValueError, "resolution must be a positive int"),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=lambda case: case[0])
def test_bad_inputs_raise_clear_errors(case):
    _, override, error, message = case
    cam2world, intrinsics = make_cameras()
    kwargs = {"cam2world": cam2world, "intrinsics": intrinsics, "resolution": 4, **override}
    with pytest.raises(error, match=message):
        ray_sample(**kwargs)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch(backend):
    cam2world, intrinsics = make_cameras()
    origins, directions = ray_sample(cam2world[:0], intrinsics[:0], 4, backend=backend)
    assert origins.shape == directions.shape == (0, 16, 3)


@pytest.mark.parametrize("backend", ["torch", *KERNEL_BACKENDS])
def test_torch_compile_fullgraph(backend):
    cam2world, intrinsics = make_cameras()
    fn = lambda a, b: ray_sample(a, b, 4, backend=backend)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for g, w in zip(compiled(cam2world, intrinsics), fn(cam2world, intrinsics), strict=True):
        torch.testing.assert_close(g, w)
