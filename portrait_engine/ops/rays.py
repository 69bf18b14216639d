"""Ray generation and compositing: the public ops, their registration and their autograd.

``ray_sample`` (EG3D's ``RaySampler``) makes the camera rays of an image; ``ray_march`` (EG3D's
``MipRayMarcher2``) composites the colours and densities sampled along them. Kernels:
``kernels/rays.py`` (Triton) and ``csrc/rays/`` (C++ CPU and CUDA); contract in
``docs/kernel_contract_rays.md``.

``ray_march``'s kernels walk each ray once, front to back, keeping the running transmittance in
a register; the forward also returns the ray's totals ``Σ w c``, ``Σ w`` and ``Σ w z`` in the
accumulation dtype, from which the backward gets every suffix sum it needs as "total minus
prefix" in a single front-to-back pass (nothing per sample is stored for the backward).
"""

from __future__ import annotations

import torch

from portrait_engine import _backend, _extension
from portrait_engine._backend import get_backend
from portrait_engine.ops import _validation as v
from portrait_engine.ops._library import (
    accumulation_dtype,
    eager,
    register_native_pair,
    register_pair,
)
from portrait_engine.ops.reference.rays import (
    CAMERA_LABEL_SIZE,
    ray_march_reference,
    ray_sample_reference,
    unpack_camera_label_reference,
)

# The native CUDA ray_march keeps a ray's channels in one warp's registers (8 per lane).
CUDA_MAX_CHANNELS = 256

