"""3DPortraitGAN's pose-aware dual discriminator, with its pose branch and the blur fade-in.

Published (StyleGAN2-ADA ``DiscriminatorBlock``/``DiscriminatorEpilogue``, EG3D
``DualDiscriminator``, PanoHead's mask channel, 3DPortraitGAN
``PoseShapeAwareDualDiscriminator``):

- input: the final image ``(N, 3, R, R)``, the raw neural rendering ``(N, 3, r, r)`` and the
  mask ``(N, 1, r, r)`` (generated: accumulated weights; real: the dataset mask), the raw
  image and mask resized to R with antialiased bilinear interpolation (``filtered_resizing``,
  ``filter_mode="antialiased"``), the mask mapped to ``2 m - 1``; concatenated to 7 channels;
- residual blocks R -> 8 (``fromrgb`` 1 x 1 at the first, 3 x 3 conv, 3 x 3 conv down 2, 1 x 1
  skip down 2 without bias, both paths times ``sqrt(0.5)``), channels
  ``min(channel_base // r, channel_max)``;
- epilogue at 4 x 4: minibatch standard deviation (group 4, 1 channel), 3 x 3 conv, flatten
  (= the pose branch's input, ``C4 * 16``), FC ``C4 * 16 -> C4`` lrelu, FC ``C4 -> cmap_dim``;
- projection conditioning: ``cmap = mapping(c')`` with ``c' = cat[camera, pose]`` (31 numbers;
  pose = the given true pose, else the discriminator's own prediction, detached), optional
  noise ``c' += randn * std_batch(c') * disc_c_noise``; logit ``= sum(x * cmap) / sqrt(cmap_dim)``;
- pose branch with ``explicitly_symmetry``: images of left-side cameras are mirrored before
  the (separate) backbone pass that feeds the pose branch, the prediction mirrored back. The
  published code gives the branch the *unmirrored* camera label there; we do the same.
- blur fade-in (EG3D ``StyleGAN2Loss.run_D``): before the discriminator the final image (only
  it) is filtered with ``f(t) = 2^(-(t / sigma)^2)``, ``|t| <= floor(3 sigma)``, normalised;
  ``sigma = max(1 - nimg / (fade_kimg * 1000), 0) * init_sigma`` (10 and 200 kimg published);
- real images (:func:`real_inputs`, EG3D ``accumulate_gradients`` / 3DPortraitGAN
  ``get_pose_params``): uint8 images to ``x / 127.5 - 1``, masks to ``m / 255``; the raw
  target is the image resized to the neural-rendering resolution (``filtered_resizing``) and,
  with ``blur_raw_target`` (on in EG3D), blurred with the same sigma; the mask is resized too.

Our choices: fp16 blocks are not modelled (autocast belongs to training); ``conv_clamp`` as
published (256).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from portrait_engine.data.portrait.labels import is_left_camera, mirror_pose
from portrait_engine.models.portrait_gan.layers import Conv2dLayer, FullyConnectedLayer
from portrait_engine.models.portrait_gan.mapping import MappingNetwork
from portrait_engine.models.portrait_gan.pose_branch import DiscriminatorPoseBranch
from portrait_engine.models.portrait_gan.resample import filter2d
from portrait_engine.models.portrait_gan.synthesis import channels_at


def filtered_resizing(image: torch.Tensor, size: int) -> torch.Tensor:
    """EG3D's ``filtered_resizing`` (``antialiased`` mode): bilinear, antialiased resize."""
    return F.interpolate(
        image, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


def blur_sigma_at(cur_nimg: float, init_sigma: float = 10.0, fade_kimg: float = 200.0) -> float:
    """The blur fade-in schedule: ``max(1 - nimg / (fade_kimg * 1e3), 0) * init_sigma``."""
    if fade_kimg <= 0:
        return 0.0
    return max(1.0 - cur_nimg / (fade_kimg * 1e3), 0.0) * init_sigma


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``(N, C, H, W)`` images with the separable filter ``2^(-(t/sigma)^2)`` of
    half-width ``floor(3 sigma)`` (identity when that is 0)."""
    half = math.floor(sigma * 3)
    if half <= 0:
        return images
    t = torch.arange(-half, half + 1, device=images.device, dtype=torch.float32)
    f = t.div(sigma).square().neg().exp2()
    f = f / f.sum()
    return filter2d(images, f.ger(f))


def real_inputs(
    image: torch.Tensor,
    mask: torch.Tensor,
    raw_resolution: int,
    blur_sigma: float = 0.0,
    blur_raw_target: bool = True,
) -> dict[str, torch.Tensor]:
    """The discriminator's inputs for real data: ``image`` ``(N, 3, R, R)`` and ``mask``
    ``(N, 1, R, R)``, uint8 (scaled to [-1, 1] and [0, 1]) or already float, ->
    ``{"image", "image_raw" (N, 3, r, r), "image_mask" (N, 1, r, r)}`` with r =
    ``raw_resolution``."""
    if image.ndim != 4 or mask.ndim != 4 or image.shape[0] != mask.shape[0]:
        raise ValueError(
            f"image and mask must be (N, C, H, W) with one batch size, got "
            f"{tuple(image.shape)} and {tuple(mask.shape)}"
        )
    if image.dtype == torch.uint8:
        image = image.to(torch.float32) / 127.5 - 1
    if mask.dtype == torch.uint8:
        mask = mask.to(torch.float32) / 255
    raw = filtered_resizing(image, raw_resolution)
    if blur_raw_target:
        raw = blur(raw, blur_sigma)
    return {
        "image": image,
        "image_raw": raw,
        "image_mask": filtered_resizing(mask.to(image.dtype), raw_resolution),
    }


class MinibatchStdLayer(nn.Module):
    """Append the group-wise standard deviation (averaged over channels and pixels) as
    ``num_channels`` extra feature maps. The batch must be divisible by the group size (or
    smaller than it)."""

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g:
            raise ValueError(f"minibatch-std: batch {n} is not divisible by the group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual discriminator block: ``(N, in, R, R)`` (+ image at the first block) ->
    ``(N, out, R/2, R/2)``."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(
                img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp
            )
        self.conv0 = Conv2dLayer(
            tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp
        )
        self.conv1 = Conv2dLayer(
            tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp
        )
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None) -> torch.Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x


class DiscriminatorEpilogue(nn.Module):
    """The 4 x 4 head, split as in 3DPortraitGAN: :meth:`features` (mbstd + conv + flatten,
    ``(N, C * 16)``, shared with the pose branch) and :meth:`head` (FC, FC, projection)."""

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int = 4,
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.mbstd = (
            MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
            if mbstd_num_channels > 0
            else None
        )
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels,
            in_channels,
            3,
            activation="lrelu",
            conv_clamp=conv_clamp,
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    @property
    def flat_features(self) -> int:
        return self.in_channels * self.resolution**2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.mbstd is not None:
            x = self.mbstd(x)
        return self.conv(x).flatten(1)

    def head(self, flat: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
        x = self.out(self.fc(flat))
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


IMAGE_KEYS = ("image", "image_raw", "image_mask")


class PoseAwareDualDiscriminator(nn.Module):
    """``forward(images, camera, pose=None, blur_sigma=0)`` -> ``(logits (N, 1), pose (N, 6))``.

    ``images``: a dict with ``"image"`` ``(N, 3, R, R)``, ``"image_raw"`` ``(N, 3, r, r)`` and
    ``"image_mask"`` ``(N, mask_channels, r', r')`` in [0, 1]; ``camera`` ``(N, 25)``; ``pose``
    the true ``(N, 6)`` pose to condition on (None: the predicted pose, detached).
    """

    def __init__(
        self,
        img_resolution: int,
        camera_dim: int = 25,
        pose_dim: int = 6,
        img_channels: int = 3,
        mask_channels: int = 1,
        channel_base: int = 32768,
        channel_max: int = 512,
        cmap_dim: int | None = None,
        mapping_layers: int = 8,
        conv_clamp: float | None = 256,
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,
        disc_c_noise: float = 0.0,
        pose_hidden: tuple[int, ...] = (2048, 512, 128, 32),
        explicitly_symmetry: bool = True,
    ) -> None:
        super().__init__()
        if img_resolution < 8 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        self.img_resolution = img_resolution
        self.camera_dim = camera_dim
        self.pose_dim = pose_dim
        self.img_channels = img_channels
        self.mask_channels = mask_channels
        self.disc_c_noise = disc_c_noise
        self.explicitly_symmetry = explicitly_symmetry
        log2 = img_resolution.bit_length() - 1
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        in_img = 2 * img_channels + mask_channels
        for res in self.block_resolutions:
            tmp = channels_at(res, channel_base, channel_max)
            block = DiscriminatorBlock(
                tmp if res < img_resolution else 0,
                tmp,
                channels_at(res // 2, channel_base, channel_max),
                resolution=res,
                img_channels=in_img,
                conv_clamp=conv_clamp,
            )
            setattr(self, f"b{res}", block)
        c4 = channels_at(4, channel_base, channel_max)
        cmap_dim = c4 if cmap_dim is None else cmap_dim
        self.cmap_dim = cmap_dim
        self.mapping = MappingNetwork(
            z_dim=0,
            c_dim=camera_dim + pose_dim,
            w_dim=cmap_dim,
            num_ws=None,
            w_avg_beta=None,
            num_layers=mapping_layers,
        )
        self.b4 = DiscriminatorEpilogue(
            c4,
            cmap_dim=cmap_dim,
            mbstd_group_size=mbstd_group_size,
            mbstd_num_channels=mbstd_num_channels,
            conv_clamp=conv_clamp,
        )
        self.pose_branch = DiscriminatorPoseBranch(
            self.b4.flat_features, camera_dim, pose_hidden, pose_dim
        )

    @classmethod
    def from_config(cls, config) -> PoseAwareDualDiscriminator:
        return cls(
            config.img_resolution,
            camera_dim=config.camera_dim,
            pose_dim=config.pose_dim,
            mask_channels=config.mask_channels,
            channel_base=config.disc_channel_base,
            channel_max=config.disc_channel_max,
            mapping_layers=config.disc_mapping_layers,
            conv_clamp=config.disc_conv_clamp,
            mbstd_group_size=config.mbstd_group_size,
            mbstd_num_channels=config.mbstd_num_channels,
            disc_c_noise=config.disc_c_noise,
            pose_hidden=config.d_pose_hidden,
            explicitly_symmetry=config.explicitly_symmetry,
        )

    def _validate(self, images: dict, camera: torch.Tensor) -> int:
        if not isinstance(images, dict) or any(k not in images for k in IMAGE_KEYS):
            got = sorted(images) if isinstance(images, dict) else type(images).__name__
            raise ValueError(f"images must be a dict with keys {IMAGE_KEYS}, got {got}")
        image = images["image"]
        r = self.img_resolution
        n = image.shape[0]
        expected = {
            "image": self.img_channels,
            "image_raw": self.img_channels,
            "image_mask": self.mask_channels,
        }
        for key, channels in expected.items():
            t = images[key]
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"images[{key!r}] must be a floating-point tensor")
            if t.ndim != 4 or t.shape[0] != n or t.shape[1] != channels:
                raise ValueError(
                    f"images[{key!r}] must have shape ({n}, {channels}, H, W), got {tuple(t.shape)}"
                )
            if t.device != image.device:
                raise ValueError(
                    f"images[{key!r}] is on {t.device}, images['image'] on {image.device}"
                )
        if image.shape[-2:] != (r, r):
            raise ValueError(f"images['image'] must be {r} x {r}, got {tuple(image.shape[-2:])}")
        if camera.ndim != 2 or camera.shape != (n, self.camera_dim):
            raise ValueError(
                f"camera must have shape ({n}, {self.camera_dim}), got {tuple(camera.shape)}"
            )
        return n

    def _input(self, images: dict) -> torch.Tensor:
        r = self.img_resolution
        raw = filtered_resizing(images["image_raw"], r)
        mask = filtered_resizing(images["image_mask"], r) * 2 - 1
        return torch.cat(
            [images["image"], raw.to(images["image"].dtype), mask.to(images["image"].dtype)], dim=1
        )

    def _backbone(self, img: torch.Tensor) -> torch.Tensor:
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        return self.b4.features(x)

    def predict_pose(self, images: dict, camera: torch.Tensor, blur_sigma: float = 0.0):
        """The pose branch alone: ``(pose (N, 6), flat features (N, C4 * 16))``."""
        self._validate(images, camera)
        images = self._blurred(images, blur_sigma)
        if not self.explicitly_symmetry:
            flat = self._backbone(self._input(images))
            return self.pose_branch(flat, camera), flat
        left = is_left_camera(camera)
        left_img = left.reshape(-1, 1, 1, 1)
        mirrored = {k: torch.where(left_img, images[k].flip(3), images[k]) for k in IMAGE_KEYS}
        flat = self._backbone(self._input(mirrored))
        pose = self.pose_branch(flat, camera)
        return torch.where(left, mirror_pose(pose), pose), flat

    @staticmethod
    def _blurred(images: dict, blur_sigma: float) -> dict:
        if blur_sigma > 0:
            images = dict(images, image=blur(images["image"], blur_sigma))
        return images

    def forward(
        self,
        images: dict,
        camera: torch.Tensor,
        pose: torch.Tensor | None = None,
        blur_sigma: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = self._validate(images, camera)
        if pose is not None and (pose.ndim != 2 or pose.shape != (n, self.pose_dim)):
            raise ValueError(
                f"pose must have shape ({n}, {self.pose_dim}), got {tuple(pose.shape)}"
            )
        images = self._blurred(images, blur_sigma)
        predicted, flat = self.predict_pose(images, camera)
        if self.explicitly_symmetry:
            flat = self._backbone(self._input(images))
        label_pose = pose if pose is not None else predicted.detach()
        c = torch.cat([camera, label_pose.to(camera.dtype)], dim=1)
        if self.disc_c_noise > 0 and n > 1:  # [ours] batch of 1: no std, no noise (not NaN)
            c = c + torch.randn_like(c) * c.std(0) * self.disc_c_noise
        cmap = self.mapping(None, c)
        return self.b4.head(flat, cmap), predicted
