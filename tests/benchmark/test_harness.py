"""The benchmark harness's own logic, on tiny CPU runs."""

from __future__ import annotations

import json

import torch

from portrait_engine.benchmark import BenchConfig, cases, runner
from portrait_engine.benchmark.cases.triplane import _triplane_case


def tiny_case():
    return _triplane_case("tiny", batch=1, channels=4, depth=1, resolution=8, rays=4, samples=3)


def test_bytes_moved_counts_inputs_outputs_and_gradients():
    case = tiny_case()
    planes, points, out = 3 * 4 * 8 * 8, 4 * 4 * 3 * 3, 4 * 4 * 3 * 4
    assert case.bytes_moved(torch.float32, False) == 4 * (planes + points + out)
    assert case.bytes_moved(torch.bfloat16, False) == 2 * (planes + points + out)
    backward = out + 2 * points + 2 * planes
    assert case.bytes_moved(torch.float32, True) == 4 * (planes + points + out + backward)


def test_run_writes_schema_and_files(tmp_path, monkeypatch):
    monkeypatch.setitem(cases.OPS, "triplane_sample", lambda quick: [tiny_case()])
    config = BenchConfig(
        ops=["triplane_sample"],
        device="cpu",
        providers=["torch", "native"],
        budget_s=0.01,
        out_dir=str(tmp_path),
    )
    result = runner.run_benchmarks(config)
    assert result["environment"]["copy_bandwidth_gbps"] > 0
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    assert {r["mode"] for r in ok} == {"forward", "forward+backward"}
    for row in ok:
        assert row["median_ms"] > 0 and row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
        assert row["gbps"] == row["bytes_moved"] / (row["median_ms"] * 1e-3) / 1e9
    torch_rows = [r for r in ok if r["provider"] == "torch"]
    assert all(r["speedup_vs_torch"] == 1.0 for r in torch_rows)
    saved = json.loads((tmp_path / result["environment"]["device"] / "quick.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"], default=str))
    assert (
        "| triplane_sample | tiny |"
        in (tmp_path / result["environment"]["device"] / "quick.md").read_text()
    )


def test_a_wrong_backend_is_flagged_not_timed(monkeypatch):
    case = tiny_case()
    good = case.functions["torch"]
    case.functions["native"] = lambda planes, points, **kw: good(planes, points, **kw) * 1.01
    monkeypatch.setitem(cases.OPS, "triplane_sample", lambda quick: [case])
    monkeypatch.setattr(runner, "_provider_status", lambda provider, device, case: (True, ""))
    config = BenchConfig(
        ops=["triplane_sample"],
        device="cpu",
        providers=["torch", "native"],
        budget_s=0.01,
        out_dir=None,
    )
    rows = runner.run_benchmarks(config)["rows"]
    native = [r for r in rows if r["provider"] == "native"]
    assert len(native) == 1 and native[0]["status"].startswith("wrong: output rel-L2")
    assert "median_ms" not in native[0]


def test_relative_l2_flags_non_finite_and_shape_mismatch():
    a = torch.ones(3)
    assert runner.relative_l2(a, a) == 0
    assert runner.relative_l2(torch.tensor([1.0, float("nan"), 1.0]), a) == float("inf")
    assert runner.relative_l2(torch.ones(2), a) == float("inf")
