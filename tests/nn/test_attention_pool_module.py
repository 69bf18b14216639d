"""nn.AttentionPool: shapes, the attention map, backends agree, gradients reach the head."""

import pytest
import torch

import portrait_engine as pe
from portrait_engine.nn import AttentionPool
from tests.helpers import relative_l2


def test_shapes_and_attention_map_sum_to_one():
    torch.manual_seed(0)
    module = AttentionPool(64, num_maps=2, embedding_dim=32).eval()
    features = torch.randn(4, 64, 7, 7)
    embedding, attention = module(features)
    assert embedding.shape == (4, 32)
    assert attention.shape == (4, 2, 7, 7)
    torch.testing.assert_close(attention.sum(dim=(2, 3)), torch.ones(4, 2))


def test_without_projection_the_embedding_is_the_pooled_features():
    torch.manual_seed(0)
    module = AttentionPool(16, num_maps=1).eval()
    features = torch.randn(2, 16, 5, 6)
    embedding, attention = module(features)
    expected = (features * attention).sum(dim=(2, 3))
    torch.testing.assert_close(embedding, expected)


@pytest.mark.parametrize(
    "backend", [b for b in ("native", "triton") if b in pe.available_backends("cpu")]
)
def test_backends_agree_and_gradients_reach_the_score_head(backend):
    torch.manual_seed(0)
    reference = AttentionPool(24, num_maps=2, embedding_dim=16, backend="torch")
    fused = AttentionPool(24, num_maps=2, embedding_dim=16, backend=backend)
    fused.load_state_dict(reference.state_dict())
    features = torch.randn(3, 24, 7, 7).to(memory_format=torch.channels_last)
    outputs = []
    for module in (reference, fused):
        module.zero_grad()
        embedding, _ = module(features)
        embedding.square().sum().backward()
        outputs.append((embedding, module.score_head[0].weight.grad.clone()))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-5, atol=1e-5)
    # Through BatchNorm's backward (train mode) rounding differences of the kernels' score
    # gradients are amplified elementwise, so the head's weight gradient is compared whole.
    assert relative_l2(outputs[1][1], outputs[0][1]) < 1e-5
    assert outputs[1][1].abs().sum() > 0


def test_bad_feature_shape_names_the_expected_channels():
    with pytest.raises(ValueError, match=r"features must have shape \(B, 8, H, W\)"):
        AttentionPool(8)(torch.randn(2, 9, 7, 7))
