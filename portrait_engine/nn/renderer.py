"""``ImportanceRenderer``: EG3D / PanoHead volume rendering of tri-plane features along rays.

The stages, as in EG3D's and PanoHead's ``ImportanceRenderer.forward``:

1. coarse depths: ``depth_resolution`` stratified samples per ray (``sample_stratified``: a
   ``linspace(ray_start, ray_end)`` jittered by ``U[0, 1) · Δ``; in disparity space
   optionally), between fixed ``ray_start`` / ``ray_end`` or, with ``'auto'``, the ray's
   entry and exit of the ``box_warp`` cube (``get_ray_limits_box``; rays missing the cube get
   the extreme limits of the valid ones, EG3D's rule);
2. coarse pass: sample points ``o + z·d``, the ``deform`` hook (observation -> canonical space,
   3DPortraitGAN's pose deformation), :func:`~portrait_engine.ops.triplane_sample`, the decoder,
   density noise ``σ += N(0, 1)·density_noise``, PanoHead's ``triplane_crop`` (density -1e3
   outside ``|x|, |z| <= box_warp/2 - crop``);
3. :func:`~portrait_engine.ops.ray_march` of the coarse samples for the weights, then
   :func:`~portrait_engine.ops.sample_importance` of ``depth_resolution_importance`` fine
   depths (sorted, so they merge without a sort);
4. fine pass on them, :func:`~portrait_engine.ops.merge_samples` of coarse and fine, and the
   final :func:`~portrait_engine.ops.ray_march`.

Every kernel-backed stage runs on the backend in force (``use_backend``) or the one given to
the constructor. Random draws (jitter, density noise, importance) come from the ``generator``
passed to ``forward`` (the global generator if ``None``), in the same order on every backend,
so backends agree at the same seed, and without density noise the image is EG3D's for the same
draws (the fine samples are drawn in depth order, so with density noise they receive the noise
draws in another order than EG3D's: the same distribution, other values). ``chunk_rays``
renders that many rays at a time, bounding the memory of the ``(B, rays, samples, C)``
intermediates (draws are then made per chunk).

The fused path (``fused=True``; by default on a GPU whenever the backend in force is not
``"torch"``; the CPU default is the unfused ops, faster there: :meth:`use_fused`) runs the same
stages on :func:`~portrait_engine.ops.render_rays`, which samples, decodes and composites each
ray in one kernel: a coarse pass without gradient returning the per-interval weights,
``sample_importance``, the deformation of the fine points, ``merge_samples`` of the depths, the
points and the density noise only (no colours or densities exist outside the kernel), and a
fine pass over all the merged samples. It draws the same random numbers in the same order as
the unfused path (coarse jitter, coarse density noise, importance uniforms, fine density
noise), so both render the same image at the same seed. It runs EG3D's ``OSGDecoder`` and
3DPortraitGAN's ``PortraitDecoder`` with any of its colour activations (:meth:`fusable`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from torch import nn

from portrait_engine import _backend
from portrait_engine.nn.decoder import OSGDecoder
from portrait_engine.ops import (
    merge_samples,
    ray_march,
    render_rays,
    sample_importance,
    triplane_sample,
)
from portrait_engine.ops.importance import mark_sorted
from portrait_engine.ops.reference.render import COLOR_ACTIVATIONS
from portrait_engine.ops.triplane import channels_last_planes

Deform = Callable[[torch.Tensor], torch.Tensor]
CROP_DENSITY = -1e3  # PanoHead's density outside the tri-plane crop


def ray_limits_box(
    origins: torch.Tensor, directions: torch.Tensor, box_side_length: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit depths ``(B, R, 1)`` of rays through the cube ``[-s/2, s/2]³``.

    EG3D's ``get_ray_limits_box`` (the slab method): per axis ``t = (bound - o) / d`` with the
    near / far bound chosen by the sign of ``1/d``; a ray that misses gets ``(-1, -2)``.
    Computed without gradient, as in EG3D.
    """
    o = origins.detach()
    inv = 1.0 / directions.detach()
    half = box_side_length / 2
    near = torch.where(inv < 0, half, -half)
    far = -near
    t_near = (near - o) * inv
    t_far = (far - o) * inv
    tmin, tmax = t_near[..., 0], t_far[..., 0]
    valid = torch.ones_like(tmin, dtype=torch.bool)
    for axis in (1, 2):
        amin, amax = t_near[..., axis], t_far[..., axis]
        valid = valid & ~((tmin > amax) | (amin > tmax))
        tmin = torch.maximum(tmin, amin)
        tmax = torch.minimum(tmax, amax)
    tmin = torch.where(valid, tmin, -1.0)
    tmax = torch.where(valid, tmax, -2.0)
    return tmin.unsqueeze(-1), tmax.unsqueeze(-1)


