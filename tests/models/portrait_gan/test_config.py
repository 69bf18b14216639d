"""PortraitGANConfig: presets, derived sizes, JSON round trip, bad values."""

from __future__ import annotations

import json

import pytest

from portrait_engine.models.portrait_gan.config import PRESETS, PortraitGANConfig


@pytest.mark.parametrize("name", PRESETS)
def test_json_round_trip(name, tmp_path):
    config = PortraitGANConfig.preset(name)
    assert PortraitGANConfig.from_json(config.to_json()) == config
    path = tmp_path / "config.json"
    config.to_json(path)
    again = PortraitGANConfig.from_json(path)
    assert again == config
    assert isinstance(again.sr_channels, tuple)


def test_paper_preset_matches_the_published_sizes():
    config = PortraitGANConfig.preset("paper")
    assert config.backbone_channels == 288  # 3 planes x 32 channels x depth 3
    assert config.backbone_resolution == 256
    assert config.num_ws == 14
    assert config.conditioning_dim == 31
    assert config.img_resolution == 512 and config.sr_input_resolution == 128
    assert (config.depth_resolution, config.depth_resolution_importance) == (48, 48)
    assert (config.neural_rendering_resolution, config.neural_rendering_resolution_final) == (
        64,
        128,
    )


def test_overrides_and_presets_differ():
    tiny = PortraitGANConfig.preset("tiny", triplane_depth=1)
    assert tiny.triplane_depth == 1 and tiny.img_resolution == 64
    assert PortraitGANConfig.preset("small").img_resolution == 256


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"img_resolution": 100}, "img_resolution"),
        ({"backbone_resolution": 2}, "backbone_resolution"),
        ({"z_dim": 0}, "z_dim"),
        ({"pose_dim": 5}, "pose_dim"),
        ({"sr_channels": (1, 2, 3)}, "sr_channels"),
        ({"img_resolution": 512, "sr_input_resolution": 32}, "sr_input_resolution"),
        ({"sr_noise_mode": "loud"}, "sr_noise_mode"),
        ({"decoder_activation": "tanh"}, "decoder_activation"),
        ({"plane_axes": "xyz"}, "plane_axes"),
    ],
)
def test_bad_values_are_rejected(overrides, match):
    with pytest.raises(ValueError, match=match):
        PortraitGANConfig.preset("tiny", **overrides)


def test_unknown_preset_and_keys():
    with pytest.raises(ValueError, match="preset"):
        PortraitGANConfig.preset("huge")
    data = PortraitGANConfig.preset("tiny").to_dict()
    data["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        PortraitGANConfig.from_json(json.dumps(data))
    with pytest.raises(ValueError, match="JSON"):
        PortraitGANConfig.from_json("{not json")
    with pytest.raises(FileNotFoundError):
        PortraitGANConfig.from_json("/nonexistent/config.json")


def test_tiny_preset_is_a_few_megabytes():
    import torch

    from portrait_engine.models.portrait_gan import (
        GeneratorPoseBranch,
        NeuralImageHead,
        PortraitMapping,
        PoseAwareDualDiscriminator,
        TriGridSynthesis,
    )

    config = PortraitGANConfig.preset("tiny")
    with torch.device("meta"):
        nets = [
            PortraitMapping.from_config(config),
            TriGridSynthesis.from_config(config),
            GeneratorPoseBranch.from_config(config),
            NeuralImageHead(config),
            PoseAwareDualDiscriminator.from_config(config),
        ]
    params = sum(p.numel() for net in nets for p in net.parameters())
    assert params > 1e5
    assert params * 4 < 8 * 2**20, f"{params} parameters"
