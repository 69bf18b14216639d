"""ImportanceRenderer: against an EG3D-style pipeline of the references, across backends, chunked,
auto ray limits, PanoHead's crop, the deformation hook, torch.compile of march + importance."""

from __future__ import annotations

import pytest
import torch

import portrait_engine as pe
from portrait_engine.nn import ImportanceRenderer, OSGDecoder
from portrait_engine.nn.renderer import ray_limits_box, stratified_depths, triplane_crop_mask
from portrait_engine.ops.reference import (
    merge_samples_reference,
    ray_march_reference,
    sample_importance_reference,
    triplane_sample_reference,
)
from tests.helpers import assert_close, fused_by_default_on_a_gpu

NATIVE_OPS = ("triplane_sample_forward", "ray_march_forward", "sample_importance")


def _backend_param(name):
    for op in NATIVE_OPS:
        ok, reason = pe.backend_status("cpu", op)[name]
        if not ok:
            return pytest.param(name, marks=pytest.mark.skip(reason=reason))
    return pytest.param(name)


KERNEL_BACKENDS = [_backend_param("triton"), _backend_param("native")]


def make_scene(batch=1, rays=6, channels=8, size=8, seed=0, trigrid=False):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, channels, 4, size, size) if trigrid else (batch, 3, channels, size, size)
    planes = torch.randn(shape, generator=generator)
    origins = torch.tensor([0.0, 0.0, -2.7]).expand(batch, rays, 3).clone()
    directions = torch.randn(batch, rays, 3, generator=generator) * 0.15
    directions[..., 2] = 1.0
    directions = directions / directions.norm(dim=-1, keepdim=True)
    torch.manual_seed(seed)
    decoder = OSGDecoder(channels, 5)
    with torch.no_grad():
        decoder.net[2].bias[0] = 2.0  # some density, so that the weights are not all tiny
    return planes, decoder, origins, directions


def eg3d_pipeline(renderer, planes, decoder, origins, directions, generator):
    """EG3D's ImportanceRenderer.forward from the references: unsorted importance samples and a
    sort-based unify_samples, drawing the same random numbers in the same order."""
    batch, rays, _ = origins.shape

    def run_model(depths):
        samples = depths.shape[2]
        points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(batch, -1, 3)
        features = triplane_sample_reference(
            planes, points, box_warp=renderer.box_warp, plane_axes=renderer.plane_axes
        )
        out = decoder(features, None)
        sigma = out["sigma"]
        if renderer.density_noise > 0:
            sigma = sigma + torch.randn(sigma.shape, generator=generator) * renderer.density_noise
        return out["rgb"].reshape(batch, rays, samples, -1), sigma.reshape(batch, rays, samples, 1)

    depths = stratified_depths(
        batch, rays, renderer.ray_start, renderer.ray_end, renderer.depth_resolution,
        generator=generator,
    )  # fmt: skip
    colors, densities = run_model(depths)
    _, _, weights = ray_march_reference(colors, densities, depths)
    fine = sample_importance_reference(
        depths, weights, renderer.depth_resolution_importance, generator=generator
    )
    colors_fine, densities_fine = run_model(fine)
    all_depths, (all_colors, all_densities) = merge_samples_reference(
        depths, fine, (colors, densities), (colors_fine, densities_fine)
    )
    rgb, depth, weights = ray_march_reference(all_colors, all_densities, all_depths)
    return rgb, depth, weights.sum(2)


def test_torch_backend_matches_the_eg3d_pipeline():
    """Same draws, same image. (With density noise the fine samples, drawn in depth order here,
    get the noise draws in a different order than EG3D's: same distribution, other values.)"""
    planes, decoder, origins, directions = make_scene()
    renderer = ImportanceRenderer(depth_resolution=12, depth_resolution_importance=12)
    with pe.use_backend("torch"):
        got = renderer(
            planes, decoder, origins, directions, generator=torch.Generator().manual_seed(4)
        )
    want = eg3d_pipeline(
        renderer, planes, decoder, origins, directions, torch.Generator().manual_seed(4)
    )
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float32)
    assert float(got[2].detach().max()) > 0.5  # the scene is not empty


