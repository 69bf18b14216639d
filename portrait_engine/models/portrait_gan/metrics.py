"""Training-time pose metrics of 3DPortraitGAN's two pose branches against true poses.

3DPortraitGAN learns the body pose itself: the discriminator's pose branch predicts the pose of
an image (trained on generated images, whose pose is known; used on real images to estimate
theirs), and the generator's pose branch maps a latent and a camera to the pose the portrait is
rendered at (pulled toward the dataset's coarse poses early on, then shaped by the adversarial
loss: its outputs should follow the dataset's pose distribution at that camera, not one
image's pose). On the synthetic set the true poses are known, so both can be scored.
"""

from __future__ import annotations

import torch

__all__ = ["pose_errors"]


@torch.no_grad()
def pose_errors(
    generator,
    discriminator,
    dataset,
    *,
    num_samples: int = 64,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Pose errors in radians (mean absolute error over the 6 axis-angle numbers).

    The first ``num_samples`` items of a random order of ``dataset`` (drawn from ``seed``) are
    scored; ``dataset`` items carry ``image``, ``camera``, ``pose`` (and ``mask``).

    - ``pose/d_error``: the discriminator's pose branch on the real images against their true
      poses (3DPortraitGAN's pose estimate of real data);
    - ``pose/g_error``: the generator's pose branch for a random latent at each item's camera,
      against that item's true pose. Since the branch should produce a *distribution* of
      poses, this cannot reach 0: its floor is the spread of the dataset's poses;
    - ``pose/g_distribution_error``: the distance between the distribution of the generator's
      predicted poses and the true poses over the same cameras: per pose number, ``|mean_G -
      mean_data| + |std_G - std_data|``, averaged over the 6 numbers (0 when the first two
      moments match);
    - ``pose/data_spread``: ``mean |p - mean(p)|`` of the true poses (reference floor of
      ``pose/g_error``).
    """
    from portrait_engine.models.portrait_gan.discriminator import filtered_resizing, real_inputs

    if num_samples < 1 or batch_size < 1:
        raise ValueError(
            f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}"
        )
    device = torch.device(device)
    count = min(num_samples, len(dataset))
    rng = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=rng)[:count].tolist()
    resolution = discriminator.img_resolution
    raw_resolution = generator.neural_rendering_resolution
    d_pred, g_pred, truth = [], [], []
    was_training = discriminator.training
    discriminator.eval()
    try:
        for start in range(0, count, batch_size):
            items = [dataset[i] for i in order[start : start + batch_size]]
            real = len(items)
            items = items + [items[-1]] * (batch_size - real)  # minibatch-std needs full groups
            image = torch.stack([it["image"] for it in items]).to(device).float() / 127.5 - 1
            if "mask" in items[0]:
                mask = torch.stack([it["mask"] for it in items]).to(device).float() / 255
            else:
                mask = torch.ones_like(image[:, :1])
            if image.shape[-1] != resolution:
                image = filtered_resizing(image, resolution)
                mask = filtered_resizing(mask, resolution)
            camera = torch.stack([torch.as_tensor(it["camera"]) for it in items]).float()
            camera = camera.to(device)
            pose = torch.stack([torch.as_tensor(it["pose"]) for it in items]).float()
            predicted, _ = discriminator.predict_pose(
                real_inputs(image, mask, raw_resolution), camera
            )
            z = torch.randn(batch_size, generator.config.z_dim, generator=rng).to(device)
            d_pred.append(predicted[:real].float().cpu())
            g_pred.append(generator.get_pose(z, camera)[:real].float().cpu())
            truth.append(pose[:real])
    finally:
        discriminator.train(was_training)
    d_pred, g_pred, truth = torch.cat(d_pred), torch.cat(g_pred), torch.cat(truth)
    std = (lambda x: x.std(0, unbiased=False)) if count > 1 else (lambda x: torch.zeros(6))
    distribution = (g_pred.mean(0) - truth.mean(0)).abs() + (std(g_pred) - std(truth)).abs()
    return {
        "pose/d_error": float((d_pred - truth).abs().mean()),
        "pose/g_error": float((g_pred - truth).abs().mean()),
        "pose/g_distribution_error": float(distribution.mean()),
        "pose/data_spread": float((truth - truth.mean(0)).abs().mean()),
    }
