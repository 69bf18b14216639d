"""The ray_march / ray_sample benchmark cases: every provider agrees with the reference."""

from __future__ import annotations

import torch

from portrait_engine.benchmark import runner
from portrait_engine.benchmark.cases import OPS
from portrait_engine.benchmark.cases.rays import _march_case, _sample_case
from tests.benchmark.conftest import tiny_config


def test_ops_are_registered():
    assert OPS["ray_march"](True)[0].op == "ray_march"
    assert OPS["ray_sample"](True)[0].op == "ray_sample"
    full = OPS["ray_march"](False)
    assert {(c.params["batch"], c.params["rays"], c.params["channels"]) for c in full} == {
        (4, 128 * 128, 32)
    }


def test_march_bytes_moved():
    case = _march_case("tiny", batch=1, resolution=2, samples=3, channels=5)
    colors, samples, rays_out = 4 * 3 * 5, 4 * 3, 4 * 6
    assert case.bytes_moved(torch.float32, False) == 4 * (colors + 3 * samples + rays_out)


def test_cases_run_and_agree(use_cases):
    """Every available provider passes the harness's check against the reference and is timed."""
    use_cases(
        {
            "ray_march": [_march_case("tiny", batch=1, resolution=3, samples=5, channels=4)],
            "ray_sample": [_sample_case("tiny", batch=2, resolution=4)],
        }
    )
    config = tiny_config(ops=["ray_march", "ray_sample"], providers=["torch", "native"])
    rows = runner.run_benchmarks(config)["rows"]
    for op in ("ray_march", "ray_sample"):
        statuses = {r["provider"]: r["status"] for r in rows if r["op"] == op}
        assert statuses["torch"] == "ok", statuses
        assert statuses["native"] == "ok" or statuses["native"].startswith("unavailable"), statuses