# The renderer's paths on the CPU: its default (the unfused ops) on every kernel backend, and the
# fused one (render_rays, the GPU default) on native; Triton's fused path has its own tests below
# (fused against unfused), which its interpreter makes slow.
def _native_fused_path():
    ok, reason = pe.backend_status("cpu", "render_rays_forward")["native"]
    return pytest.param(
        "native", True, marks=pytest.mark.skipif(not ok, reason=reason), id="native-fused"
    )


RENDER_PATHS = [
    *(pytest.param(p.values[0], None, marks=p.marks, id=p.values[0]) for p in KERNEL_BACKENDS),
    _native_fused_path(),
]


@pytest.mark.parametrize(("backend", "fused"), RENDER_PATHS)
@pytest.mark.parametrize("trigrid", [False, True], ids=["triplane", "trigrid"])
def test_backends_match_the_torch_backend(backend, fused, trigrid):
    planes, decoder, origins, directions = make_scene(trigrid=trigrid, seed=1)
    kwargs = dict(
        depth_resolution=8,
        depth_resolution_importance=8,
        density_noise=0.3,
        triplane_crop=0.1,
        plane_axes="panohead" if trigrid else "eg3d",
    )
    # the reference: the torch backend's (unfused) render
    renderer, reference = ImportanceRenderer(fused=fused, **kwargs), ImportanceRenderer(**kwargs)

    def render(module, name):
        leaf = planes.clone().requires_grad_()
        with pe.use_backend(name):
            out = module(
                leaf, decoder, origins, directions, generator=torch.Generator().manual_seed(2)
            )
        (out[0].square().sum() + out[1].sum() + out[2].sum()).backward()
        return (*out, leaf.grad)

    assert renderer.use_fused(planes, decoder) is bool(fused)
    outputs = zip(render(renderer, backend), render(reference, "torch"), strict=True)
    for got, want in outputs:
        assert_close(got, want, torch.float32, scale=10)


def test_chunked_render_matches_the_whole():
    planes, decoder, origins, directions = make_scene(rays=10, seed=2)
    whole = ImportanceRenderer(
        depth_resolution=8, depth_resolution_importance=6, deterministic=True, backend="torch"
    )
    chunked = ImportanceRenderer(
        depth_resolution=8,
        depth_resolution_importance=6,
        deterministic=True,
        chunk_rays=3,
        backend="torch",
    )
    for a, b in zip(
        whole(planes, decoder, origins, directions),
        chunked(planes, decoder, origins, directions),
        strict=True,
    ):
        torch.testing.assert_close(a, b)


def test_ray_limits_box_slab_method():
    origins = torch.tensor([[[0.0, 0.0, -3.0], [0.0, 0.0, -3.0], [0.2, 0.1, -3.0]]])
    directions = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    start, end = ray_limits_box(origins, directions, 1.0)
    torch.testing.assert_close(start.flatten(), torch.tensor([2.5, -1.0, 2.5]))
    torch.testing.assert_close(end.flatten(), torch.tensor([3.5, -2.0, 3.5]))


def test_auto_limits_render_inside_the_box():
    planes, decoder, origins, directions = make_scene(rays=5, seed=3)
    directions[0, 0] = torch.tensor([1.0, 0.0, 0.0])  # misses the box
    renderer = ImportanceRenderer(
        depth_resolution=8,
        depth_resolution_importance=4,
        ray_start="auto",
        ray_end="auto",
        box_warp=1.0,
        backend="torch",
    )
    depths = renderer.coarse_depths(origins, directions, torch.Generator().manual_seed(0))
    assert float(depths[0, 1:].min()) >= 2.2 and float(depths[0, 1:].max()) <= 3.3 + 1 / 7
    rgb, depth, weight_sum = renderer(planes, decoder, origins, directions)
    assert torch.isfinite(rgb).all() and torch.isfinite(depth).all()


