"""Timing, ceilings and peak memory on the CPU."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from portrait_engine.benchmark import ceilings, memory, timing


def test_summarise_reports_median_percentiles_and_spread():
    result = timing.summarise([5.0, 1.0, 4.0, 2.0, 3.0], calls_per_run=1, method="m")
    assert result.median_ms == 3.0
    assert result.min_ms == 1.0 and result.max_ms == 5.0
    assert result.p20_ms == pytest.approx(1.8) and result.p80_ms == pytest.approx(4.2)
    assert result.iqr_ms == pytest.approx(2.0)  # 4.0 - 2.0
    assert result.runs == 5


def test_percentile_rejects_no_values():
    with pytest.raises(ValueError, match="no values"):
        timing.percentile([], 0.5)


def test_cpu_timing_measures_a_known_delay():
    timed = timing.time_function(lambda: time.sleep(0.004), "cpu", min_runs=3, budget_s=0.05)
    assert timed.method == "perf_counter"
    assert timed.runs >= 3 and timed.calls_per_run == 1
    assert 4.0 <= timed.min_ms <= timed.p20_ms <= timed.median_ms <= timed.p80_ms <= timed.max_ms
    assert timed.median_ms < 1000  # the unit is milliseconds (microseconds would read 4000+)


def test_fast_functions_are_averaged_over_several_calls_per_repeat():
    x = torch.randn(16)
    timed = timing.time_function(lambda: x.add(1), "cpu", min_runs=3, budget_s=0.02)
    assert timed.calls_per_run > 1
    assert timed.median_ms < 1


def test_rotating_input_sets_are_called_in_turn_and_gradients_cleared():
    calls = []
    leaf = torch.ones(3, requires_grad=True)

    def make(index):
        def fn():
            assert leaf.grad is None, "gradient not cleared before a timed call"
            (leaf * index).sum().backward()
            calls.append(index)

        return fn

    timing.time_function(
        [make(0), make(1), make(2)], "cpu", min_runs=3, budget_s=0.0, grad_to_none=[leaf]
    )
    assert len(calls) >= 6
    assert calls[:6] == [0, 1, 2, 0, 1, 2]


def test_interleaved_providers_are_sampled_in_rounds_spread_over_the_row():
    log = []
    fast = lambda: log.append("fast")  # noqa: E731
    slow = lambda: (time.sleep(0.003), log.append("slow"))  # noqa: E731
    timed = timing.time_interleaved({"fast": fast, "slow": slow}, "cpu", min_runs=4, budget_s=0.03)
    assert timed["fast"].runs > timed["slow"].runs >= 4
    assert timed["slow"].median_ms >= 3.0 > timed["fast"].median_ms
    # after the warm-ups (two calls each; the slow one's second is kept as its first sample)
    # the samples alternate: every round has a fast sample, and each slow sample (one call,
    # nothing untimed before it) comes after the fast one of its round, the last in the last
    assert log[:4] == ["fast", "fast", "slow", "slow"]
    groups = [name for name, _ in itertools.groupby(log[4:])]
    assert groups[0] == "fast" and groups[-1] == "slow"
    assert log[4:].count("slow") == groups.count("slow") == timed["slow"].runs - 1


def test_interleaved_rounds_alternate_their_order():
    # a call after another on the same inputs runs warm: with one fixed order each provider
    # would always follow the same other one, so every other round goes in reverse
    log = []

    def call(name):
        return lambda: (time.sleep(0.002), log.append(name))  # one call per sample

    timed = timing.time_interleaved(
        {name: call(name) for name in "abc"}, "cpu", min_runs=4, max_runs=4, budget_s=0.0
    )
    assert all(timed[name].runs == 4 for name in "abc")
    # the warm-ups (two calls each, the second kept as the first sample), then three rounds
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]
    assert log[6:] == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]


def test_interleaving_keeps_ratios_on_a_machine_that_slows_down():
    # every call makes the "machine" 4 % slower; timed one after the other, B (twice A's work)
    # would meet a much slower machine than A and seem ~3x slower; interleaved, ~2x
    state = {"calls": 0}

    def work(units):
        def fn():
            state["calls"] += 1
            time.sleep(0.001 * units * (1 + 0.04 * state["calls"]))

        return fn

    timed = timing.time_interleaved(
        {"a": work(1), "b": work(2)}, "cpu", min_runs=10, max_runs=10, budget_s=0.0
    )
    ratio = timed["b"].median_ms / timed["a"].median_ms
    assert 1.6 < ratio < 2.4, ratio
    state["calls"] = 0
    a = timing.time_function(work(1), "cpu", min_runs=10, max_runs=10, budget_s=0.0)
    b = timing.time_function(work(2), "cpu", min_runs=10, max_runs=10, budget_s=0.0)
    assert b.median_ms / a.median_ms > ratio  # the drift the interleaving removes


def test_a_function_that_fails_while_sampled_leaves_the_others_timed():
    state = {"calls": 0}

    def flaky():
        state["calls"] += 1
        if state["calls"] > 3:
            raise RuntimeError("out of memory")
        time.sleep(0.002)

    timed = timing.time_interleaved(
        {"flaky": flaky, "ok": lambda: time.sleep(0.002)}, "cpu", min_runs=5, budget_s=0.0
    )
    assert isinstance(timed["flaky"], RuntimeError)
    assert timed["ok"].runs == 5 and timed["ok"].wall_s >= 0.01
    with pytest.raises(RuntimeError, match="out of memory"):
        state["calls"] = 0
        timing.time_function(flaky, "cpu", min_runs=5, budget_s=0.0)


def test_cache_size_is_known_on_the_cpu():
    assert timing.cache_bytes("cpu") >= 1 << 20


def test_copy_bandwidth_and_matmul_rate_are_measured():
    copy = ceilings.copy_bandwidth(torch.device("cpu"), budget_s=0.01)
    assert copy.unit == "GB/s" and copy.value > 0 and "copy_" in copy.what
    # the buffers exceed the cache, so the copy cannot run from it
    assert int(copy.what.split(" MiB")[0].split()[-1]) << 20 >= timing.cache_bytes("cpu")
    rate = ceilings.matmul_rate(torch.device("cpu"), torch.float32, budget_s=0.01)
    assert rate.unit == "TFLOP/s" and rate.value > 0 and "float32" in rate.what
    n = ceilings.matmul_size(torch.device("cpu"), torch.float32)
    assert rate.value == pytest.approx(2 * n**3 / (rate.timing["median_ms"] * 1e-3) / 1e12)


def test_cpu_peak_memory_sees_tensors_made_inside_the_call():
    n = 1 << 20  # 4 MiB of float32 per temporary

    def two_temporaries():
        a = torch.randn(n)
        b = a * 2
        return (a + b).sum()

    peak_mb, method = memory.peak_memory(two_temporaries, torch.device("cpu"))
    assert "torch.profiler" in method
    # a, b and a + b alive at once: 12 MiB; nothing like 100 MiB
    assert 12 <= peak_mb < 20


def test_cpu_peak_memory_of_a_call_that_allocates_nothing_is_small():
    x = torch.randn(1 << 20)
    peak_mb, _ = memory.peak_memory(lambda: x.add_(1), torch.device("cpu"))
    assert peak_mb < 0.5


def test_the_benchmark_process_can_keep_freed_cpu_memory():
    import subprocess
    import sys

    code = "from portrait_engine.benchmark import memory; print(memory.retain_cpu_memory())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not sys.platform.startswith("linux") or out == "None":
        pytest.skip("not glibc")
    assert "M_MMAP_THRESHOLD=1073741824" in out and "glibc" in out
