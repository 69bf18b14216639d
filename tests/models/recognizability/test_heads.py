"""Margins against their published formulas, the margin softmax head, the RI regressor."""

import math

import pytest
import torch
import torch.nn.functional as F

from portrait_engine.models.recognizability.heads import (
    AdaFaceMargin,
    CombinedMargin,
    MarginSoftmaxHead,
    RIRegressionHead,
    build_margin,
)

COSINES = torch.tensor([-0.9, -0.3, 0.0, 0.4, 0.8, 0.99], dtype=torch.float64)
NORMS = torch.tensor([5.0, 10.0, 20.0, 25.0, 40.0, 80.0], dtype=torch.float64)


def test_arcface_is_cos_of_shifted_angle():
    margin = CombinedMargin(m1=1.0, m2=0.5, m3=0.0)
    expected = torch.tensor([math.cos(math.acos(c) + 0.5) for c in COSINES.tolist()])
    torch.testing.assert_close(margin(COSINES, NORMS), expected.double())


def test_arcface_gradient_is_finite_at_cos_one():
    cos = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    CombinedMargin(m2=0.5)(cos, NORMS[:2]).sum().backward()
    assert torch.isfinite(cos.grad).all()


def test_cosface_subtracts_the_margin():
    margin = CombinedMargin(m1=1.0, m2=0.0, m3=0.35)
    torch.testing.assert_close(margin(COSINES, NORMS), COSINES - 0.35)


def test_combined_margin():
    margin = CombinedMargin(m1=0.9, m2=0.2, m3=0.1)
    expected = [math.cos(0.9 * math.acos(c) + 0.2) - 0.1 for c in COSINES.tolist()]
    torch.testing.assert_close(margin(COSINES, NORMS), torch.tensor(expected).double())


def test_adaface_follows_its_formula_and_updates_statistics_only_in_training():
    margin = AdaFaceMargin(m=0.4, h=0.333, t_alpha=0.01).double()
    margin.eval()
    got = margin(COSINES, NORMS)
    expected = []
    for c, n in zip(COSINES.tolist(), NORMS.tolist(), strict=True):
        scaler = min(1.0, max(-1.0, (n - 20.0) / (100.0 + 1e-3) * 0.333))
        theta = math.acos(min(max(c, -1 + 1e-3), 1 - 1e-3))
        theta_m = min(max(theta - 0.4 * scaler, 1e-3), math.pi - 1e-3)
        expected.append(math.cos(theta_m) - (0.4 + 0.4 * scaler))
    torch.testing.assert_close(got, torch.tensor(expected).double())
    assert margin.batch_mean.item() == 20.0  # eval: untouched
    margin.train()
    margin(COSINES, NORMS)
    assert margin.batch_mean.item() == pytest.approx(0.99 * 20 + 0.01 * NORMS.mean().item())
    assert margin.batch_std.item() == pytest.approx(0.99 * 100 + 0.01 * NORMS.std().item())


def test_build_margin_defaults_and_bad_name():
    margin, scale = build_margin("arcface")
    assert scale == 64.0 and margin.m2 == 0.5
    margin, scale = build_margin("cosface", m3=0.4, scale=30)
    assert scale == 30.0 and margin.m3 == 0.4
    with pytest.raises(ValueError, match="margin must be one of"):
        build_margin("sphereface")


def test_head_loss_matches_hand_built_logits():
    torch.manual_seed(0)
    head = MarginSoftmaxHead(8, 5, margin="arcface", scale=16.0, m2=0.3, chunk_size=2).double()
    embeddings = torch.randn(4, 8, dtype=torch.float64)
    labels = torch.tensor([0, 3, 4, 3])
    out = head(embeddings, labels)
    cos = F.normalize(embeddings, dim=1) @ F.normalize(head.weight.detach(), dim=1).T
    logits = 16.0 * cos
    target = cos[torch.arange(4), labels]
    logits[torch.arange(4), labels] = 16.0 * torch.cos(torch.acos(target) + 0.3)
    expected = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.cos_target, target)
    masked = cos.clone()
    masked[torch.arange(4), labels] = -2
    torch.testing.assert_close(out.cos_negative, masked.max(dim=1).values)
    assert head.num_classes == 5


def test_head_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_classes"):
        MarginSoftmaxHead(8, 0)


def test_ri_head_shape_and_gradient():
    head = RIRegressionHead(16, dropout=0.1)
    x = torch.randn(3, 16, requires_grad=True)
    out = head(x)
    assert out.shape == (3,)
    out.sum().backward()
    assert x.grad.abs().sum() > 0
