"""Every registered benchmark case is well formed (inputs and byte counts; nothing is run)."""

from __future__ import annotations

import pytest
import torch

from portrait_engine.benchmark.cases import OPS, PROVIDERS
from portrait_engine.benchmark.cases.base import MODES

CASES = [
    pytest.param(case, id=f"{op}-{case.shape}")
    for op, make_cases in OPS.items()
    for case in make_cases(True)
]


@pytest.mark.parametrize("case", CASES)
def test_quick_case_is_well_formed(case):
    assert "torch" in case.functions, "the reference is what every provider is checked against"
    assert set(case.functions) <= set(PROVIDERS)
    assert case.modes and set(case.modes) <= set(MODES)
    assert case.kind in ("op", "end-to-end")
    inputs, kwargs = case.make_inputs(torch.device("cpu"), torch.float32, torch.Generator())
    floating = [x for x in inputs if x.is_floating_point()]
    assert floating, "a case needs at least one differentiable input"
    for x in floating:
        assert x.dtype == torch.float32
        assert x.numel() <= 1 or x.std() > 0, "benchmark inputs must be random, not constant"
    input_bytes = sum(x.numel() * x.element_size() for x in inputs)
    if case.kind == "op":
        forward = case.bytes_moved(torch.float32, False)
        both = case.bytes_moved(torch.float32, True)
        # an op reads at least its inputs; the backward adds to the forward's traffic
        assert input_bytes <= forward < both
        # half-precision floats halve the floating traffic (integer inputs, if any, do not)
        assert forward / 2 <= case.bytes_moved(torch.bfloat16, False) < forward


def test_each_op_has_quick_and_full_cases():
    for op, make_cases in OPS.items():
        quick, full = make_cases(True), make_cases(False)
        assert quick and full, op
        assert {c.op for c in quick + full} == {op}
