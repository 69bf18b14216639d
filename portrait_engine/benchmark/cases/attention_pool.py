"""Benchmark cases of attention_pool (RI's perceptibility attention pooling)."""

from __future__ import annotations

import functools

import torch

from portrait_engine.benchmark.cases.base import Case
from portrait_engine.ops.attention_pool import attention_pool
from portrait_engine.ops.reference import attention_pool_reference


@functools.cache
def _compiled_attention_pool_reference():
    return torch.compile(attention_pool_reference, dynamic=False)


def _attention_pool_as_sdpa(features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Attention pooling posed as single-query attention for ``scaled_dot_product_attention``.

    A query of ones against keys equal to the scores (head dimension 1, scale 1) gives the
    logits ``s``; the values are the features at each position: ``softmax(s) @ Fᵀ``.
    """
    batch, channels = features.shape[:2]
    maps = scores.shape[1]
    keys = scores.flatten(2).unsqueeze(-1)  # (B, K, L, 1)
    query = keys.new_ones(batch, maps, 1, 1)
    values = features.flatten(2).transpose(1, 2).unsqueeze(1).expand(-1, maps, -1, -1)
    out = torch.nn.functional.scaled_dot_product_attention(query, keys, values, scale=1.0)
    return out.squeeze(2)  # (B, K, C)


def _attention_pool_case(name: str, batch: int, channels: int, size: int, maps: int = 1) -> Case:
    positions = size * size

    def make_inputs(device, dtype, generator):
        features = torch.randn(batch, channels, size, size, generator=generator)
        scores = 4 * torch.randn(batch, maps, size, size, generator=generator)
        features = features.to(device=device, dtype=dtype)
        return [features, scores.to(device=device, dtype=dtype)], {}

    def backend_fn(backend):
        return lambda features, scores: attention_pool(features, scores, backend=backend)

    functions = {
        "torch": attention_pool_reference,
        "torch_compile": lambda f, s: _compiled_attention_pool_reference()(f, s),
        "sdpa": _attention_pool_as_sdpa,
        "triton": backend_fn("triton"),
        "native": backend_fn("native"),
    }
    feature_elems = batch * channels * positions
    score_elems = batch * maps * positions
    out_elems = batch * maps * channels

    def bytes_moved(dtype: torch.dtype, with_backward: bool) -> int:
        size_of = torch.empty((), dtype=dtype).element_size()
        forward = (feature_elems + score_elems + out_elems) * size_of
        if not with_backward:
            return forward
        # backward: read grad_out, features, scores (and out); write both input gradients
        backward = (2 * out_elems + 2 * feature_elems + 2 * score_elems) * size_of
        return forward + backward

    return Case(
        op="attention_pool",
        shape=name,
        params=dict(batch=batch, channels=channels, height=size, width=size, maps=maps),
        make_inputs=make_inputs,
        functions=functions,
        bytes_moved=bytes_moved,
        description=f"B={batch} C={channels} {size}x{size} K={maps}",
        native_op="attention_pool_forward",
    )


def attention_pool_cases(quick: bool) -> list[Case]:
    if quick:  # sized for the whole --quick suite to fit in two minutes on a 2-core CPU
        return [
            _attention_pool_case("quick-7x7", 32, 512, 7),
            _attention_pool_case("quick-14x14", 8, 512, 14),
        ]
    # face-recognition training: IResNet's last feature map at batch 512 (7x7), and a 14x14 map
    return [
        _attention_pool_case("fr-7x7", 512, 512, 7),
        _attention_pool_case("fr-14x14", 256, 512, 14),
    ]