@pytest.mark.parametrize(("backend", "fused"), [("torch", None), *RENDER_PATHS])
def test_auto_limits_with_no_ray_in_the_box(backend, fused):
    """A batch, or a chunk, in which no ray meets the box: EG3D's fill has no valid start to copy
    (its own code raises) and the limits stay reversed; these rays get an empty range at their
    closest approach to the box's centre: zero weights, that depth, gradients finite. Rays of
    other chunks render as in the whole batch."""
    planes, decoder, origins, directions = make_scene(rays=6, seed=3)
    origins[0, :3] = torch.tensor([5.0, 5.0, -2.7])  # the first chunk of 3 misses the box
    directions[0, :3] = torch.tensor([0.0, 0.0, 1.0])
    kwargs = dict(
        depth_resolution=8,
        depth_resolution_importance=6,
        ray_start="auto",
        ray_end="auto",
        deterministic=True,
        backend=backend,
        fused=fused,
    )
    planes.requires_grad_()
    whole = ImportanceRenderer(**kwargs)(planes, decoder, origins, directions)
    chunked = ImportanceRenderer(chunk_rays=3, **kwargs)(planes, decoder, origins, directions)
    rgb, depth, weight_sum = chunked
    assert torch.isfinite(rgb).all() and torch.isfinite(depth).all()
    torch.testing.assert_close(weight_sum[0, :3], torch.zeros(3, 1))
    torch.testing.assert_close(depth[0, :3], torch.full((3, 1), 2.7))
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a[0, 3:], b[0, 3:])
    (rgb.sum() + depth.sum()).backward()
    assert torch.isfinite(planes.grad).all()


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_renders_under_autocast(backend):
    """Mixed precision training: under autocast the decoder's products run in bfloat16 and the
    march gets the colours and densities in the depths' dtype (it takes one dtype)."""
    planes, decoder, origins, directions = make_scene(rays=6)
    renderer = ImportanceRenderer(
        depth_resolution=8, depth_resolution_importance=8, fused=False, backend=backend
    )
    planes.requires_grad_()
    want = renderer(
        planes, decoder, origins, directions, generator=torch.Generator().manual_seed(1)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = renderer(
            planes, decoder, origins, directions, generator=torch.Generator().manual_seed(1)
        )
        got[0].sum().backward()
    assert got[0].dtype == torch.float32 and torch.isfinite(planes.grad).all()
    for g, w in zip(got, want, strict=True):  # bfloat16 products: about 3 significant digits
        torch.testing.assert_close(g, w, rtol=0.05, atol=0.05)


def test_triplane_crop_removes_density_outside():
    points = torch.tensor(
        [[[0.0, 0.0, 0.0], [0.45, 0.0, 0.0], [0.0, 0.49, 0.0], [0.0, 0.0, -0.41]]]
    )
    mask = triplane_crop_mask(points, 0.1, 1.0)
    assert mask.flatten().tolist() == [False, True, False, True]
    planes, decoder, origins, directions = make_scene(seed=4)
    origins = origins + torch.tensor([0.45, 0.0, 0.0])  # rays along z at x = 0.45: all cropped
    directions = torch.tensor([0.0, 0.0, 1.0]).expand_as(directions)
    renderer = ImportanceRenderer(
        depth_resolution=8, depth_resolution_importance=4, triplane_crop=0.1, backend="torch"
    )
    _, _, weight_sum = renderer(planes, decoder, origins, directions)
    assert float(weight_sum.detach().max()) < 1e-6


def test_deform_hook_sees_every_sample_point():
    planes, decoder, origins, directions = make_scene(rays=4, seed=5)
    seen = []

    def shift(points):
        seen.append(points.shape)
        return points + torch.tensor([0.05, 0.0, 0.0])

    renderer = ImportanceRenderer(
        depth_resolution=6, depth_resolution_importance=5, deterministic=True, backend="torch"
    )
    shifted = renderer(planes, decoder, origins, directions, deform=shift)
    assert seen == [(1, 4 * 6, 3), (1, 4 * 5, 3)]
    moved = renderer(planes, decoder, origins + torch.tensor([0.05, 0.0, 0.0]), directions)
    for a, b in zip(shifted, moved, strict=True):
        torch.testing.assert_close(a, b)


def test_decoder_gets_sample_directions_only_when_it_reads_them():
    """OSGDecoder (EG3D's ignores the directions) gets None; a decoder that says it reads them
    gets each sample's ray direction, (B, R·S, 3), and both render the same image."""
    planes, decoder, origins, directions = make_scene(rays=4, seed=6)
    seen = []

    class DirectionDecoder(OSGDecoder):
        uses_ray_directions = True

        def forward(self, features, ray_directions=None):
            seen.append(ray_directions)
            return super().forward(features, ray_directions)

    reading = DirectionDecoder(decoder.n_features, decoder.output_dim)
    reading.load_state_dict(decoder.state_dict())
    ignoring = []

    def spy(features, ray_directions=None):
        ignoring.append(ray_directions)
        return decoder(features, ray_directions)

    spy.uses_ray_directions = False
    renderer = ImportanceRenderer(
        depth_resolution=6, depth_resolution_importance=5, deterministic=True, backend="torch"
    )
    with_directions = renderer(planes, reading, origins, directions)
    without = renderer(planes, spy, origins, directions)
    assert ignoring == [None, None]
    assert [tuple(d.shape) for d in seen] == [(1, 4 * 6, 3), (1, 4 * 5, 3)]
    want = directions.unsqueeze(-2).expand(-1, -1, 6, -1).reshape(1, -1, 3)
    torch.testing.assert_close(seen[0], want, rtol=0, atol=0)
    assert OSGDecoder.uses_ray_directions is False
    for a, b in zip(with_directions, without, strict=True):
        torch.testing.assert_close(a, b)


def test_the_decoder_runs_on_the_renderers_backend():
    """A renderer built with backend="torch" runs the decoder's ops (softplus, the output head)
    on torch too, whatever backend is in force outside it; without one they follow the global."""
    planes, decoder, origins, directions = make_scene(rays=4, seed=7)
    seen = []

    def spy(features, ray_directions=None):
        seen.append(pe.get_backend())
        return decoder(features, ray_directions)

    spy.uses_ray_directions = False
    kwargs = dict(depth_resolution=6, depth_resolution_importance=5, deterministic=True)
    with pe.use_backend("native"):
        ImportanceRenderer(backend="torch", fused=False, **kwargs)(planes, spy, origins, directions)
        ImportanceRenderer(fused=False, **kwargs)(planes, spy, origins, directions)
    assert seen == ["torch", "torch", "native", "native"]


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_torch_compile_of_march_and_importance(backend):
    planes, decoder, origins, directions = make_scene(seed=6)
    renderer = ImportanceRenderer(
        depth_resolution=8, depth_resolution_importance=6, deterministic=True, backend=backend
    )
    depths = renderer.coarse_depths(origins, directions)
    colors, densities = renderer.run_model(planes, decoder, origins, directions, depths, None)
    colors, densities = colors.detach(), densities.detach()
    compiled = torch.compile(renderer.march_and_importance, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(
        compiled(colors, densities, depths),
        renderer.march_and_importance(colors, densities, depths),
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth_resolution must be >= 4"):
        ImportanceRenderer(depth_resolution=3)
    with pytest.raises(ValueError, match="both be 'auto'"):
        ImportanceRenderer(ray_start="auto", ray_end=3.0)
    with pytest.raises(ValueError, match="0 < ray_start < ray_end"):
        ImportanceRenderer(ray_start=3.0, ray_end=2.0)
    planes, decoder, origins, directions = make_scene()
    renderer = ImportanceRenderer(depth_resolution=4, depth_resolution_importance=2)
    with pytest.raises(ValueError, match=r"ray_origins must have shape \(B, R, 3\)"):
        renderer(planes, decoder, origins[..., :2], directions)
    with pytest.raises(ValueError, match="same shape"):
        renderer(planes, decoder, origins, directions[:, :2])


@pytest.mark.parametrize("disparity", [False, True], ids=["depth", "disparity"])
@pytest.mark.parametrize("tensor_limits", [False, True], ids=["scalar", "per-ray"])
def test_stratified_depths_stay_sorted_between_the_limits(disparity, tensor_limits):
    start, end = 2.0, 3.5
    if tensor_limits:
        start = torch.full((2, 3, 1), 2.0)
        end = torch.tensor([3.0, 3.5, 4.0]).reshape(1, 3, 1).expand(2, 3, 1)
    depths = stratified_depths(
        2, 3, start, end, 16, disparity_space=disparity, generator=torch.Generator().manual_seed(0)
    )
    assert depths.shape == (2, 3, 16, 1)
    assert bool((depths[..., 1:, :] >= depths[..., :-1, :]).all())
    upper = 4.0 if tensor_limits else 3.5
    assert float(depths.min()) >= 2.0 and float(depths.max()) <= upper * 1.08
    plain = stratified_depths(2, 3, start, end, 16, disparity_space=disparity, jitter=False)
    torch.testing.assert_close(plain[..., 0, :], torch.full((2, 3, 1), 2.0))


@pytest.mark.parametrize("disparity", [False, True], ids=["depth", "disparity"])
@pytest.mark.parametrize("tensor_limits", [False, True], ids=["scalar", "per-ray"])
def test_stratified_depths_stay_sorted_on_the_worst_jitter(monkeypatch, disparity, tensor_limits):
    """U_k just below 1 next to U_{k+1} = 0 on every pair: EG3D's linspace + U·Δ steps back by
    an ulp there (merge_samples would refuse those coarse depths); each depth from its own
    position k + U_k does not."""
    samples, start, end = 48, 2.25, 3.3
    below_one = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0))

    def worst(shape, **kwargs):
        draws = torch.zeros(shape, dtype=kwargs.get("dtype"))
        draws[..., 0::2, :] = below_one
        return draws

    if not disparity and not tensor_limits:  # the published form on these draws
        line = torch.linspace(start, end, samples).reshape(1, 1, -1, 1)
        eg3d = line + worst((1, 4, samples, 1)) * ((end - start) / (samples - 1))
        assert bool((eg3d[..., 1:, :] < eg3d[..., :-1, :]).any())
    if tensor_limits:
        start = torch.full((1, 4, 1), start)
        end = torch.tensor([2.3, 3.3, 2.251, 5.0]).reshape(1, 4, 1)
    monkeypatch.setattr(torch, "rand", worst)
    depths = stratified_depths(1, 4, start, end, samples, disparity_space=disparity)
    assert bool((depths[..., 1:, :] >= depths[..., :-1, :]).all())


def test_coarse_depths_between_fixed_limits_are_known_sorted():
    """Fixed limits: the coarse depths are sorted by construction and marked so (merge_samples
    does not check them); per-ray 'auto' limits can come out reversed, so the merge checks."""
    from portrait_engine.ops import importance

    _, _, origins, directions = make_scene()
    fixed = ImportanceRenderer(depth_resolution=8, depth_resolution_importance=8)
    assert importance._known_sorted(fixed.coarse_depths(origins, directions))
    auto = ImportanceRenderer(
        depth_resolution=8, depth_resolution_importance=8, ray_start="auto", ray_end="auto"
    )
    assert not importance._known_sorted(auto.coarse_depths(origins, directions))
    # disparity space: for ray_end >= S·ray_start the last sample's 1/z crosses zero (as in
    # EG3D), so those depths are left to the merge's check, which refuses them
    disparity = ImportanceRenderer(
        depth_resolution=8,
        depth_resolution_importance=8,
        ray_start=0.1,
        ray_end=5.0,
        disparity_space_sampling=True,
    )
    assert not importance._known_sorted(disparity.coarse_depths(origins, directions))
    planes, decoder = make_scene()[:2]
    with pytest.raises(ValueError, match="depths1 must be sorted"):
        disparity(planes, decoder, origins, directions)
    with torch.inference_mode():  # no version counter: nothing marked, the render runs
        rgb, _, _ = fixed(planes, decoder, origins, directions)
    assert torch.isfinite(rgb).all()
    if pe.backend_status("cpu", "render_rays_forward")["native"][0]:
        fused = ImportanceRenderer(
            depth_resolution=8, depth_resolution_importance=8, fused=True, backend="native"
        )
        with torch.inference_mode():  # the fused path too
            rgb_fused, _, _ = fused(planes, decoder, origins, directions)
        assert torch.isfinite(rgb_fused).all()
    with pytest.raises(ValueError, match="samples must be at least 2"):
        stratified_depths(1, 2, torch.ones(1, 2, 1), torch.full((1, 2, 1), 2.0), 1)


# --- the fused renderer (render_rays) ------------------------------------------------------


def _fused_backend_param(name):
    ok, reason = pe.backend_status("cpu", "render_rays_forward")[name]
    if ok and name == "triton":
        import importlib.util

        if importlib.util.find_spec("portrait_engine.kernels.render") is None:
            ok, reason = False, "portrait_engine.kernels.render is missing"
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=reason))


