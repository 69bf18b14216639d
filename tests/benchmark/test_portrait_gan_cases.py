"""The generator end-to-end benchmark case: well formed, and its providers agree."""

from __future__ import annotations

import pytest
import torch

from portrait_engine import _backend
from portrait_engine.benchmark.cases import OPS
from portrait_engine.benchmark.cases.portrait_gan import generator_cases
from portrait_engine.models.portrait_gan import PortraitGANConfig


def test_presets_and_modes():
    assert OPS["generator"] is not None
    quick, full = generator_cases(True), generator_cases(False)
    assert [c.shape for c in quick] == ["tiny"]
    assert [c.shape for c in full] == ["small", "paper"]
    for case in quick + full:
        assert case.kind == "end-to-end" and case.modes == ("forward",)
        assert case.bytes_moved(torch.float32, False) is None
        assert case.params["img_resolution"] == PortraitGANConfig.preset(case.shape).img_resolution


def test_quick_case_runs_and_native_agrees():
    case = generator_cases(True)[0]
    inputs, kwargs = case.make_inputs(torch.device("cpu"), torch.float32, torch.Generator())
    with torch.no_grad():
        expected = case.functions["torch"](*inputs, **kwargs)
    batch = case.params["batch"]
    assert expected.shape == (batch, 3, 64, 64) and torch.isfinite(expected).all()
    status = _backend.backend_status("cpu", case.native_op)["native"]
    if not status[0]:
        pytest.skip(status[1])
    with torch.no_grad():
        actual = case.functions["native"](*inputs, **kwargs)
    error = ((actual - expected).norm() / expected.norm()).item()
    assert error < case.tolerance
