"""pytest-benchmark entry points for ray_march and ray_sample on the CPU (``--benchmark-only``)."""

import pytest
import torch

import portrait_engine as pe
from portrait_engine.benchmark.cases.rays import ray_march_cases, ray_sample_cases

CASES = {f"{case.op} {case.shape}": case for case in ray_march_cases(True) + ray_sample_cases(True)}
BACKENDS = [b for b in ("torch", "native") if b in pe.available_backends("cpu")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_rays(benchmark, backend, name, mode):
    case = CASES[name]
    inputs, kwargs = case.make_inputs(
        torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0)
    )
    fn = case.functions[backend]
    benchmark.group = f"{name} {mode}"
    if mode == "forward":
        with torch.no_grad():
            benchmark(fn, *inputs, **kwargs)
        return
    leaves = [x.requires_grad_() for x in inputs]
    grad = torch.randn_like(fn(*leaves, **kwargs))

    def step():
        for leaf in leaves:
            leaf.grad = None
        fn(*leaves, **kwargs).backward(grad)

    benchmark(step)
