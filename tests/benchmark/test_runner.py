"""The runner: checked before timed, rates against the measured ceilings, rows per mode."""

from __future__ import annotations

import pytest
import torch

from portrait_engine.benchmark import report, runner, schema
from portrait_engine.benchmark.cases.triplane import _triplane_case
from tests.benchmark.conftest import scale_add_case, scale_add_reference, tiny_config


def test_bytes_moved_counts_inputs_outputs_and_gradients():
    case = _triplane_case("tiny", batch=1, channels=4, depth=1, resolution=8, rays=4, samples=3)
    planes, points, out = 3 * 4 * 8 * 8, 4 * 4 * 3 * 3, 4 * 4 * 3 * 4
    assert case.bytes_moved(torch.float32, False) == 4 * (planes + points + out)
    assert case.bytes_moved(torch.bfloat16, False) == 2 * (planes + points + out)
    backward = out + 2 * points + 2 * planes
    assert case.bytes_moved(torch.float32, True) == 4 * (planes + points + out + backward)


def test_rows_carry_timing_spread_rates_and_memory(use_cases):
    use_cases({"scale_add": [scale_add_case()]})
    result = runner.run_benchmarks(tiny_config())
    schema.validate(result)
    copy = result["ceilings"]["copy_bandwidth"]["value"]
    matmul = result["ceilings"]["matmul"]["float32"]["value"]
    assert copy > 0 and matmul > 0
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    assert {(r["provider"], r["mode"]) for r in ok} == {
        (p, m) for p in ("torch", "sdpa") for m in ("forward", "forward+backward")
    }
    for row in ok:
        assert row["min_ms"] <= row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
        assert row["p80_ms"] <= row["max_ms"] and row["runs"] >= 3
        assert row["gbps"] == pytest.approx(row["bytes_moved"] / (row["median_ms"] * 1e-3) / 1e9)
        assert row["fraction_of_copy_bw"] == pytest.approx(row["gbps"] / copy)
        assert row["tflops"] == pytest.approx(4096 * 2 / (row["median_ms"] * 1e-3) / 1e12)
        assert row["fraction_of_matmul"] == pytest.approx(row["tflops"] / matmul)
        assert row["peak_memory_mb"] is not None and "profiler" in row["memory_method"]
    forward = {r["provider"]: r for r in ok if r["mode"] == "forward"}
    assert forward["torch"]["speedup_vs_torch"] == 1.0
    assert forward["sdpa"]["speedup_vs_torch"] == pytest.approx(
        forward["torch"]["median_ms"] / forward["sdpa"]["median_ms"]
    )
    assert forward["sdpa"]["check_error"] < 1e-6  # checked, and agreed
    assert forward["torch"]["speedup_vs_compile"] is None  # no torch_compile row here


def test_the_allocator_setting_is_recorded(use_cases, monkeypatch):
    use_cases({"scale_add": [scale_add_case()]})
    result = runner.run_benchmarks(tiny_config())
    assert result["environment"]["allocator"] == "default"
    calls = []
    monkeypatch.setattr(runner.memory, "retain_cpu_memory", lambda: calls.append(1) or "kept")
    result = runner.run_benchmarks(tiny_config(retain_memory=True))
    assert calls == [1] and result["environment"]["allocator"] == "kept"
    assert "kept in the process" in report.environment_line(result)


def test_small_inputs_rotate_several_sets_to_exceed_the_cache(use_cases):
    use_cases({"scale_add": [scale_add_case()]})
    rows = runner.run_benchmarks(tiny_config())["rows"]
    assert all(r["rotating_sets"] == runner.MAX_ROTATING_SETS for r in rows)
    rows = runner.run_benchmarks(tiny_config(rotate=False))["rows"]
    assert all(r["rotating_sets"] == 1 for r in rows)


def test_rotation_stops_once_the_sets_exceed_twice_the_cache():
    cache = runner.timing.cache_bytes("cpu")
    assert runner.rotating_sets(cache, torch.device("cpu")) == 2
    assert runner.rotating_sets(3 * cache, torch.device("cpu")) == 1


def test_a_wrong_backend_is_flagged_and_not_timed(use_cases):
    case = scale_add_case(
        functions={"torch": scale_add_reference, "sdpa": lambda x, y: 2 * x + y * 1.01}
    )
    use_cases({"scale_add": [case]})
    rows = runner.run_benchmarks(tiny_config())["rows"]
    wrong = [r for r in rows if r["provider"] == "sdpa"]
    assert len(wrong) == 1, "a wrong provider must have one untimed row, not one per mode"
    assert wrong[0]["status"].startswith("wrong: output rel-L2")
    assert "median_ms" not in wrong[0]
    assert [r["status"] for r in rows if r["provider"] == "torch"] == ["ok", "ok"]


def test_a_wrong_gradient_is_flagged(use_cases):
    class WrongBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            return 2 * x + y

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad, -grad  # the gradient of y has the wrong sign

    case = scale_add_case(functions={"torch": scale_add_reference, "sdpa": WrongBackward.apply})
    use_cases({"scale_add": [case]})
    rows = runner.run_benchmarks(tiny_config())["rows"]
    (wrong,) = [r for r in rows if r["provider"] == "sdpa"]
    assert wrong["status"].startswith("wrong: grad[1] rel-L2")


