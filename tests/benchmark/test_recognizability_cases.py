"""RI's benchmark cases (margin head, training step) and the runner's handling of a reference
that cannot run (the plain margin head out of memory at a million classes)."""

from __future__ import annotations

import torch

from portrait_engine.benchmark import runner, schema
from portrait_engine.benchmark.cases import OPS
from portrait_engine.benchmark.cases.recognizability import margin_head_cases
from tests.benchmark.conftest import scale_add_case, tiny_config


def test_margin_head_sizes_follow_the_issue():
    quick = margin_head_cases(True)
    assert [c.params["classes"] for c in quick] == [8192]
    assert quick[0].params["chunk_size"] < quick[0].params["classes"]  # several chunks
    full = margin_head_cases(False)
    assert [(c.params["batch"], c.params["classes"], c.params["dim"]) for c in full] == [
        (512, 100_000, 512),
        (512, 1_000_000, 512),
    ]
    steps = OPS["ri_train_step"](False)
    assert [(c.params["backbone"], c.params["batch"], c.params["image_size"]) for c in steps] == [
        ("iresnet50", 512, 112)
    ]


def test_fused_margin_head_agrees_with_the_plain_one_in_the_harness(use_cases):
    use_cases({"margin_head": margin_head_cases(True)})
    config = tiny_config(ops=["margin_head"], providers=["torch", "native"], rotate=False)
    rows = runner.run_benchmarks(config)["rows"]
    by = {(r["provider"], r["mode"]): r for r in rows}
    native = by[("native", "forward+backward")]
    if native["status"].startswith("unavailable"):
        return  # no C++ extension in this environment: the provider is reported as such
    assert native["status"] == "ok", native["status"]
    assert native["check_error"] < 1e-5  # loss and both input gradients
    assert by[("torch", "forward")]["status"] == "ok"


def test_a_reference_out_of_memory_is_reported_not_fatal(use_cases):
    def out_of_memory(x, y):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    case = scale_add_case(functions={"torch": out_of_memory, "sdpa": lambda x, y: 2 * x + y})
    use_cases({"scale_add": [case]})
    result = runner.run_benchmarks(tiny_config())
    schema.validate(result)
    rows = result["rows"]
    torch_rows = [r for r in rows if r["provider"] == "torch"]
    assert [r["status"] for r in torch_rows] == [
        "error: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    ]
    other = [r for r in rows if r["provider"] == "sdpa"]
    assert {r["mode"] for r in other} == {"forward", "forward+backward"}
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in other)
    assert all("OutOfMemoryError" in r["unchecked"] for r in other)
    assert all(r["speedup_vs_torch"] is None for r in other)  # nothing to compare against
