"""Face backbones: insightface's IResNet-18/34/50/100 and a small CPU network.

IResNet (Deng et al., ArcFace; Duta et al., "Improved Residual Networks") follows the layout of
insightface's ``recognition/arcface_torch/backbones/iresnet.py`` so that its published weights
load *by parameter name*: a 3 × 3 stem (``conv1``, ``bn1``, ``prelu``), four stages
``layer1..layer4`` of pre-activation blocks ``IBasicBlock`` (``bn1 → conv1 → bn2 → prelu →
conv2(stride) → bn3`` plus ``downsample.{0,1}`` = 1 × 1 strided conv + BN on the shortcut),
``bn2`` on the last map, then ``dropout → fc → features`` (BatchNorm1d with a frozen weight of
one). Every stage halves the resolution, so a 112 × 112 face gives a ``512 × 7 × 7`` map.

RI pools that map with perceptibility attention instead of flattening it (see
:mod:`portrait_engine.models.recognizability.model`), so the RI model calls
:meth:`IResNet.forward_features`; ``fc`` and ``features`` are built only with
``include_head=True`` (the plain insightface embedding network), and
:func:`load_insightface_weights` loads the convolutional trunk of a published checkpoint into
either form, reporting the keys it skipped.

``TinyBackbone`` is ours: the same block, fewer and narrower stages, for the CPU ``tiny``
preset (a 64 × 64 face gives a ``128 × 4 × 4`` map).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

IRESNET_LAYERS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """insightface's pre-activation residual block; the stride sits on the second conv."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


def _make_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes, eps=1e-05),
        )
    layers = [IBasicBlock(inplanes, planes, stride, downsample)]
    layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _init_weights(module: nn.Module) -> None:
    # insightface: conv weights N(0, 0.1), BN weight 1 and bias 0.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, 0.1)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class IResNet(nn.Module):
    """insightface's IResNet.

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 14, 3)`` for IResNet-50.
        widths: channels per stage (insightface: 64, 128, 256, 512).
        input_size: the face size the ``fc`` layer is built for (112 → 7 × 7 map).
        include_head: build ``dropout → fc → features`` (insightface's flatten embedding).
        num_features: embedding size of that head.
        dropout: dropout probability before ``fc``.

    ``forward_features(x)``: ``(B, 3, S, S)`` → ``(B, widths[-1], S/16, S/16)`` after ``bn2``;
    ``forward(x)``: the insightface embedding ``(B, num_features)`` (needs the head).
    """

    def __init__(
        self,
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        input_size: int = 112,
        include_head: bool = False,
        num_features: int = 512,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"layers and widths need 4 stages, got {layers} and {widths}")
        if input_size % 16 != 0:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        self.input_size = input_size
        self.out_channels = widths[-1]
        self.feature_size = input_size // 16
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-05)
        self.prelu = nn.PReLU(widths[0])
        inplanes = widths[0]
        for index, (planes, blocks) in enumerate(zip(widths, layers, strict=True), start=1):
            setattr(self, f"layer{index}", _make_stage(inplanes, planes, blocks, stride=2))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(widths[-1], eps=1e-05)
        self.include_head = include_head
        if include_head:
            self.dropout = nn.Dropout(p=dropout)
            self.fc = nn.Linear(widths[-1] * self.feature_size**2, num_features)
            self.features = nn.BatchNorm1d(num_features, eps=1e-05)
            nn.init.constant_(self.features.weight, 1.0)
            self.features.weight.requires_grad = False
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.bn2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.include_head:
            raise RuntimeError("this IResNet has no embedding head; use forward_features")
        x = self.dropout(torch.flatten(self.forward_features(x), 1))
        return self.features(self.fc(x))


class TinyBackbone(nn.Module):
    """A small network of ``IBasicBlock`` stages for CPU training (ours, not the paper's).

    A stride-2 stem then three stride-2 stages: ``(B, 3, S, S)`` →
    ``(B, widths[-1], S/16, S/16)``.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1),
        input_size: int = 64,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) + 1:
            raise ValueError(f"widths needs one more entry than blocks, got {widths}, {blocks}")
        if input_size % 16 != 0:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        self.input_size = input_size
        self.out_channels = widths[-1]
        self.feature_size = input_size // 2 ** (len(blocks) + 1)
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-05)
        self.prelu = nn.PReLU(widths[0])
        self.stages = nn.Sequential(
            *(
                _make_stage(widths[i], widths[i + 1], blocks[i], stride=2)
                for i in range(len(blocks))
            )
        )
        self.bn2 = nn.BatchNorm2d(widths[-1], eps=1e-05)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.stages(self.prelu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def build_backbone(name: str, input_size: int = 112, **kwargs) -> nn.Module:
    """``"iresnet18"``, ``"iresnet34"``, ``"iresnet50"``, ``"iresnet100"`` or ``"tiny"``."""
    if name in IRESNET_LAYERS:
        return IResNet(IRESNET_LAYERS[name], input_size=input_size, **kwargs)
    if name == "tiny":
        return TinyBackbone(input_size=input_size, **kwargs)
    raise ValueError(f"backbone must be one of {[*IRESNET_LAYERS, 'tiny']}, got {name!r}")


def load_insightface_weights(
    backbone: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str = ""
) -> list[str]:
    """Load an insightface IResNet ``state_dict`` into ``backbone`` by parameter name.

    Every parameter and buffer of ``backbone`` must be present in ``state_dict`` (under
    ``prefix``) with the same shape, else ``ValueError`` names the first missing or mismatched
    key. Keys of ``state_dict`` that ``backbone`` has not (``fc.*``, ``features.*`` when the
    backbone was built without its head) are skipped and returned.
    """
    own = backbone.state_dict()
    source = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    for key, value in own.items():
        if key not in source:
            raise ValueError(f"state_dict has no {prefix}{key!r} (expected shape {value.shape})")
        if source[key].shape != value.shape:
            raise ValueError(
                f"state_dict[{prefix}{key!r}] has shape {tuple(source[key].shape)}, the backbone "
                f"expects {tuple(value.shape)}"
            )
    backbone.load_state_dict({k: source[k] for k in own})
    return sorted(prefix + k for k in source if k not in own)
