"""The generator and training-step end-to-end benchmark cases: well formed, and their
providers agree."""

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


def test_train_step_presets_and_modes():
    from portrait_engine.benchmark.cases.portrait_gan import portrait_gan_train_step_cases

    assert OPS["portrait_gan_train_step"] is portrait_gan_train_step_cases
    quick, full = portrait_gan_train_step_cases(True), portrait_gan_train_step_cases(False)
    assert [c.shape for c in quick] == ["tiny"]
    assert [c.shape for c in full] == ["small", "paper"]
    for case in quick + full:
        assert case.kind == "end-to-end" and case.modes == ("forward+backward",)
        assert set(case.functions) == {"torch", "triton", "native"}
        assert case.params["img_resolution"] == PortraitGANConfig.preset(case.shape).img_resolution


def test_train_step_gives_finite_losses_and_gradients_and_native_agrees():
    from portrait_engine.benchmark.cases.portrait_gan import (
        _train_nets,
        portrait_gan_train_step_cases,
    )

    case = portrait_gan_train_step_cases(True)[0]
    inputs, kwargs = case.make_inputs(torch.device("cpu"), torch.float32, torch.Generator())
    losses = case.functions["torch"](*inputs, **kwargs)
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    losses.sum().backward()
    G, D, _ = _train_nets("tiny", "cpu", case.params["batch"])
    # G main reaches G (not D); D main reaches D
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())
    status = _backend.backend_status("cpu", "mesh_deform_forward")["native"]
    if not status[0]:
        pytest.skip(status[1])
    with torch.no_grad():
        actual = case.functions["native"](*inputs, **kwargs)
    error = ((actual - losses.detach()).norm() / losses.detach().norm()).item()
    assert error < case.tolerance