def fill_invalid_limits(
    start: torch.Tensor, end: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """EG3D's rule for rays that miss the box: start = min of the valid starts, end = max of the
    valid *starts* (EG3D's code reads ``ray_start`` for both); unchanged if no ray is valid."""
    valid = end > start
    any_valid = valid.any()
    inf = torch.full_like(start, float("inf"))
    low = torch.where(valid, start, inf).amin()
    high = torch.where(valid, start, -inf).amax()
    new_start = torch.where(valid | ~any_valid, start, low)
    new_end = torch.where(valid | ~any_valid, end, high)
    return new_start, new_end


def _empty_where_reversed(
    start: torch.Tensor, end: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Limits ``(B, R, 1)`` with every reversed pair (end < start) made an empty range at the
    ray's closest approach to the box's centre.

    After :func:`fill_invalid_limits` only a batch (or a chunk of rays) in which no ray meets
    the box has reversed limits, EG3D's ``(-1, -2)``: EG3D's own fill raises there (the minimum
    of no valid start), and reversed depths are refused by ``merge_samples``. An empty range
    gives those rays zero weights: the background, at a positive depth. No device sync.
    """
    o, d = origins.detach(), directions.detach()
    closest = (-(o * d).sum(-1, keepdim=True) / (d * d).sum(-1, keepdim=True)).clamp_min(0.0)
    reversed_ = end < start
    closest = closest.to(start.dtype)
    return torch.where(reversed_, closest, start), torch.where(reversed_, closest, end)


def stratified_depths(
    batch: int,
    rays: int,
    ray_start: float | torch.Tensor,
    ray_end: float | torch.Tensor,
    samples: int,
    *,
    disparity_space: bool = False,
    jitter: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """EG3D's ``sample_stratified``: ``(B, R, S, 1)`` jittered depths from start to end.

    ``z_k = start + (k + U_k)·Δ`` with ``Δ = (end - start) / (S - 1)`` (per ray for tensor
    limits ``(B, R, 1)``); in disparity space ``t_k = (k + U_k)/(S-1)`` and
    ``z = 1 / (1/start + t·(1/end - 1/start))``. ``jitter=False`` takes ``U_k = 0``. EG3D's
    formulas, grouped so that the rounded depths of each ray are non-decreasing (see below).
    """
    if samples < 2:
        raise ValueError(
            f"samples must be at least 2 (the spacing divides by S - 1), got {samples}"
        )
    shape = (batch, rays, samples, 1)
    if jitter:
        jitter = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    else:
        jitter = torch.zeros(shape, device=device, dtype=dtype)
    # Each depth from its own position k + U_k, not EG3D's linspace + U_k·Δ: rounded, k + U_k
    # never passes k + 1 (U_k < 1, k + 1 exact), and every step after it is monotone for
    # end >= start (disparity space: while 1/z stays positive, end < S·start), so each ray's
    # depths are non-decreasing, as merge_samples requires (and checks). EG3D's form, the same
    # value to rounding, stepped back by an ulp where U_k ≈ 1 met U_{k+1} ≈ 0 (about once in
    # 10^10 pairs: ~1e-4 per EG3D-size render, a crash in a long run).
    positions = torch.arange(samples, device=device, dtype=dtype).reshape(1, 1, -1, 1) + jitter
    if isinstance(ray_start, torch.Tensor):
        start, end = ray_start.unsqueeze(-2), ray_end.unsqueeze(-2)  # (B, R, 1, 1)
    else:
        start, end = ray_start, ray_end
    if disparity_space:
        t = positions * (1.0 / (samples - 1))
        # 1/z = (1/start)(1 - t) + (1/end) t, as one product and one sum (monotone in t)
        return 1.0 / (1.0 / start + t * (1.0 / end - 1.0 / start))
    return start + positions * ((end - start) / (samples - 1))


def triplane_crop_mask(points: torch.Tensor, crop: float, box_warp: float) -> torch.Tensor:
    """PanoHead's ``triplane_crop_mask``: ``(B, N, 1)`` True where a point lies outside the
    cropped box, ``|x| > box_warp/2 - crop`` or ``|z| > box_warp/2 - crop`` (the bottom exception
    of PanoHead's code is a subset of the inside, so it changes nothing)."""
    limit = box_warp / 2 - crop
    inside = (points[..., 0].abs() <= limit) & (points[..., 2].abs() <= limit)
    return ~inside.unsqueeze(-1)


class ImportanceRenderer(nn.Module):
    """Two-pass (coarse + importance) volume renderer of tri-plane / tri-grid features.

    Args:
        depth_resolution: coarse samples per ray (EG3D: 48), >= 4.
        depth_resolution_importance: fine samples per ray (EG3D: 48; 0 skips the fine pass).
        ray_start, ray_end: sampling limits along each ray (EG3D FFHQ: 2.25, 3.3), or both
            ``'auto'`` for the entry and exit of the ``box_warp`` cube.
        box_warp: side of the cube mapped onto the planes (``triplane_sample``'s ``box_warp``).
        plane_axes: ``"eg3d"``, ``"panohead"`` or a ``(P, 3, 3)`` tensor.
        white_back, scale_rgb: ``ray_march``'s options (``scale_rgb=False``: 3DPortraitGAN).
        density_noise: standard deviation of the noise added to the raw densities.
        triplane_crop: PanoHead's crop margin (0 disables it; PanoHead uses 0.1).
        disparity_space_sampling: stratify in disparity instead of depth.
        chunk_rays: render this many rays at a time (``None``: all at once). Chunks draw
            their random numbers one after the other, and ``ray_march`` clamps the depth of a
            ray without weight to the depth range of its chunk.
        deterministic: no random draws: coarse depths on the plain ``linspace``, importance
            draws ``linspace(0, 1, n)``, no density noise (NeRF's ``perturb=0``; not an EG3D
            option, useful for evaluation and for comparing chunked and whole renders).
        deform: default hook applied to every sample point ``(B, N, 3) -> (B, N, 3)``.
        backend: the ops' backend (``None``: the one in force).
        fused: render with the fused :func:`~portrait_engine.ops.render_rays` (needs a
            decoder it runs: :meth:`fusable`); ``None``: fused for planes on a GPU
            unless the backend in force is ``"torch"`` (or ``"triton"`` without its render
            kernel module) or the decoder is not fusable (:meth:`fusable`), the unfused ops
            for planes on the CPU (faster there; the fused path holds less memory);
            ``False``: the unfused ops.

    ``forward(planes, decoder, ray_origins, ray_directions, *, generator=None, deform=None)``
    with ``planes`` ``(B, P, C, H, W)`` or ``(B, P, C, D, H, W)``, rays ``(B, R, 3)``, and a
    decoder mapping ``(features (B, N, C), directions (B, N, 3))`` to ``{"rgb", "sigma"}``,
    returns ``(rgb (B, R, C_out), depth (B, R, 1), weight_sum (B, R, 1))`` as EG3D does. A
    decoder whose ``uses_ray_directions`` attribute is False (``OSGDecoder``: EG3D's ignores
    them) gets ``None`` for the directions, which spares a ``(B, N, 3)`` copy per pass.
    """

    def __init__(
        self,
        *,
        depth_resolution: int = 48,
        depth_resolution_importance: int = 48,
        ray_start: float | str = 2.25,
        ray_end: float | str = 3.3,
        box_warp: float = 1.0,
        plane_axes: str | torch.Tensor = "eg3d",
        white_back: bool = False,
        scale_rgb: bool = True,
        density_noise: float = 0.0,
        triplane_crop: float = 0.0,
        disparity_space_sampling: bool = False,
        chunk_rays: int | None = None,
        deterministic: bool = False,
        deform: Deform | None = None,
        backend: str | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"fused must be a bool or None, got {type(fused).__name__}")
        if depth_resolution < 4:
            raise ValueError(f"depth_resolution must be >= 4, got {depth_resolution}")
        if depth_resolution_importance < 0:
            raise ValueError(
                f"depth_resolution_importance must be >= 0, got {depth_resolution_importance}"
            )
        auto = (ray_start == "auto", ray_end == "auto")
        if any(auto) and not all(auto):
            raise ValueError(
                f"ray_start and ray_end must both be 'auto' or both numbers, got {ray_start!r}, "
                f"{ray_end!r}"
            )
        if not any(auto) and not (0 < float(ray_start) < float(ray_end)):
            raise ValueError(f"need 0 < ray_start < ray_end, got {ray_start}, {ray_end}")
        if chunk_rays is not None and chunk_rays < 1:
            raise ValueError(f"chunk_rays must be positive or None, got {chunk_rays}")
        if density_noise < 0 or triplane_crop < 0 or box_warp <= 0:
            raise ValueError(
                "density_noise and triplane_crop must be >= 0 and box_warp > 0, got "
                f"{density_noise}, {triplane_crop}, {box_warp}"
            )
        self.depth_resolution = depth_resolution
        self.depth_resolution_importance = depth_resolution_importance
        self.ray_start = ray_start
        self.ray_end = ray_end
        self.box_warp = float(box_warp)
        self.plane_axes = plane_axes
        self.white_back = white_back
        self.scale_rgb = scale_rgb
        self.density_noise = float(density_noise)
        self.triplane_crop = float(triplane_crop)
        self.disparity_space_sampling = disparity_space_sampling
        self.chunk_rays = chunk_rays
        self.deterministic = deterministic
        self.deform = deform
        self.backend = backend
        self.fused = fused

    # ---- stages ------------------------------------------------------------------------------

    def coarse_depths(self, origins, directions, generator=None) -> torch.Tensor:
        batch, rays, _ = origins.shape
        if self.ray_start == "auto":
            start, end = fill_invalid_limits(*ray_limits_box(origins, directions, self.box_warp))
            start, end = _empty_where_reversed(start, end, origins, directions)
        else:
            start, end = float(self.ray_start), float(self.ray_end)
        depths = stratified_depths(
            batch,
            rays,
            start,
            end,
            self.depth_resolution,
            disparity_space=self.disparity_space_sampling,
            jitter=not self.deterministic,
            generator=generator,
            device=origins.device,
            dtype=origins.dtype,
        )
        if (
            self.ray_start != "auto"
            and not self.disparity_space_sampling
            and self.depth_resolution <= 256
        ):
            # sorted and finite by construction for 0 < start < end (checked in __init__) while
            # the sample index is exact in every float dtype (bfloat16: up to 256). Not marked:
            # per-ray limits (NaN origins, say) and disparity space (the last sample's t passes
            # 1, and for end >= S·start its 1/z crosses zero, as in EG3D): the merge checks them
            mark_sorted(depths)
        return depths

    def density_noise_draw(self, shape, generator, device, dtype) -> torch.Tensor | None:
        """``N(0, 1)·density_noise`` of ``shape`` (None without noise): one draw per sample."""
        if not (self.density_noise > 0 and not self.deterministic):
            return None
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return noise * self.density_noise

    def sample_points(self, origins, directions, depths, deform) -> torch.Tensor:
        """The (deformed) sample points ``(B, R, S, 3)`` at ``depths`` ``(B, R, S, 1)``."""
        batch, rays, samples, _ = depths.shape
        points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(batch, -1, 3)
        if deform is not None:
            points = deform(points)
        return points.reshape(batch, rays, samples, 3)

    def run_model(self, planes, decoder, origins, directions, depths, deform, generator=None):
        """Colours ``(B, R, S, C_out)`` and raw densities ``(B, R, S, 1)`` at ``depths``."""
        batch, rays, samples, _ = depths.shape
        points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(batch, -1, 3)
        sample_directions = None
        if getattr(decoder, "uses_ray_directions", True):
            # one direction per sample, a (B, R·S, 3) copy: made only for decoders that read it
            sample_directions = directions.unsqueeze(-2).expand(-1, -1, samples, -1)
            sample_directions = sample_directions.reshape(batch, -1, 3)
        if deform is not None:
            points = deform(points)
        features = triplane_sample(
            planes,
            points.to(planes.dtype),
            box_warp=self.box_warp,
            plane_axes=self.plane_axes,
            backend=self.backend,
        )
        if self.backend is None:
            out = decoder(features, sample_directions)
        else:  # the decoder's ops (softplus, decoder_outputs) follow the renderer's backend
            with _backend.use_backend(self.backend):
                out = decoder(features, sample_directions)
        # in the depths' dtype: under autocast the decoder's products give bf16 / fp16, and
        # ray_march takes one dtype (a no-op otherwise)
        colors, sigma = out["rgb"].to(depths.dtype), out["sigma"].to(depths.dtype)
        noise = self.density_noise_draw(sigma.shape, generator, sigma.device, sigma.dtype)
        if noise is not None:
            sigma = sigma + noise
        if self.triplane_crop > 0:
            outside = triplane_crop_mask(points, self.triplane_crop, self.box_warp)
            sigma = torch.where(outside, torch.full_like(sigma, CROP_DENSITY), sigma)
        return (
            colors.reshape(batch, rays, samples, colors.shape[-1]),
            sigma.reshape(batch, rays, samples, 1),
        )

    def march(self, colors, densities, depths):
        return ray_march(
            colors,
            densities,
            depths,
            white_back=self.white_back,
            scale_rgb=self.scale_rgb,
            backend=self.backend,
        )

    def march_and_importance(self, colors, densities, depths, generator=None):
        """The sorted fine depths ``(B, R, n_importance, 1)`` from the coarse samples."""
        _, _, weights = self.march(colors, densities, depths)
        return sample_importance(
            depths,
            weights,
            self.depth_resolution_importance,
            deterministic=self.deterministic,
            generator=generator,
            sort=True,
            backend=self.backend,
        )

    @staticmethod
    def fusable(decoder: nn.Module) -> bool:
        """Whether ``render_rays`` can run ``decoder``: an ``OSGDecoder`` whose colour activation
        (its ``activation`` attribute, ``"sigmoid"`` when absent) is one the kernels apply:
        EG3D's ``"sigmoid"``, or 3DPortraitGAN's ``PortraitDecoder`` ``"none"`` / ``"lrelu"``.
        ``render_rays`` reads the activation from the decoder."""
        return (
            isinstance(decoder, OSGDecoder)
            and getattr(decoder, "activation", "sigmoid") in COLOR_ACTIVATIONS
        )

    def use_fused(self, planes: torch.Tensor, decoder: nn.Module | None = None) -> bool:
        """Whether ``forward`` takes the fused path for these planes (and this decoder)."""
        if self.fused is not None:
            return self.fused
        if decoder is not None and not self.fusable(decoder):
            return False
        if planes.device.type == "cpu":
            # The fused path decodes more samples than the unfused one (the coarse samples
            # again in the fine pass, every sample again in the backward): on a GPU its memory
            # traffic is what counts, on the CPU its arithmetic. Measured on two 2-core
            # machines, native, 2 threads (docs/render_rays.md, "Which path on the CPU"): the
            # unfused ops 1.2-1.6x faster at 64^2 rays x 48+48, level to 1.5x at 16^2-32^2.
            return False
        name = _backend.resolve(self.backend, planes.device, "render_rays_forward")
        if name == "torch":
            return False
        if name == "triton":
            return importlib.util.find_spec("portrait_engine.kernels.render") is not None
        return True

    def _fused_pass(self, planes, decoder, points, depths, noise, weights):
        return render_rays(
            planes,
            points,
            depths,
            decoder,
            plane_axes=self.plane_axes,
            box_warp=self.box_warp,
            white_back=self.white_back,
            scale_rgb=self.scale_rgb,
            density_noise=0.0 if noise is None else noise,
            crop=self.triplane_crop,
            weights=weights,
            backend=self.backend,
        )

    def _render_fused(self, planes, decoder, origins, directions, deform, generator):
        depths_coarse = self.coarse_depths(origins, directions, generator)
        points_coarse = self.sample_points(origins, directions, depths_coarse, deform)
        # drawn as the unfused path draws it: (B, R·S, 1) in the decoder's output dtype
        batch, rays, samples, _ = depths_coarse.shape
        noise_coarse = self.density_noise_draw(
            (batch, rays * samples, 1), generator, planes.device, planes.dtype
        )
        if noise_coarse is not None:
            noise_coarse = noise_coarse.reshape(batch, rays, samples, 1)
        if self.depth_resolution_importance == 0:
            return self._fused_pass(
                planes, decoder, points_coarse, depths_coarse, noise_coarse, "sum"
            )
        with torch.no_grad():
            _, _, weights_coarse = self._fused_pass(
                planes, decoder, points_coarse, depths_coarse, noise_coarse, "full"
            )
        depths_fine = sample_importance(
            depths_coarse,
            weights_coarse,
            self.depth_resolution_importance,
            deterministic=self.deterministic,
            generator=generator,
            sort=True,
            backend=self.backend,
        )
        points_fine = self.sample_points(origins, directions, depths_fine, deform)
        fine = self.depth_resolution_importance
        noise_fine = self.density_noise_draw(
            (batch, rays * fine, 1), generator, planes.device, planes.dtype
        )
        values_coarse, values_fine = (points_coarse,), (points_fine,)
        if noise_fine is not None:
            values_coarse += (noise_coarse,)
            values_fine += (noise_fine.reshape(batch, rays, fine, 1),)
        depths, merged = merge_samples(
            depths_coarse, depths_fine, values_coarse, values_fine, backend=self.backend
        )
        noise = merged[1] if noise_fine is not None else None
        return self._fused_pass(planes, decoder, merged[0], depths, noise, "sum")

    def _render(self, planes, decoder, origins, directions, deform, generator):
        if self.use_fused(planes, decoder):
            return self._render_fused(planes, decoder, origins, directions, deform, generator)
        if _backend.resolve(self.backend, planes.device, "triplane_sample_forward") != "torch":
            # both passes sample these planes: the kernels' channels-last copy is made once
            planes = channels_last_planes(planes)
        depths_coarse = self.coarse_depths(origins, directions, generator)
        colors_coarse, densities_coarse = self.run_model(
            planes, decoder, origins, directions, depths_coarse, deform, generator
        )
        if self.depth_resolution_importance == 0:
            rgb, depth, weights = self.march(colors_coarse, densities_coarse, depths_coarse)
            return rgb, depth, weights.sum(2)
        depths_fine = self.march_and_importance(
            colors_coarse, densities_coarse, depths_coarse, generator=generator
        )
        colors_fine, densities_fine = self.run_model(
            planes, decoder, origins, directions, depths_fine, deform, generator
        )
        depths, (colors, densities) = merge_samples(
            depths_coarse,
            depths_fine,
            (colors_coarse, densities_coarse),
            (colors_fine, densities_fine),
            backend=self.backend,
        )
        rgb, depth, weights = self.march(colors, densities, depths)
        return rgb, depth, weights.sum(2)

    def forward(
        self,
        planes: torch.Tensor,
        decoder: nn.Module,
        ray_origins: torch.Tensor,
        ray_directions: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        deform: Deform | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for name, rays in (("ray_origins", ray_origins), ("ray_directions", ray_directions)):
            if not isinstance(rays, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(rays).__name__}")
            if rays.dim() != 3 or rays.shape[-1] != 3:
                raise ValueError(f"{name} must have shape (B, R, 3), got {tuple(rays.shape)}")
        if ray_origins.shape != ray_directions.shape:
            raise ValueError(
                "ray_origins and ray_directions must have the same shape, got "
                f"{tuple(ray_origins.shape)} and {tuple(ray_directions.shape)}"
            )
        deform = self.deform if deform is None else deform
        rays = ray_origins.shape[1]
        chunk = self.chunk_rays or max(rays, 1)
        if chunk >= rays:
            return self._render(planes, decoder, ray_origins, ray_directions, deform, generator)
        parts = [
            self._render(
                planes,
                decoder,
                ray_origins[:, r0 : r0 + chunk],
                ray_directions[:, r0 : r0 + chunk],
                deform,
                generator,
            )
            for r0 in range(0, rays, chunk)
        ]
        return tuple(torch.cat(outputs, dim=1) for outputs in zip(*parts, strict=True))


__all__ = [
    "ImportanceRenderer",
    "fill_invalid_limits",
    "ray_limits_box",
    "stratified_depths",
    "triplane_crop_mask",
]
