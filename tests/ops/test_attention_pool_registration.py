"""attention_pool: validation, torch.library registration, torch.compile."""

from __future__ import annotations

import pytest
import torch

from portrait_engine.ops import attention_pool
from tests.ops.test_attention_pool import KERNEL_BACKENDS, make_inputs

OPS = {
    "triton": ("attention_pool_triton_forward", "attention_pool_triton_backward"),
    "native": ("attention_pool_forward", "attention_pool_backward"),
}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(backend, channels_last, requires_grad):
    forward, backward = OPS[backend]
    features, scores = make_inputs(
        channels=6, maps=2, height=3, width=4, channels_last=channels_last
    )
    flat_features = features.flatten(2).requires_grad_(requires_grad)
    flat_scores = scores.flatten(2).requires_grad_(requires_grad)
    forward_op = getattr(torch.ops.portrait_engine, forward)
    torch.library.opcheck(forward_op, (flat_features, flat_scores))
    out, lse = forward_op(flat_features, flat_scores)
    grad = torch.randn_like(out)
    torch.library.opcheck(
        getattr(torch.ops.portrait_engine, backward),
        (grad, flat_features.detach(), flat_scores.detach(), lse, out.detach()),
    )


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    features, scores = make_inputs(maps=2, channels_last=True)

    def fn(features, scores):
        return attention_pool(features, scores, backend=backend).square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a, b = features.clone().requires_grad_(), scores.clone().requires_grad_()
    compiled(a, b).backward()
    c, d = features.clone().requires_grad_(), scores.clone().requires_grad_()
    fn(c, d).backward()
    torch.testing.assert_close(a.grad, c.grad)
    torch.testing.assert_close(b.grad, d.grad)


def bad_cases():
    features, scores = make_inputs(maps=2)
    return [
        ("features not a tensor", dict(features=1.0), TypeError, "features must be a torch.Tensor"),
        ("scores not a tensor", dict(scores=None), TypeError, "scores must be a torch.Tensor"),
        (
            "features rank 3",
            dict(features=features[0]),
            ValueError,
            r"features must have shape \(B, C, H, W\)",
        ),
        (
            "scores rank 3",
            dict(scores=scores.flatten(2)),
            ValueError,
            r"scores must have shape \(B, K, H, W\)",
        ),
        ("batch mismatch", dict(scores=scores[:1]), ValueError, "same batch size"),
        ("H x W mismatch", dict(scores=scores[..., :5]), ValueError, "same H x W"),
        (
            "no positions",
            dict(features=features[..., :0], scores=scores[..., :0]),
            ValueError,
            "at least one position",
        ),
        ("no maps", dict(scores=scores[:, :0]), ValueError, "at least one map"),
        (
            "integer features",
            dict(features=features.int()),
            TypeError,
            "features must be a floating-point",
        ),
        (
            "integer scores",
            dict(scores=scores.long()),
            TypeError,
            "scores must be a floating-point",
        ),
        ("dtype mismatch", dict(scores=scores.double()), TypeError, "same dtype"),
        ("device mismatch", dict(scores=scores.to("meta")), ValueError, "same device"),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=lambda case: case[0])
def test_bad_inputs_raise_clear_errors(case):
    _, override, error, message = case
    features, scores = make_inputs(maps=2)
    kwargs = {"features": features, "scores": scores, **override}
    with pytest.raises(error, match=message):
        attention_pool(kwargs["features"], kwargs["scores"])
