"""Backbones: insightface parameter names and shapes, weight loading by name, the RI model."""

import pytest
import torch

from portrait_engine.models.recognizability import RIConfig, RIModel, RIOutput
from portrait_engine.models.recognizability.backbones import (
    IResNet,
    TinyBackbone,
    build_backbone,
    load_insightface_weights,
)

# Names and shapes as insightface's arcface_torch iresnet50 state_dict holds them.
INSIGHTFACE_R50_KEYS = {
    "conv1.weight": (64, 3, 3, 3),
    "bn1.running_var": (64,),
    "prelu.weight": (64,),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.0.prelu.weight": (64,),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.bn3.bias": (64,),
    "layer1.0.downsample.0.weight": (64, 64, 1, 1),
    "layer1.0.downsample.1.running_mean": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.3.conv2.weight": (128, 128, 3, 3),
    "layer3.13.bn3.weight": (256,),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.2.conv2.weight": (512, 512, 3, 3),
    "bn2.weight": (512,),
    "fc.weight": (512, 512 * 7 * 7),
    "fc.bias": (512,),
    "features.weight": (512,),
    "features.running_mean": (512,),
}


def test_iresnet50_has_insightface_names_and_shapes():
    model = build_backbone("iresnet50", include_head=True)
    state = model.state_dict()
    for key, shape in INSIGHTFACE_R50_KEYS.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    assert "layer3.14.conv1.weight" not in state and "layer2.4.conv1.weight" not in state
    assert "layer1.1.downsample.0.weight" not in state
    assert not model.features.weight.requires_grad


@pytest.mark.parametrize("name, blocks", [("iresnet18", 8), ("iresnet34", 16), ("iresnet100", 49)])
def test_block_counts(name, blocks):
    model = build_backbone(name)
    count = sum(1 for key in model.state_dict() if key.endswith(".conv2.weight"))
    assert count == blocks


def test_iresnet_shapes():
    model = build_backbone("iresnet18", include_head=True).eval()
    x = torch.randn(2, 3, 112, 112)
    assert model.forward_features(x).shape == (2, 512, 7, 7)
    assert model(x).shape == (2, 512)
    with pytest.raises(RuntimeError, match="no embedding head"):
        build_backbone("iresnet18")(x)


def test_insightface_weights_load_by_name_into_the_headless_trunk():
    torch.manual_seed(0)
    published = build_backbone("iresnet18", include_head=True)
    for module in published.modules():  # non-default statistics, so a mix-up would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
    trunk = build_backbone("iresnet18")
    skipped = load_insightface_weights(trunk, published.state_dict())
    assert skipped and all(k.startswith(("fc.", "features.")) for k in skipped)
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(
        trunk.eval().forward_features(x), published.eval().forward_features(x)
    )
    model = RIModel(RIConfig(backbone="iresnet18"))
    load_insightface_weights(
        model.backbone,
        {"module." + k: v for k, v in published.state_dict().items()},
        prefix="module.",
    )
    torch.testing.assert_close(model.backbone.conv1.weight, published.conv1.weight)


def test_load_insightface_weights_names_missing_and_mismatched_keys():
    trunk = build_backbone("iresnet18")
    state = trunk.state_dict()
    missing = {k: v for k, v in state.items() if k != "layer2.1.conv1.weight"}
    with pytest.raises(ValueError, match="layer2.1.conv1.weight"):
        load_insightface_weights(trunk, missing)
    wrong = dict(state)
    wrong["bn2.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="bn2.weight"):
        load_insightface_weights(trunk, wrong)


def test_tiny_backbone_and_bad_sizes():
    model = TinyBackbone(input_size=64)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 128, 4, 4)
    with pytest.raises(ValueError, match="input_size"):
        TinyBackbone(input_size=60)
    with pytest.raises(ValueError, match="input_size"):
        IResNet((2, 2, 2, 2), input_size=100)
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_backbone("resnet9000")


def test_ri_model_outputs():
    torch.manual_seed(0)
    model = RIModel(RIConfig(backbone="tiny", image_size=64, num_maps=2)).eval()
    out = model(torch.rand(3, 3, 64, 64) * 2 - 1)
    assert isinstance(out, RIOutput)
    assert out.embedding.shape == (3, 512)
    assert out.ri.shape == (3,)
    assert out.attention.shape == (3, 2, 4, 4)
    torch.testing.assert_close(out.attention.sum(dim=(2, 3)), torch.ones(3, 2))


def test_ri_model_rejects_bad_images():
    model = RIModel(RIConfig(backbone="tiny", image_size=64))
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        model(torch.rand(2, 3, 112, 112))
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))


def test_ri_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown RIConfig"):
        RIConfig.from_dict({"backbone": "tiny", "depth": 3})
