"""The assembled generator at the tiny preset: shapes, pose handling, deformation, backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from portrait_engine import _backend, use_backend
from portrait_engine.data.portrait import camera_label, intrinsics_matrix, lookat_cam2world
from portrait_engine.models.portrait_gan import PortraitGANConfig
from portrait_engine.models.portrait_gan.generator import PortraitDecoder, PortraitGenerator
from tests.helpers import fused_by_default_on_a_gpu

RES = 16  # neural rendering resolution of the tests (the tiny preset renders 32)


def cameras(yaws, pitch=0.0):
    labels = [camera_label(lookat_cam2world(y, pitch), intrinsics_matrix()) for y in yaws]
    return torch.from_numpy(np.stack(labels)).to(torch.float32)


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return PortraitGenerator("tiny").eval()


def render(g, z, cam, **kwargs):
    kwargs.setdefault("neural_rendering_resolution", RES)
    kwargs.setdefault("noise_mode", "const")
    kwargs.setdefault("generator", torch.Generator().manual_seed(3))
    with torch.no_grad():
        return g(z, cam, **kwargs)


def test_shapes_and_dtypes(gen):
    config = gen.config
    z = torch.randn(2, config.z_dim)
    out = render(gen, z, cameras([0.0, 2.5]))
    r, big = RES, config.img_resolution
    assert out["image"].shape == (2, 3, big, big)
    assert out["image_raw"].shape == (2, 3, r, r)
    assert out["image_depth"].shape == (2, 1, r, r)
    assert out["image_mask"].shape == (2, 1, r, r)
    assert out["image_background"].shape == (2, 3, r, r)
    assert out["ws"].shape == (2, config.num_ws, config.w_dim)
    assert torch.equal(out["pose"], torch.zeros(2, 6))
    for key in ("image", "image_raw", "image_depth", "image_mask"):
        assert out[key].dtype == torch.float32
        assert torch.isfinite(out[key]).all(), key
    depth = out["image_depth"]
    assert (depth >= config.ray_start - 1e-4).all() and (depth <= config.ray_end + 1e-4).all()
    mask = out["image_mask"]
    assert (mask >= -0.001 - 1e-6).all() and (mask <= 1.001 + 1e-6).all()


def test_default_resolution_is_the_configs():
    torch.manual_seed(1)
    config = PortraitGANConfig.preset("tiny", neural_rendering_resolution=8)
    g = PortraitGenerator(config).eval()
    out = render(g, torch.randn(1, config.z_dim), cameras([0.0]), neural_rendering_resolution=None)
    assert out["image_raw"].shape[-1] == 8
    assert out["image"].shape[-1] == config.img_resolution


def test_deformation_is_identity_at_zero_pose(gen):
    torch.manual_seed(2)
    points = (torch.rand(1, 500, 3) - 0.5) * gen.config.box_warp
    # points on the body surface too, where a deformation would act
    points = torch.cat([points, gen.deformer.canonical_vertices[None, ::3]], dim=1)
    deformed = gen.deformation(torch.zeros(1, 6))(points)
    torch.testing.assert_close(deformed, points, atol=1e-5, rtol=0)


def test_deformation_moves_points_at_nonzero_pose(gen):
    pose = torch.tensor([[0.0, 0.6, 0.0, 0.0, 0.4, 0.0]])
    posed = gen.deformer.posed_vertices(pose)[:, ::3]  # on the posed surface
    deformed = gen.deformation(pose)(posed)
    assert (deformed - posed).norm(dim=-1).max() > 0.02


def test_zero_pose_render_equals_undeformed_render(gen):
    z = torch.randn(1, gen.config.z_dim)
    cam = cameras([0.4])
    a = render(gen, z, cam, pose=torch.zeros(1, 6))
    b = render(gen, z, cam, pose=torch.zeros(1, 6), apply_deformation=False)
    torch.testing.assert_close(a["image"], b["image"], atol=1e-4, rtol=1e-4)
    c = render(gen, z, cam, pose=torch.tensor([[0.0, 0.8, 0.0, 0.0, 0.5, 0.0]]))
    assert not torch.allclose(a["image_raw"], c["image_raw"], atol=1e-4)


def test_predicted_pose(gen):
    z = torch.randn(2, gen.config.z_dim)
    cam = cameras([0.3, -2.0])
    out = render(gen, z, cam, predict_pose=True)
    with torch.no_grad():
        expected = gen.get_pose(z, cam)
    torch.testing.assert_close(out["pose"], expected)
    given = render(gen, z, cam, pose=expected)
    torch.testing.assert_close(out["image"], given["image"])
    with pytest.raises(ValueError, match="pose"):
        render(gen, z, cam, pose=expected, predict_pose=True)


def test_same_seed_same_image_and_other_seed_differs(gen):
    z = torch.randn(1, gen.config.z_dim)
    cam = cameras([0.0])
    a = render(gen, z, cam, generator=torch.Generator().manual_seed(5))
    b = render(gen, z, cam, generator=torch.Generator().manual_seed(5))
    c = render(gen, z, cam, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image_depth"], c["image_depth"])


@pytest.mark.parametrize("fused", [None, True], ids=["default", "fused"])
def test_chunked_rays_match_when_deterministic(gen, fused):
    """Chunked and whole renders agree, on the CPU's default path (the unfused ops) and on the
    fused one (render_rays, the GPU default)."""
    if fused and not _backend.backend_status("cpu", "render_rays_forward")["native"][0]:
        pytest.skip("native extension not built with render_rays")
    z = torch.randn(1, gen.config.z_dim)
    cam = cameras([0.2])
    gen.renderer.deterministic = True
    gen.renderer.fused = fused
    try:
        with use_backend("native" if fused else "auto"):
            whole = render(gen, z, cam)
            chunked = render(gen, z, cam, chunk_rays=64)
    finally:
        gen.renderer.deterministic = False
        gen.renderer.fused = None
    torch.testing.assert_close(chunked["image_raw"], whole["image_raw"], atol=1e-5, rtol=1e-5)


def _native_ready() -> bool:
    try:
        for op in ("ray_sample_forward", "ray_march_forward", "triplane_sample_forward"):
            _backend.resolve("native", torch.device("cpu"), op)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_backends_agree_with_torch(gen, backend):
    """Same seed, same image on every backend.

    At zero pose the deformation is the identity and the renders agree to float rounding. At a
    non-zero pose the published nearest-face transfer is discontinuous where two faces are
    equally near: posed vertices that differ by float rounding (~1e-7) between backends can
    move a sample lying on such a tie by up to ~1e-2, so a few pixels differ more there; the
    bound is then on the mean difference and a looser maximum.
    """
    if backend == "native" and not _native_ready():
        pytest.skip("native extension not built with the rendering ops")
    z = torch.randn(1, gen.config.z_dim)
    cam = cameras([0.7])
    res = 8 if backend == "triton" else RES  # Triton runs under the interpreter here
    for pose in (torch.zeros(1, 6), torch.tensor([[0.0, 0.3, 0.1, 0.0, 0.2, 0.0]])):
        with use_backend("torch"):
            expected = render(gen, z, cam, pose=pose, neural_rendering_resolution=res)
        try:
            with use_backend(backend):
                actual = render(gen, z, cam, pose=pose, neural_rendering_resolution=res)
        except _backend.BackendUnavailableError as err:
            pytest.skip(str(err))
        for key in ("image", "image_raw", "image_depth", "image_mask"):
            a, e = actual[key], expected[key]
            assert torch.isfinite(a).all(), key
            if not pose.any():
                torch.testing.assert_close(a, e, atol=5e-5, rtol=5e-5, msg=key)
            else:
                diff = (a - e).abs()
                assert diff.mean() < 1e-4, (key, float(diff.mean()))
                assert diff.max() < 5e-3, (key, float(diff.max()))


def test_gradients_reach_every_trained_part():
    torch.manual_seed(4)
    config = PortraitGANConfig.preset("tiny", neural_rendering_resolution=8)
    g = PortraitGenerator(config)
    z = torch.randn(1, config.z_dim)
    out = g(
        z,
        cameras([0.1]),
        predict_pose=True,
        noise_mode="const",
        generator=torch.Generator().manual_seed(0),
    )
    (out["image"].square().mean() + out["image_raw"].mean()).backward()
    for name in ("mapping", "backbone", "decoder", "image_head", "pose_branch"):
        grads = [p.grad for p in getattr(g, name).parameters() if p.requires_grad]
        assert any(gr is not None and gr.abs().sum() > 0 for gr in grads), name
        assert all(gr is None or torch.isfinite(gr).all() for gr in grads), name


@pytest.mark.parametrize("activation", ["none", "sigmoid", "lrelu"])
def test_decoder_activation(activation):
    torch.manual_seed(0)
    dec = PortraitDecoder(8, 5, activation=activation)
    x = torch.randn(2, 7, 8)
    out = dec(x)
    raw = dec.net(x)
    torch.testing.assert_close(out["sigma"], raw[..., :1])
    if activation == "none":
        torch.testing.assert_close(out["rgb"], raw[..., 1:])
    elif activation == "sigmoid":
        torch.testing.assert_close(out["rgb"], torch.sigmoid(raw[..., 1:]) * 1.002 - 0.001)
    else:
        expected = torch.where(raw[..., 1:] > 0, raw[..., 1:], 0.2 * raw[..., 1:]) * 2**0.5
        torch.testing.assert_close(out["rgb"], expected)
    with pytest.raises(ValueError, match="activation"):
        PortraitDecoder(8, 5, activation="relu")


def test_bad_inputs(gen):
    z = torch.randn(2, gen.config.z_dim)
    cam = cameras([0.0, 0.0])
    with pytest.raises(ValueError, match="z"):
        gen(torch.randn(2, 3), cam)
    with pytest.raises(ValueError, match="camera"):
        gen(z, cam[:1])
    with pytest.raises(ValueError, match="camera"):
        gen(z, cam[:, :24])
    with pytest.raises(ValueError, match="pose"):
        gen(z, cam, pose=torch.zeros(2, 5))
    with pytest.raises(TypeError, match="z"):
        gen(z.long(), cam)
    with pytest.raises(TypeError, match="camera"):
        gen(z, [0.0] * 25)
    with pytest.raises(TypeError, match="config"):
        PortraitGenerator(42)


def test_config_rendering_values():
    paper = PortraitGANConfig.preset("paper")
    # 3DPortraitGAN full-head with radius_scale 0.7
    assert paper.ray_start == pytest.approx(2.25 + 0.45 * 0.3)
    assert paper.ray_end == pytest.approx(2.7 + 0.6 * 0.7)
    assert paper.box_warp == pytest.approx(0.7)
    with pytest.raises(ValueError, match="ray_start"):
        PortraitGANConfig.preset("tiny", ray_start=3.5)
    with pytest.raises(ValueError, match="density_noise"):
        PortraitGANConfig.preset("tiny", density_noise=-1.0)


def test_plain_triplane_option():
    torch.manual_seed(6)
    config = PortraitGANConfig.preset("tiny", triplane_depth=1, neural_rendering_resolution=8)
    g = PortraitGenerator(config).eval()
    z = torch.randn(1, config.z_dim)
    with torch.no_grad():
        planes = g.planes(g.map(z, cameras([0.0])), noise_mode="const")
    assert planes.shape == (1, 3, config.triplane_channels, 32, 32)
    out = render(g, z, cameras([0.0]), neural_rendering_resolution=None)
    assert out["image"].shape == (1, 3, 64, 64) and torch.isfinite(out["image"]).all()


def test_sample_density_with_pose_deforms_first(gen):
    torch.manual_seed(7)
    z = torch.randn(1, gen.config.z_dim)
    pose = torch.tensor([[0.0, 0.5, 0.0, 0.0, 0.3, 0.0]])
    with torch.no_grad():
        planes = gen.planes(gen.map(z, cameras([0.0])), noise_mode="const")
        points = gen.deformer.posed_vertices(pose)[:, ::2]
        posed = gen.sample_density(planes, points, pose)
        canonical = gen.sample_density(planes, gen.deformation(pose)(points))
    torch.testing.assert_close(posed, canonical)
    with pytest.raises(ValueError, match="points"):
        gen.sample_density(planes, points[..., :2])


@pytest.mark.parametrize(
    ("activation", "density_noise"),
    [("sigmoid", 0.0), ("sigmoid", 0.5), ("none", 0.0), ("none", 0.5), ("lrelu", 0.5)],
)
def test_fused_renderer_images_match_unfused(activation, density_noise, monkeypatch):
    """With any of the decoder's colour activations (EG3D's sigmoid, the published raw "none",
    PanoHead's lrelu) the native backend renders through render_rays (coarse and fine passes
    fused; the default on a GPU); at the same seed its images equal the unfused renderer's."""
    if (
        not _native_ready()
        or not _backend.backend_status("cpu", "render_rays_forward")["native"][0]
    ):
        pytest.skip("native extension not built with render_rays")
    torch.manual_seed(5)
    config = PortraitGANConfig.preset(
        "tiny", decoder_activation=activation, density_noise=density_noise
    )
    g = PortraitGenerator(config).eval()
    assert g.decoder.activation == activation
    z = torch.randn(1, config.z_dim)
    cam = cameras([0.4])
    pose = torch.tensor([[0.0, 0.2, 0.1, 0.0, 0.1, 0.0]])
    images = {}
    with use_backend("native"):
        for fused in (True, False):
            g.renderer.fused = fused
            images[fused] = render(g, z, cam, pose=pose)
    g.renderer.fused = None
    assert fused_by_default_on_a_gpu(g.renderer, torch.zeros(1, 3, 4, 4, 4), g.decoder, monkeypatch)
    # Float32 rounding differs (the fused kernels sum in other orders than BLAS), and two
    # stages amplify it: importance sampling (a 1e-7 change of a coarse weight moves a fine
    # depth by 1e-7 / pdf) and the image head's convolutions (values up to ~6). Measured: mean
    # differences 1e-6 to 3e-6, a few pixels up to 7e-4; depth and mask below 1e-4.
    for key, largest in (("image", 2e-3), ("image_raw", 2e-3), ("image_depth", 5e-4)):
        diff = (images[True][key] - images[False][key]).abs()
        assert diff.mean() < 2e-5, (key, float(diff.mean()))
        assert diff.max() < largest, (key, float(diff.max()))
    torch.testing.assert_close(
        images[True]["image_mask"], images[False]["image_mask"], atol=5e-4, rtol=0
    )


