"""Small synthetic cases that exercise the harness without any kernel of the project."""

from __future__ import annotations

import pytest
import torch

from portrait_engine.benchmark import cases, runner
from portrait_engine.benchmark.cases.base import Case


def scale_add_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 2 * x + y


def scale_add_case(shape: str = "toy", n: int = 4096, **overrides) -> Case:
    """``2x + y`` with a reference and an equivalent second provider ("sdpa" stands in for a
    provider that is always available)."""

    def make_inputs(device, dtype, generator):
        x = torch.randn(n, generator=generator).to(device=device, dtype=dtype)
        y = torch.randn(n, generator=generator).to(device=device, dtype=dtype)
        return [x, y], {}

    def bytes_moved(dtype, with_backward):
        size = torch.empty((), dtype=dtype).element_size()
        return (3 * n + (3 * n if with_backward else 0)) * size

    fields = dict(
        op="scale_add",
        shape=shape,
        params={"n": n},
        make_inputs=make_inputs,
        functions={
            "torch": scale_add_reference,
            "sdpa": lambda x, y: torch.add(y, x, alpha=2),
        },
        bytes_moved=bytes_moved,
        description=f"n={n}",
        flops=lambda dtype, with_backward: 2 * n,
    )
    fields.update(overrides)
    return Case(**fields)


@pytest.fixture
def use_cases(monkeypatch):
    """Replace the registered ops by the given cases: ``use_cases({"op": [case, ...]})``."""

    def install(table: dict[str, list[Case]]) -> None:
        monkeypatch.setattr(cases, "OPS", {op: (lambda quick, c=c: c) for op, c in table.items()})
        monkeypatch.setattr(runner, "OPS", cases.OPS)

    return install


def tiny_config(tmp_path=None, **overrides) -> runner.BenchConfig:
    fields = dict(
        ops=["scale_add"],
        device="cpu",
        providers=["torch", "sdpa"],
        budget_s=0.01,
        min_runs=3,
        out_dir=None if tmp_path is None else str(tmp_path),
        plots=False,
    )
    fields.update(overrides)
    return runner.BenchConfig(**fields)
