"""Benchmark cases of the OSG decoder's element-wise stages: ``softplus`` (the hidden
activation) and ``decoder_outputs`` (the output head: raw density, widened-sigmoid colours).

Sizes are the decoder's activations in EG3D's renderer: every sample of a pass, 64 hidden
units (softplus) and 1 + 32 outputs (the head); paper size is B = 4, 128² rays, 48 samples
(3.1M rows), quick is the renderer's quick case (256 rays, 48 samples: 12288 rows).
"""

from __future__ import annotations

import functools

import torch

from portrait_engine.benchmark.cases.base import Case
from portrait_engine.ops.activation import decoder_outputs, softplus
from portrait_engine.ops.reference import decoder_outputs_reference, softplus_reference


def _size_of(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@functools.cache
def _compiled(function):
    return torch.compile(function, dynamic=False)


def _softplus_case(name: str, rows: int, hidden: int = 64) -> Case:
    def make_inputs(device, dtype, generator):
        # pre-activations of a first layer: mostly within a few units of 0
        x = 3 * torch.randn(rows, hidden, generator=generator)
        return [x.to(device=device, dtype=dtype)], {}

    def bytes_moved(dtype: torch.dtype, with_backward: bool) -> int:
        forward = 2 * rows * hidden * _size_of(dtype)  # read x, write y
        return forward + (3 * rows * hidden * _size_of(dtype) if with_backward else 0)

    return Case(
        op="softplus",
        shape=name,
        params=dict(rows=rows, hidden=hidden),
        make_inputs=make_inputs,
        functions={
            "torch": softplus_reference,
            "torch_compile": lambda x: _compiled(softplus_reference)(x),
            "triton": lambda x: softplus(x, backend="triton"),
            "native": lambda x: softplus(x, backend="native"),
        },
        bytes_moved=bytes_moved,
        description=f"softplus of ({rows}, {hidden}) pre-activations",
        native_op="softplus_forward",
    )


def _head_as_one(function):
    # the harness times one output tensor: the two outputs side by side again
    return lambda x: torch.cat(function(x), dim=-1)


def _head_case(name: str, rows: int, outputs: int = 32) -> Case:
    width = 1 + outputs

    def make_inputs(device, dtype, generator):
        x = 2 * torch.randn(rows, width, generator=generator)
        return [x.to(device=device, dtype=dtype)], {}

    def bytes_moved(dtype: torch.dtype, with_backward: bool) -> int:
        forward = 2 * rows * width * _size_of(dtype)
        return forward + (3 * rows * width * _size_of(dtype) if with_backward else 0)

    reference = _head_as_one(decoder_outputs_reference)
    return Case(
        op="decoder_outputs",
        shape=name,
        params=dict(rows=rows, outputs=outputs),
        make_inputs=make_inputs,
        functions={
            "torch": reference,
            "torch_compile": lambda x: _compiled(reference)(x),
            "triton": _head_as_one(lambda x: decoder_outputs(x, backend="triton")),
            "native": _head_as_one(lambda x: decoder_outputs(x, backend="native")),
        },
        bytes_moved=bytes_moved,
        description=f"OSG decoder output head of ({rows}, 1 + {outputs}) rows",
        native_op="decoder_outputs_forward",
    )


def softplus_cases(quick: bool) -> list[Case]:
    if quick:
        return [_softplus_case("quick-renderer", 256 * 48)]
    return [_softplus_case("eg3d-b4-128x128-s48", 4 * 128 * 128 * 48)]


def decoder_outputs_cases(quick: bool) -> list[Case]:
    if quick:
        return [_head_case("quick-renderer", 256 * 48)]
    return [_head_case("eg3d-b4-128x128-s48", 4 * 128 * 128 * 48)]
