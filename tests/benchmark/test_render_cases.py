"""The fused-renderer benchmark cases (render_rays, renderer_unfused): the size grid of the
issue, and every available provider agrees with the eager reference renderer."""

from __future__ import annotations

import pytest
import torch

from portrait_engine import _backend
from portrait_engine.benchmark import runner
from portrait_engine.benchmark.cases import OPS
from portrait_engine.benchmark.cases.render import _render_case
from tests.benchmark.conftest import tiny_config


def test_full_grid_is_the_issues():
    for op in ("render_rays", "renderer_unfused"):
        full = OPS[op](False)
        grid = {
            (c.params["batch"], c.params["rays"], c.params["depth"], c.params["samples"])
            for c in full
        }
        assert grid == {(b, r * r, d, 48) for b in (4, 32) for r in (64, 128) for d in (1, 3)}
        for case in full:
            assert case.params["plane_size"] == 256 and case.params["channels"] == 32
            assert case.kind == "end-to-end" and case.modes == ("forward+backward",)
    assert "torch_compile" in OPS["render_rays"](False)[0].functions


def test_quick_cases_stay_small():
    for op in ("render_rays", "renderer_unfused"):
        (case,) = OPS[op](True)
        assert case.params["batch"] * case.params["rays"] * case.params["samples"] <= 2048


@pytest.mark.parametrize("fused_kernels", [True, False])
def test_native_provider_agrees_with_the_reference(fused_kernels):
    case = _render_case(
        "render_rays", "tiny", 1, 4, 6, 8, depth=3, channels=4, fused_kernels=fused_kernels
    )
    status = _backend.backend_status("cpu", case.native_op)["native"]
    if not status[0]:
        pytest.skip(status[1])
    inputs, kwargs = case.make_inputs(torch.device("cpu"), torch.float32, torch.Generator())
    expected = case.functions["torch"](*inputs, **kwargs)
    actual = case.functions["native"](*inputs, **kwargs)
    assert expected.shape == (1, 16, 5)
    error = ((actual - expected).norm() / expected.norm()).item()
    assert error < 1e-4


def test_cases_run_through_the_harness(use_cases):
    use_cases(
        {
            "render_rays": [
                _render_case("render_rays", "tiny", 1, 3, 5, 8, channels=4, fused_kernels=True)
            ]
        }
    )
    config = tiny_config(ops=["render_rays"], providers=["torch", "native"])
    rows = runner.run_benchmarks(config)["rows"]
    statuses = {r["provider"]: r["status"] for r in rows}
    assert statuses["torch"] == "ok", statuses
    assert statuses["native"] == "ok" or statuses["native"].startswith("unavailable"), statuses
    assert all(r["peak_memory_mb"] is not None for r in rows if r["status"] == "ok")