FUSED_BACKENDS = [_fused_backend_param("triton"), _fused_backend_param("native")]


def _pose_like_deform(points):
    """A smooth, differentiable stand-in for the pose deformation (a bend about y)."""
    angle = 0.3 * points[..., 1:2]
    x, y, z = points.unbind(-1)
    c, s = torch.cos(angle[..., 0]), torch.sin(angle[..., 0])
    return torch.stack((c * x + s * z, y, -s * x + c * z), dim=-1)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("trigrid", [False, True])
@pytest.mark.parametrize("density_noise", [0.0, 0.5])
def test_fused_renderer_matches_unfused_at_the_same_seed(backend, trigrid, density_noise):
    planes, decoder, origins, directions = make_scene(batch=2, rays=7, seed=4, trigrid=trigrid)
    planes.requires_grad_(True)
    kwargs = dict(
        depth_resolution=8,
        depth_resolution_importance=6,
        density_noise=density_noise,
        triplane_crop=0.05,
        plane_axes="panohead" if trigrid else "eg3d",
        backend=backend,
    )
    outputs = {}
    for fused in (True, False):
        renderer = ImportanceRenderer(fused=fused, **kwargs)
        assert renderer.use_fused(planes) is fused
        out = renderer(
            planes,
            decoder,
            origins,
            directions,
            generator=torch.Generator().manual_seed(11),
            deform=_pose_like_deform,
        )
        loss = sum((o * (k + 1)).sum() for k, o in enumerate(out))
        grads = torch.autograd.grad(loss, [planes, *decoder.parameters()])
        outputs[fused] = (out, grads)
    for got, want in zip(outputs[True][0], outputs[False][0], strict=True):
        assert_close(got, want, torch.float32, scale=5)
    for got, want in zip(outputs[True][1], outputs[False][1], strict=True):
        assert_close(got, want, torch.float32, scale=20)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("activation", ["none", "lrelu"])
