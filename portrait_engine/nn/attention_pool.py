"""``AttentionPool``: RI's perceptibility attention, pooling a feature map into an embedding.

What the RI paper (Chai et al., CVPR 2023) specifies, as far as its text was at hand: a
perceptibility attention mechanism "attends to the most recognizable face regions" and is
trained end to end with the embedding (abstract). Its layer-level design was not available to
us (see ``docs/ri_paper_notes.md``); where the paper is silent we chose, and say so here:

- [ours] the attention sits on the backbone's last feature map (IResNet: 512 × 7 × 7 at a
  112 × 112 input);
- [ours] the score maps come from a small conv head: 3 × 3 conv (C -> C / reduction), BN, ReLU,
  1 × 1 conv (-> K maps, with bias). A 3 × 3 first layer lets a position's score see its
  neighbourhood (a face part), the 1 × 1 layer keeps the head light;
- [ours] each map is normalised by a softmax over the H·W positions (weights sum to one, so the
  pooled vector stays on the scale of the features whatever the face size) and the features are
  pooled by it with :func:`portrait_engine.ops.attention_pool` (the fused kernel);
- [ours] with K > 1 maps the K pooled vectors are concatenated; an optional linear layer and
  BatchNorm1d project them to the embedding size, as insightface's IResNet output layer does.

``forward`` returns ``(embedding, attention)``: the embedding ``(B, D)`` and the attention
maps ``(B, K, H, W)`` (the softmax weights, for visualisation).
"""

from __future__ import annotations

import torch
from torch import nn

from portrait_engine.ops import attention_pool


class AttentionPool(nn.Module):
    """Perceptibility attention pooling of a ``(B, C, H, W)`` feature map.

    Args:
        channels: C, the feature map's channels.
        num_maps: K, the number of attention maps (1 in the paper's single-map reading).
        reduction: hidden channels of the score head are ``max(channels // reduction, 8)``.
        embedding_dim: if given, a linear layer + BatchNorm1d maps the ``K * C`` pooled
            features to this size; otherwise the embedding is the pooled ``K * C`` vector.
        backend: the op backend (``None``: the one in force).
    """

    def __init__(
        self,
        channels: int,
        num_maps: int = 1,
        reduction: int = 8,
        embedding_dim: int | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if channels < 1 or num_maps < 1 or reduction < 1:
            raise ValueError(
                "channels, num_maps and reduction must be positive, got "
                f"{channels}, {num_maps}, {reduction}"
            )
        hidden = max(channels // reduction, 8)
        self.channels = channels
        self.num_maps = num_maps
        self.backend = backend
        self.score_head = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_maps, kernel_size=1, bias=True),
        )
        pooled = num_maps * channels
        if embedding_dim is None:
            self.projection = nn.Identity()
            self.embedding_dim = pooled
        else:
            self.projection = nn.Sequential(
                nn.Linear(pooled, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim)
            )
            self.embedding_dim = embedding_dim

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if features.dim() != 4 or features.shape[1] != self.channels:
            raise ValueError(
                f"features must have shape (B, {self.channels}, H, W), got {tuple(features.shape)}"
            )
        scores = self.score_head(features)  # (B, K, H, W)
        pooled = attention_pool(features, scores, backend=self.backend)  # (B, K, C)
        embedding = self.projection(pooled.flatten(1))
        with torch.no_grad():
            attention = torch.softmax(scores.float().flatten(2), dim=-1).view_as(scores)
        return embedding, attention.to(scores.dtype)
