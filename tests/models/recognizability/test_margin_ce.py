"""The class-chunked margin cross-entropy against the plain B x N form: values, gradients,
CCS/NNCCS, memory (no B x N tensor), dtypes, bad inputs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from portrait_engine.models.recognizability.heads import build_margin
from portrait_engine.models.recognizability.margin_ce import (
    _ChunkedMarginCE,
    margin_cross_entropy,
    margin_cross_entropy_unfused,
)

MARGINS = ["arcface", "cosface", "adaface", "combined"]


def _margin(name):
    if name == "combined":
        return build_margin("combined", m1=0.9, m2=0.3, m3=0.1, scale=30.0)
    margin, scale = build_margin(name, scale=30.0)
    # eval: AdaFace would otherwise move its norm statistics between the two runs compared
    return margin.eval(), scale


def _inputs(batch, classes, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    embeddings = (torch.randn(batch, dim, generator=g, dtype=torch.float64) * 3).to(dtype)
    weight = torch.randn(classes, dim, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, classes, (batch,), generator=g)
    return embeddings.requires_grad_(), weight.requires_grad_(), labels


def _run(embeddings, weight, labels, margin, scale, fused, chunk_size=None):
    out = margin_cross_entropy(
        embeddings, weight, labels, margin, scale, fused=fused, chunk_size=chunk_size
    )
    # an uneven per-sample weighting, so a wrong per-row gradient cannot cancel out
    g = torch.linspace(0.5, 1.5, out.loss.shape[0], dtype=out.loss.dtype)
    grads = torch.autograd.grad((out.loss * g).sum(), (embeddings, weight))
    return out, grads


@pytest.mark.parametrize("margin_name", MARGINS)
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
def test_fused_matches_unfused_in_float64(margin_name, chunk_size):
    margin, scale = _margin(margin_name)
    embeddings, weight, labels = _inputs(6, 7, 5, torch.float64)
    fused, fused_grads = _run(embeddings, weight, labels, margin, scale, True, chunk_size)
    plain, plain_grads = _run(embeddings, weight, labels, margin, scale, False)
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.cos_negative, plain.cos_negative, rtol=0, atol=1e-14)
    assert torch.equal(fused.negative_index, plain.negative_index)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_matches_unfused_in_float32_at_many_classes():
    margin, scale = build_margin("arcface")
    embeddings, weight, labels = _inputs(16, 1000, 64, torch.float32, seed=3)
    fused, fused_grads = _run(embeddings, weight, labels, margin, scale, True, 128)
    plain, plain_grads = _run(embeddings, weight, labels, margin, scale, False)
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-5, atol=1e-4)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("margin_name", ["arcface", "combined"])
def test_chunked_function_passes_gradcheck(margin_name):
    torch.manual_seed(0)
    unit = F.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1).requires_grad_()
    weight = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 4, 2, 2])
    norms = torch.ones(4, dtype=torch.float64)
    margin, _ = _margin(margin_name)

    def loss(u, w):
        return _ChunkedMarginCE.apply(u, w, labels, norms, margin, 8.0, 2)[0]

    assert torch.autograd.gradcheck(loss, (unit, weight))


def test_hand_computed_arcface_case():
    # x = (1, 0); prototypes w0 = (cos 30°, sin 30°) (target), w1 = (0, 2) -> cos 0.
    embeddings = torch.tensor([[2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([[math.sqrt(3), 1.0], [0.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([0])
    margin, _ = build_margin("arcface", m2=0.5)
    s = 10.0
    target = s * math.cos(math.pi / 6 + 0.5)
    expected = math.log(math.exp(target) + math.exp(0.0)) - target
    for fused in (True, False):
        out = margin_cross_entropy(embeddings, weight, labels, margin, s, fused=fused, chunk_size=1)
        assert out.loss.item() == pytest.approx(expected, rel=1e-12)
        assert out.cos_target.item() == pytest.approx(math.sqrt(3) / 2, rel=1e-12)
        assert out.cos_negative.item() == pytest.approx(0.0, abs=1e-15)
        assert out.negative_index.item() == 1


def test_one_class_has_no_negative():
    embeddings, weight, labels = _inputs(3, 1, 4, torch.float64)
    margin, scale = build_margin("cosface")
    for fused in (True, False):
        out = margin_cross_entropy(embeddings, weight, labels, margin, scale, fused=fused)
        assert torch.all(out.cos_negative == -1)
        assert torch.all(out.negative_index == -1)
        torch.testing.assert_close(out.loss, torch.zeros(3, dtype=torch.float64))


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_fused_never_materialises_batch_by_classes():
    batch, classes, dim, chunk = 32, 4096, 4, 256
    margin, scale = build_margin("arcface")
    embeddings, weight, labels = _inputs(batch, classes, dim, torch.float32)
    for fused in (True, False):
        with _LargestTensor() as probe:
            _run(embeddings, weight, labels, margin, scale, fused, chunk)
        if fused:
            # the weight and its gradient (N x D) are the largest tensors; no B x N block
            assert probe.largest <= max(classes * dim, batch * chunk)
            assert probe.largest < batch * classes
        else:
            assert probe.largest >= batch * classes  # the probe sees the plain form's logits


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_are_computed_in_float32(dtype):
    margin, scale = build_margin("arcface")
    embeddings, weight, labels = _inputs(5, 9, 8, dtype)
    out, grads = _run(embeddings, weight, labels, margin, scale, True, 4)
    ref_out, ref_grads = _run(
        embeddings.detach().float().requires_grad_(),
        weight.detach().float().requires_grad_(),
        labels,
        margin,
        scale,
        True,
        4,
    )
    assert grads[0].dtype == dtype and grads[1].dtype == dtype
    torch.testing.assert_close(out.loss.float(), ref_out.loss, rtol=2e-2, atol=2e-2)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a.float(), b, rtol=5e-2, atol=5e-2)


def test_under_bf16_autocast_the_loss_matches_float32():
    margin, scale = build_margin("arcface")
    embeddings, weight, labels = _inputs(4, 11, 8, torch.float32)
    plain = margin_cross_entropy(embeddings, weight, labels, margin, scale).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = margin_cross_entropy(embeddings, weight, labels, margin, scale, chunk_size=3)
    assert fused.loss.dtype == torch.float32
    torch.testing.assert_close(fused.loss, plain, rtol=1e-5, atol=1e-5)


def test_unfused_oracle_matches_torch_cross_entropy():
    torch.manual_seed(1)
    unit = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1)
    weight = torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([5, 0, 3])
    target = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    logits = 7.0 * unit @ F.normalize(weight, dim=1).T
    logits[torch.arange(3), labels] = target
    expected = F.cross_entropy(logits, labels, reduction="none")
    loss, _, _ = margin_cross_entropy_unfused(unit, weight, labels, target, 7.0)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize(
    "change, error, words",
    [
        (lambda e, w, y: (e[:, :3], w, y), ValueError, "weight"),
        (lambda e, w, y: (e[0], w, y), ValueError, "embeddings"),
        (lambda e, w, y: (e, w, y[:2]), ValueError, "labels"),
        (lambda e, w, y: (e, w, y + 100), ValueError, "labels must lie"),
        (lambda e, w, y: (e, w, y - 100), ValueError, "labels must lie"),
        (lambda e, w, y: (e, w, y.float()), TypeError, "labels"),
        (lambda e, w, y: (e.long(), w, y), TypeError, "embeddings"),
        (lambda e, w, y: (e[:0], w, y[:0]), ValueError, "empty"),
        (lambda e, w, y: (e, w[:0], y), ValueError, "weight"),
        (lambda e, w, y: (e, w.to("meta"), y), ValueError, "device"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, words):
    margin, scale = build_margin("arcface")
    embeddings, weight, labels = _inputs(4, 6, 5, torch.float32)
    e, w, y = change(embeddings.detach(), weight.detach(), labels)
    with pytest.raises(error, match=words):
        margin_cross_entropy(e, w, y, margin, scale)


def test_bad_chunk_size():
    margin, scale = build_margin("arcface")
    embeddings, weight, labels = _inputs(4, 6, 5, torch.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        margin_cross_entropy(embeddings, weight, labels, margin, scale, chunk_size=0)