def test_fused_renderer_portrait_decoder_matches_unfused(backend, activation, monkeypatch):
    """3DPortraitGAN's PortraitDecoder (raw "none" / PanoHead's "lrelu" colours) is fusable, and
    renders fused as unfused at the same seed: images and gradients (tolerances as above)."""
    from portrait_engine.models.portrait_gan.generator import PortraitDecoder

    # one batch element: the batch indexing is the same kernel code for every activation, and
    # the test above covers it (batch 2) on both plane kinds; under Triton's interpreter this test
    # took 16 s with two (2026-11-27)
    planes, osg, origins, directions = make_scene(batch=1, rays=7, seed=5, trigrid=True)
    decoder = PortraitDecoder(
        osg.n_features, osg.net[2].weight.shape[0] - 1, hidden_dim=osg.net[0].weight.shape[0],
        activation=activation,
    )  # fmt: skip
    decoder.load_state_dict(osg.state_dict())
    assert ImportanceRenderer.fusable(decoder)
    planes.requires_grad_(True)
    kwargs = dict(
        depth_resolution=8, depth_resolution_importance=6, density_noise=0.5,
        triplane_crop=0.05, plane_axes="panohead", backend=backend,
    )  # fmt: skip
    outputs = {}
    for fused in (True, False):
        renderer = ImportanceRenderer(fused=fused, **kwargs)
        if fused:
            # fused by default for this decoder on a GPU, not only when forced
            default = ImportanceRenderer(**kwargs)
            assert fused_by_default_on_a_gpu(default, planes, decoder, monkeypatch)
        out = renderer(
            planes, decoder, origins, directions, generator=torch.Generator().manual_seed(12),
            deform=_pose_like_deform,
        )  # fmt: skip
        loss = sum((o * (k + 1)).sum() for k, o in enumerate(out))
        grads = torch.autograd.grad(loss, [planes, *decoder.parameters()])
        outputs[fused] = (out, grads)
    with torch.no_grad():  # the activation matters: EG3D's sigmoid decoder renders otherwise
        sigmoid = ImportanceRenderer(fused=True, **kwargs)(
            planes, osg, origins, directions, generator=torch.Generator().manual_seed(12),
            deform=_pose_like_deform,
        )  # fmt: skip
    assert float((sigmoid[0] - outputs[True][0][0].detach()).abs().max()) > 0.1
    for got, want in zip(outputs[True][0], outputs[False][0], strict=True):
        assert_close(got, want, torch.float32, scale=5)
    for got, want in zip(outputs[True][1], outputs[False][1], strict=True):
        assert_close(got, want, torch.float32, scale=20)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fused_renderer_gradients_reach_the_deformation(backend):
    planes, decoder, origins, directions = make_scene(batch=1, rays=5, seed=6)
    bend = torch.tensor(0.3, requires_grad=True)

    def deform(points):
        return points + bend * points[..., [1, 2, 0]]

    grads = {}
    for fused in (True, False):
        renderer = ImportanceRenderer(
            depth_resolution=8, depth_resolution_importance=6, deterministic=True,
            backend=backend, fused=fused,
        )  # fmt: skip
        rgb, depth, _ = renderer(planes, decoder, origins, directions, deform=deform)
        (grads[fused],) = torch.autograd.grad(rgb.sum() + depth.sum(), [bend])
    assert float(grads[True].abs()) > 0
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-4, atol=1e-6)


