"""The RI inference network: backbone → perceptibility attention pooling → 512-d embedding,
and the RI regression head on the embedding.

``RIModel(config)(images)`` with ``images`` ``(B, 3, S, S)`` in ``[-1, 1]`` (insightface's
``(x / 255 − 0.5) / 0.5``; ``S`` = ``config.image_size``, 112 for the IResNets) returns an
:class:`RIOutput`: the unnormalised embedding ``(B, 512)``, the predicted recognizability index
``(B,)`` (the face-quality score) and the attention maps ``(B, K, h, w)``.

Paper (Chai et al., CVPR 2023, abstract): a face CNN, perceptibility attention attending to the
recognisable face regions, an embedding, an RI regressor trained end to end. Ours (the layer
design was not at hand, see ``docs/ri_paper_notes.md``): the attention is
:class:`portrait_engine.nn.AttentionPool` on the backbone's last map (softmax over positions,
K maps, then Linear + BatchNorm1d to the embedding), the RI regressor CR-FIQA's dropout + linear
layer on the embedding. The model also keeps the UI centre and the UI RI level as buffers
(updated by training, see :mod:`portrait_engine.models.recognizability.ri`), so a checkpoint
carries everything RI needs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from portrait_engine.models.recognizability.backbones import build_backbone
from portrait_engine.models.recognizability.heads import RIRegressionHead
from portrait_engine.nn import AttentionPool


@dataclass
class RIConfig:
    """Architecture of :class:`RIModel` (saved as ``config.json`` in every checkpoint)."""

    backbone: str = "iresnet50"
    image_size: int = 112
    embedding_dim: int = 512
    num_maps: int = 1
    attention_reduction: int = 8
    ri_dropout: float = 0.0
    backend: str | None = None

    @classmethod
    def from_dict(cls, values: dict) -> RIConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown RIConfig fields {sorted(unknown)}")
        return cls(**values)


@dataclass
class RIOutput:
    """``embedding`` ``(B, D)`` unnormalised; ``ri`` ``(B,)`` predicted RI; ``attention``
    ``(B, K, h, w)`` the softmax attention maps."""

    embedding: torch.Tensor
    ri: torch.Tensor
    attention: torch.Tensor


class RIModel(nn.Module):
    """The RI face network (see the module docstring)."""

    def __init__(self, config: RIConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or RIConfig()
        self.backbone = build_backbone(config.backbone, input_size=config.image_size)
        self.pool = AttentionPool(
            self.backbone.out_channels,
            num_maps=config.num_maps,
            reduction=config.attention_reduction,
            embedding_dim=config.embedding_dim,
            backend=config.backend,
        )
        self.ri_head = RIRegressionHead(config.embedding_dim, dropout=config.ri_dropout)
        self.register_buffer("ui_centre", torch.zeros(config.embedding_dim))
        self.register_buffer("ui_centre_initialised", torch.tensor(False))
        self.register_buffer("ui_level", torch.tensor(0.0))

    def forward(self, images: torch.Tensor) -> RIOutput:
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(
                f"images must have shape (B, 3, {size}, {size}), got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise TypeError(
                f"images must be a floating-point tensor in [-1, 1], got {images.dtype}"
            )
        features = self.backbone.forward_features(images)
        embedding, attention = self.pool(features)
        return RIOutput(embedding, self.ri_head(embedding), attention)


MODEL_WEIGHTS = "model.safetensors"
CONFIG_FILE = "config.json"
LATEST_FILE = "latest"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself or from a training output directory (its
    ``latest`` pointer)."""
    path = Path(path)
    if (path / LATEST_FILE).is_file():
        path = path / (path / LATEST_FILE).read_text().strip()
    if not (path / MODEL_WEIGHTS).is_file() or not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not an RI checkpoint: it needs {MODEL_WEIGHTS} and {CONFIG_FILE} (or a "
            f"{LATEST_FILE} file naming such a directory)"
        )
    return path


def load_for_inference(path: str | Path, map_location: str | torch.device = "cpu") -> RIModel:
    """The :class:`RIModel` of a checkpoint written by training, in eval mode.

    ``path``: a checkpoint directory or the training output directory (its latest checkpoint).
    """
    from safetensors.torch import load_file

    path = resolve_checkpoint(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    model = RIModel(RIConfig.from_dict(config["model"]))
    device = torch.device(map_location)
    state = load_file(str(path / MODEL_WEIGHTS), device=str(device))
    model.load_state_dict(state)
    return model.to(device).eval()