# --------------------------------------------------------------------------------------------
# ray_march: kernel-level custom ops (prepared inputs; no validation)
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("portrait_engine::ray_march_triton_forward", mutates_args=())
def _march_triton_forward(
    colors: torch.Tensor,
    densities: torch.Tensor,
    depths: torch.Tensor,
    depth_range: torch.Tensor,
    white_back: bool,
    scale_rgb: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import rays as kernels

    return kernels.ray_march_forward(colors, densities, depths, depth_range, white_back, scale_rgb)


@torch.library.custom_op("portrait_engine::ray_march_triton_backward", mutates_args=())
def _march_triton_backward(
    grad_rgb: torch.Tensor,
    grad_depth: torch.Tensor | None,
    grad_weights: torch.Tensor | None,
    colors: torch.Tensor,
    densities: torch.Tensor,
    depths: torch.Tensor,
    depth_range: torch.Tensor,
    totals: torch.Tensor,
    white_back: bool,
    scale_rgb: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import rays as kernels

    return kernels.ray_march_backward(
        grad_rgb,
        grad_depth,
        grad_weights,
        colors,
        densities,
        depths,
        depth_range,
        totals,
        white_back,
        scale_rgb,
    )


def _fake_march_forward(colors, densities, depths, depth_range, white_back, scale_rgb):
    batch, rays, samples, channels = colors.shape
    return (
        colors.new_empty((batch, rays, channels)),
        colors.new_empty((batch, rays, 1)),
        colors.new_empty((batch, rays, samples - 1, 1)),
        colors.new_empty((batch, rays, channels + 2), dtype=accumulation_dtype(colors.dtype)),
    )


def _fake_march_backward(
    grad_rgb,
    grad_depth,
    grad_weights,
    colors,
    densities,
    depths,
    depth_range,
    totals,
    white_back,
    scale_rgb,
):
    return colors.new_empty(colors.shape), densities.new_empty(densities.shape)


def _setup_march_context(ctx, inputs, output):
    colors, densities, depths, depth_range, white_back, scale_rgb = inputs
    totals = output[3]
    ctx.save_for_backward(colors, densities, depths, depth_range, totals)
    ctx.flags = (white_back, scale_rgb)
    ctx.mark_non_differentiable(totals)
    # An output no gradient reached (the weights and depth, in most renders) arrives as None,
    # not as a tensor of zeros that the backward kernels would have to read.
    ctx.set_materialize_grads(False)


def _optional_contiguous(grad: torch.Tensor | None) -> torch.Tensor | None:
    return None if grad is None else grad.contiguous()


def _make_march_autograd(backward_op):
    def backward(ctx, grad_rgb, grad_depth, grad_weights, _grad_totals):
        colors, densities, depths, depth_range, totals = ctx.saved_tensors
        if grad_rgb is None:  # only the depth or the weights reached the loss
            batch, rays, _, channels = colors.shape
            grad_rgb = colors.new_zeros((batch, rays, channels))
        grad_colors, grad_densities = backward_op(
            grad_rgb.contiguous(),
            _optional_contiguous(grad_depth),
            _optional_contiguous(grad_weights),
            colors,
            densities,
            depths,
            depth_range,
            totals,
            *ctx.flags,
        )
        # no gradient to the depths (sample positions come from linspace / importance sampling)
        return grad_colors, grad_densities, None, None, None, None

    return backward


_MARCH_REGISTRATION = dict(
    fake_forward=_fake_march_forward,
    fake_backward=_fake_march_backward,
    setup_context=_setup_march_context,
    make_backward=_make_march_autograd,
)
register_pair("ray_march_triton_forward", "ray_march_triton_backward", **_MARCH_REGISTRATION)
_NATIVE_MARCH_REGISTERED = register_native_pair(
    "ray_march_forward", "ray_march_backward", **_MARCH_REGISTRATION
)


# --------------------------------------------------------------------------------------------
# ray_march: the public op
# --------------------------------------------------------------------------------------------


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _validate_march(colors, densities, depths, white_back, scale_rgb) -> None:
    v.check_tensor("colors", colors)
    v.check_tensor("densities", densities)
    v.check_tensor("depths", depths)
    v.check_rank("colors", colors, (4,), "(B, R, S, C)")
    v.check_rank("densities", densities, (4,), "(B, R, S, 1)")
    v.check_rank("depths", depths, (4,), "(B, R, S, 1)")
    expected = tuple(colors.shape[:3]) + (1,)
    for name, tensor in (("densities", densities), ("depths", depths)):
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"{name} must have shape (B, R, S, 1) = {expected} to match colors "
                f"{tuple(colors.shape)}, got {tuple(tensor.shape)}"
            )
    if colors.shape[2] == 0:
        raise ValueError(
            f"colors must hold at least one sample per ray (S > 0), got {tuple(colors.shape)}"
        )
    if colors.shape[3] == 0:
        raise ValueError(
            f"colors must hold at least one channel (C > 0), got {tuple(colors.shape)}"
        )
    v.check_float("colors", colors)
    v.check_float("densities", densities)
    v.check_float("depths", depths)
    v.check_same_device(("colors", "densities"), colors, densities)
    v.check_same_device(("colors", "depths"), colors, depths)
    v.check_same_dtype(("colors", "densities"), colors, densities)
    v.check_same_dtype(("colors", "depths"), colors, depths)
    _check_flag("white_back", white_back)
    _check_flag("scale_rgb", scale_rgb)


def depth_range_of(depths: torch.Tensor) -> torch.Tensor:
    """``(2,)`` tensor ``[min(depths), max(depths)]`` in the accumulation dtype (zeros if empty).

    MipRayMarcher2 clamps the composite depth to the range of *all* the depths it was given,
    across rays and batch elements, so the kernels get that range precomputed.
    """
    dtype = accumulation_dtype(depths.dtype)
    if depths.numel() == 0:
        return torch.zeros(2, dtype=dtype, device=depths.device)
    low, high = torch.aminmax(depths.detach())
    return torch.stack((low, high)).to(dtype)


def ray_march(
    colors: torch.Tensor,
    densities: torch.Tensor,
    depths: torch.Tensor,
    *,
    white_back: bool = False,
    scale_rgb: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Composite colours along rays by volume rendering (EG3D's ``MipRayMarcher2``).

    Args:
        colors: ``(B, R, S, C)`` features of S samples along each of R rays.
        densities: ``(B, R, S, 1)`` raw densities (before the softplus).
        depths: ``(B, R, S, 1)`` sample depths along each ray, in increasing order. Same dtype
            and device for all three.
        white_back: add ``1 - Σ w`` to every channel (a white background).
        scale_rgb: map the composite to ``rgb * 2 - 1`` (EG3D); ``False`` returns the raw
            composite (3DPortraitGAN's variant).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``; ``None`` uses the
            backend in force (:func:`portrait_engine.use_backend`).

    Returns:
        ``(rgb (B, R, C), depth (B, R, 1), weights (B, R, S-1, 1))``. Over the S - 1 intervals,
        with midpoint values ``c_i``, ``σ̃_i``, ``z_i`` and ``δ_i = z[i+1] - z[i]``:
        ``α_i = 1 - exp(-softplus(σ̃_i - 1) δ_i)``, ``w_i = α_i ∏_{j<i} (1 - α_j + 1e-10)``,
        ``rgb = Σ w_i c_i``, ``depth = Σ w_i z_i / Σ w_i`` (NaN -> +inf, then clamped to
        ``[min(depths), max(depths)]`` over the whole tensor, so a ray with no weight gets the
        largest depth). fp16 / bf16 accumulate in fp32. Gradients flow to ``colors`` and
        ``densities`` (through all three outputs); ``depths`` gets none on the kernel backends
        (EG3D's depths come from ``linspace`` and importance sampling, never learned).
    """
    _validate_march(colors, densities, depths, white_back, scale_rgb)
    name = _backend.resolve(backend, colors.device, "ray_march_forward")
    if name == "native" and colors.is_cuda and colors.shape[3] > CUDA_MAX_CHANNELS:
        # the CUDA kernel keeps a ray's channels in the registers of one warp
        if (get_backend() if backend is None else backend) == "native":
            raise ValueError(
                f"colors has {colors.shape[3]} channels; the native CUDA ray_march takes at "
                f"most {CUDA_MAX_CHANNELS}: use backend='triton' or 'torch'"
            )
        name = "triton" if _backend.backend_status(colors.device)["triton"][0] else "torch"
        if name == "torch":
            return ray_march_reference(
                colors, densities, depths, white_back=white_back, scale_rgb=scale_rgb
            )
    if name == "torch":
        return ray_march_reference(
            colors, densities, depths, white_back=white_back, scale_rgb=scale_rgb
        )
    depth_range = depth_range_of(depths)
    if name == "triton":
        op = torch.ops.portrait_engine.ray_march_triton_forward
    else:
        op = torch.ops.portrait_engine.ray_march_forward
    rgb, depth, weights, _ = eager(op)(
        colors.contiguous(),
        densities.contiguous(),
        depths.detach().contiguous(),
        depth_range,
        white_back,
        scale_rgb,
    )
    return rgb, depth, weights


# --------------------------------------------------------------------------------------------
# ray_sample: kernel-level custom ops (contiguous inputs; no validation)
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("portrait_engine::ray_sample_triton_forward", mutates_args=())
def _sample_triton_forward(
    cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from portrait_engine.kernels import rays as kernels

    return kernels.ray_sample_forward(cam2world, intrinsics, resolution)


def _fake_sample_forward(cam2world, intrinsics, resolution):
    shape = (cam2world.shape[0], resolution * resolution, 3)
    return cam2world.new_empty(shape), cam2world.new_empty(shape)


def _ray_sample_backward(grad_origins, grad_directions, cam2world, intrinsics, resolution):
    """Closed-form gradients of ``ray_sample`` w.r.t. ``cam2world`` and ``intrinsics``.

    Plain torch ops over ``(B, M)`` elementwise terms and one reduction per batch element
    (cheap next to any consumer of the rays). With ``p = (x, y, 1)``, ``d = R p``,
    ``n = |d|``: ``∂L/∂d = (g - ô ⟨ô, g⟩) / n`` (``ô = d / n``), ``∂L/∂R = Σ_m ∂L/∂d pᵀ``,
    ``∂L/∂t = Σ_m ∂L/∂origins`` (the directions do not depend on t), and ``∂L/∂p = Rᵀ ∂L/∂d``
    chained through ``x(fx, sk, cx, fy, cy)`` and ``y(fy, cy)``.
    """
    dtype = cam2world.dtype
    compute = accumulation_dtype(dtype)
    m, k = cam2world.to(compute), intrinsics.to(compute)
    g_o, g_d = grad_origins.to(compute), grad_directions.to(compute)
    fx, sk, cx = k[:, 0, 0, None], k[:, 0, 1, None], k[:, 0, 2, None]
    fy, cy = k[:, 1, 1, None], k[:, 1, 2, None]
    steps = torch.arange(resolution, dtype=compute, device=m.device)
    centres = steps * (1.0 / resolution) + (0.5 / resolution)
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    x = (u - cx + cy * sk / fy - sk * v / fy) / fx
    y = (v - cy) / fy
    p = torch.stack((x, y, torch.ones_like(x)), dim=-1)  # (B, M, 3)
    rotation = m[:, :3, :3]
    d = p @ rotation.transpose(1, 2)
    norm = d.norm(dim=-1, keepdim=True)
    unit = d / norm.clamp_min(1e-12)
    grad_d = (g_d - unit * (unit * g_d).sum(-1, keepdim=True)) / norm.clamp_min(1e-12)
    grad_m = torch.zeros_like(m)
    grad_m[:, :3, :3] = grad_d.transpose(1, 2) @ p
    grad_m[:, :3, 3] = g_o.sum(1)
    grad_p = grad_d @ rotation  # (B, M, 3)
    gx, gy = grad_p[..., 0], grad_p[..., 1]
    grad_k = torch.zeros_like(k)
    grad_k[:, 0, 0] = (gx * (-x / fx)).sum(1)
    grad_k[:, 0, 1] = (gx * (cy - v) / (fy * fx)).sum(1)
    grad_k[:, 0, 2] = (-gx / fx).sum(1)
    grad_k[:, 1, 1] = (gx * (-sk * (cy - v) / (fy * fy * fx)) - gy * y / fy).sum(1)
    grad_k[:, 1, 2] = (gx * sk / (fy * fx) - gy / fy).sum(1)
    return grad_m.to(dtype), grad_k.to(intrinsics.dtype)


def _setup_sample_context(ctx, inputs, output):
    cam2world, intrinsics, resolution = inputs
    ctx.save_for_backward(cam2world, intrinsics)
    ctx.resolution = resolution


def _make_sample_autograd(native: bool):
    """The backward of a ray_sample forward op: the C++ kernel's (``ray_sample_backward``, one
    pass over the rays) after the native forward, the closed form in torch ops otherwise."""

    def backward(ctx, grad_origins, grad_directions):
        cam2world, intrinsics = ctx.saved_tensors
        if native:
            grad_m, grad_k = torch.ops.portrait_engine.ray_sample_backward(
                grad_origins.contiguous(),
                grad_directions.contiguous(),
                cam2world,
                intrinsics,
                ctx.resolution,
            )
        else:
            grad_m, grad_k = _ray_sample_backward(
                grad_origins, grad_directions, cam2world, intrinsics, ctx.resolution
            )
        return grad_m, grad_k, None

    return backward


def _fake_sample_backward(grad_origins, grad_directions, cam2world, intrinsics, resolution):
    return cam2world.new_empty(cam2world.shape), intrinsics.new_empty(intrinsics.shape)


for _name in ("ray_sample_triton_forward", "ray_sample_forward"):
    _native = _name == "ray_sample_forward"
    if _native and not _extension.has_op(_name):
        continue
    torch.library.register_fake(f"portrait_engine::{_name}")(_fake_sample_forward)
    torch.library.register_autograd(
        f"portrait_engine::{_name}",
        _make_sample_autograd(_native and _extension.has_op("ray_sample_backward")),
        setup_context=_setup_sample_context,
    )
if _extension.has_op("ray_sample_backward"):
    torch.library.register_fake("portrait_engine::ray_sample_backward")(_fake_sample_backward)


# --------------------------------------------------------------------------------------------
# ray_sample: the public op
# --------------------------------------------------------------------------------------------


def unpack_camera_label(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split EG3D's camera labels into ``(cam2world (B, 4, 4), intrinsics (B, 3, 3))``.

    ``label`` ``(B, 25)``: the row-major 4x4 cam2world matrix (OpenCV axes) then the row-major
    3x3 intrinsics normalised by the image size, as in EG3D's ``dataset.json``. Returns views.
    """
    v.check_tensor("label", label)
    v.check_rank("label", label, (2,), f"(B, {CAMERA_LABEL_SIZE})")
    if label.shape[1] != CAMERA_LABEL_SIZE:
        raise ValueError(
            f"label must have shape (B, {CAMERA_LABEL_SIZE}) (16 cam2world + 9 intrinsics "
            f"numbers), got {tuple(label.shape)}"
        )
    v.check_float("label", label)
    return unpack_camera_label_reference(label)


def _validate_sample(cam2world, intrinsics, resolution) -> None:
    v.check_tensor("cam2world", cam2world)
    v.check_tensor("intrinsics", intrinsics)
    if cam2world.dim() != 3 or tuple(cam2world.shape[1:]) != (4, 4):
        raise ValueError(f"cam2world must have shape (B, 4, 4), got {tuple(cam2world.shape)}")
    if intrinsics.dim() != 3 or tuple(intrinsics.shape[1:]) != (3, 3):
        raise ValueError(f"intrinsics must have shape (B, 3, 3), got {tuple(intrinsics.shape)}")
    if cam2world.shape[0] != intrinsics.shape[0]:
        raise ValueError(
            "cam2world and intrinsics must have the same batch size, got cam2world "
            f"{tuple(cam2world.shape)} and intrinsics {tuple(intrinsics.shape)}"
        )
    v.check_float("cam2world", cam2world)
    v.check_float("intrinsics", intrinsics)
    v.check_same_device(("cam2world", "intrinsics"), cam2world, intrinsics)
    v.check_same_dtype(("cam2world", "intrinsics"), cam2world, intrinsics)
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise TypeError(f"resolution must be an int, got {type(resolution).__name__}")
    if resolution <= 0:
        raise ValueError(f"resolution must be a positive int, got {resolution}")


def ray_sample(
    cam2world: torch.Tensor,
    intrinsics: torch.Tensor,
    resolution: int,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera rays through the pixel centres of a square image (EG3D's ``RaySampler``).

    Args:
        cam2world: ``(B, 4, 4)`` camera-to-world matrices, OpenCV axes (x right, y down,
            z forward).
        intrinsics: ``(B, 3, 3)`` intrinsics normalised by the image size (``fx``, ``fy``,
            ``cx``, ``cy`` in image widths; skew ``intrinsics[:, 0, 1]``). Same dtype and
            device as ``cam2world``. :func:`unpack_camera_label` gives both from EG3D labels.
        resolution: the image's side in pixels; ``resolution²`` rays, row-major (ray
            ``i * resolution + j`` goes through row i, column j).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``; ``None`` uses the
            backend in force (:func:`portrait_engine.use_backend`).

    Returns:
        ``(origins, directions)``, each ``(B, resolution², 3)``: the camera centre, and the
        unit direction ``normalize(R (x, y, 1))`` with ``x = (u - cx + cy·sk/fy - sk·v/fy) / fx``,
        ``y = (v - cy) / fy`` at the pixel centre ``u = (j + 0.5) / resolution``,
        ``v = (i + 0.5) / resolution``. Differentiable in ``cam2world`` and ``intrinsics`` on
        every backend (the kernels compute the forward; their gradient is a closed form in
        torch ops).
    """
    _validate_sample(cam2world, intrinsics, resolution)
    name = _backend.resolve(backend, cam2world.device, "ray_sample_forward")
    if name == "torch":
        return ray_sample_reference(cam2world, intrinsics, resolution)
    if name == "triton":
        op = torch.ops.portrait_engine.ray_sample_triton_forward
    else:
        op = torch.ops.portrait_engine.ray_sample_forward
    return op(cam2world.contiguous(), intrinsics.contiguous(), resolution)