def test_fused_default_on_the_cpu_is_the_unfused_ops():
    """On the CPU the default is the unfused ops on every backend (faster there: use_fused's
    comment); fused=True still takes the fused path."""
    planes = torch.zeros(1, 3, 4, 5, 5)
    assert not ImportanceRenderer(backend="torch").use_fused(planes)
    assert not ImportanceRenderer(backend="torch", fused=False).use_fused(planes)
    assert ImportanceRenderer(backend="native", fused=True).use_fused(planes)
    for backend in ("native", "triton", None):
        assert not ImportanceRenderer(backend=backend).use_fused(planes)
    with pe.use_backend("native"):
        assert not ImportanceRenderer().use_fused(planes)


def test_fused_default_on_a_gpu(monkeypatch):
    """On a GPU the default is fused wherever a kernel backend resolves (planes on the meta
    device stand in for a GPU here; the backend resolution is what a GPU machine gives)."""
    from portrait_engine.nn import renderer as renderer_module

    planes = torch.zeros(1, 3, 4, 5, 5, device="meta")
    for name, fused in (("native", True), ("torch", False)):
        monkeypatch.setattr(renderer_module._backend, "resolve", lambda *a, n=name: n)
        assert ImportanceRenderer().use_fused(planes) is fused
    with pytest.raises(TypeError, match="fused"):
        ImportanceRenderer(fused=1)