def test_published_decoder_is_rendered_fused(gen, monkeypatch):
    """3DPortraitGAN's raw-colour decoder ("none") is fusable: the renderer takes the fused path
    for it under the kernel backends on a GPU (the unfused ops on the CPU), and render_rays
    reads its activation from it (a contradicting explicit one is refused)."""
    from portrait_engine.ops import render_rays

    assert gen.decoder.activation == "none"
    assert gen.renderer.fusable(gen.decoder)
    with use_backend("torch"):
        assert not gen.renderer.use_fused(torch.zeros(1, 3, 4, 4, 4), gen.decoder)
    planes = torch.zeros(1, 3, 4, 4, 4)
    assert fused_by_default_on_a_gpu(gen.renderer, planes, gen.decoder, monkeypatch)
    with use_backend("native"):  # the CPU default: the unfused ops
        assert not gen.renderer.use_fused(planes, gen.decoder)
    points = torch.zeros(1, 2, 3, 3)
    depths = torch.linspace(1, 2, 3).expand(1, 2, 3).unsqueeze(-1)
    planes = torch.zeros(1, 3, gen.decoder.n_features, 4, 4)
    with pytest.raises(ValueError, match="contradicts the decoder's activation 'none'"):
        render_rays(planes, points, depths, gen.decoder, color_activation="sigmoid")