def test_the_real_triplane_native_backend_is_flagged_when_it_disagrees(use_cases, monkeypatch):
    case = _triplane_case("tiny", batch=1, channels=4, depth=1, resolution=8, rays=4, samples=3)
    good = case.functions["torch"]
    case.functions["native"] = lambda planes, points, **kw: good(planes, points, **kw) * 1.01
    use_cases({"triplane_sample": [case]})
    monkeypatch.setattr(runner, "_provider_status", lambda provider, device, case: (True, ""))
    config = tiny_config(ops=["triplane_sample"], providers=["torch", "native"])
    native = [r for r in runner.run_benchmarks(config)["rows"] if r["provider"] == "native"]
    assert len(native) == 1 and native[0]["status"].startswith("wrong: output rel-L2")


def test_a_failing_provider_is_reported_as_an_error(use_cases):
    def broken(x, y):
        raise RuntimeError("kernel exploded")

    use_cases(
        {"scale_add": [scale_add_case(functions={"torch": scale_add_reference, "sdpa": broken})]}
    )
    rows = runner.run_benchmarks(tiny_config())["rows"]
    (row,) = [r for r in rows if r["provider"] == "sdpa"]
    assert row["status"] == "error: RuntimeError: kernel exploded"


def test_a_provider_failing_while_timed_is_an_error_row_and_the_others_are_timed(use_cases):
    calls = {"n": 0}

    def fails_after_the_check(x, y):
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("failed in timing")
        return scale_add_reference(x, y)

    use_cases(
        {
            "scale_add": [
                scale_add_case(
                    functions={"torch": scale_add_reference, "sdpa": fails_after_the_check}
                )
            ]
        }
    )
    rows = runner.run_benchmarks(tiny_config())["rows"]
    assert [r["status"] for r in rows if r["provider"] == "sdpa"] == [
        "error: RuntimeError: failed in timing"
    ]
    torch_rows = [r for r in rows if r["provider"] == "torch"]
    assert [r["status"] for r in torch_rows] == ["ok", "ok"]
    assert all(r["wall_s"] > 0 for r in torch_rows)


def test_an_unavailable_backend_says_why(use_cases, monkeypatch):
    case = scale_add_case(native_op="no_such_op")
    case.functions["native"] = scale_add_reference
    use_cases({"scale_add": [case]})
    config = tiny_config(providers=["torch", "native"])
    rows = runner.run_benchmarks(config)["rows"]
    (row,) = [r for r in rows if r["provider"] == "native"]
    assert row["status"].startswith("unavailable: ") and len(row["status"]) > 20


def test_a_provider_skipped_in_quick_runs_says_why_and_runs_in_full_runs(use_cases):
    use_cases({"scale_add": [scale_add_case(quick_skip={"sdpa": "too slow to compile"})]})
    quick = runner.run_benchmarks(tiny_config(quick=True))["rows"]
    (row,) = [r for r in quick if r["provider"] == "sdpa"]
    assert row["status"] == "skipped: too slow to compile" and "median_ms" not in row
    full = runner.run_benchmarks(tiny_config(quick=False))["rows"]
    assert {r["status"] for r in full if r["provider"] == "sdpa"} == {"ok"}
    # --no-quick-skip: a quick run that times them anyway
    forced = runner.run_benchmarks(tiny_config(quick=True, quick_skip=False))["rows"]
    assert {r["status"] for r in forced if r["provider"] == "sdpa"} == {"ok"}


def test_constant_inputs_are_refused(use_cases):
    def zeros(device, dtype, generator):
        return [
            torch.zeros(64, device=device, dtype=dtype),
            torch.randn(64, generator=generator),
        ], {}

    use_cases({"scale_add": [scale_add_case(make_inputs=zeros)]})
    with pytest.raises(ValueError, match="input 0 is constant"):
        runner.run_benchmarks(tiny_config())


def test_an_end_to_end_case_with_a_subset_of_providers_and_no_byte_count(use_cases):
    weight = torch.randn(8, 8)

    def make_inputs(device, dtype, generator):
        images = torch.randn(4, 8, generator=generator).to(device=device, dtype=dtype)
        labels = torch.randint(0, 8, (4,), generator=generator)
        return [images, labels], {}

    def step(images, labels):  # a training step's loss; labels are not differentiable
        return torch.nn.functional.cross_entropy(images @ weight, labels)

    case = scale_add_case(
        op="toy_step",
        kind="end-to-end",
        make_inputs=make_inputs,
        functions={"torch": step, "sdpa": step},
        bytes_moved=lambda dtype, with_backward: None,
        flops=None,
        modes=("forward+backward",),
    )
    use_cases({"toy_step": [case]})
    rows = runner.run_benchmarks(tiny_config(ops=["toy_step"]))["rows"]
    assert [(r["provider"], r["mode"], r["status"]) for r in rows] == [
        ("torch", "forward+backward", "ok"),
        ("sdpa", "forward+backward", "ok"),
    ]
    assert all(r["kind"] == "end-to-end" and r["gbps"] is None for r in rows)
    assert all(r["fraction_of_copy_bw"] is None and r["tflops"] is None for r in rows)


def test_unknown_ops_and_dtypes_are_refused():
    with pytest.raises(ValueError, match="unknown op"):
        runner.run_benchmarks(tiny_config(ops=["no_such_op"]))
    with pytest.raises(ValueError, match="unknown dtype"):
        runner.run_benchmarks(tiny_config(ops=[], dtypes=["float8"]))


def test_quick_runs_default_to_a_small_budget_per_row():
    config = runner.BenchConfig(device="cpu")
    assert config.resolved_quick() is True
    assert config.resolved_budget_s() == runner.QUICK_BUDGET_S
    assert runner.BenchConfig(device="cpu", quick=False).resolved_budget_s() == runner.FULL_BUDGET_S
