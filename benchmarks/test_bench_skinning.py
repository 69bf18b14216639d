"""pytest-benchmark entry points for lbs, skin_points and mesh_deform on the CPU
(``--benchmark-only``)."""

import pytest
import torch

import portrait_engine as pe
from portrait_engine.benchmark.cases.skinning import (
    lbs_cases,
    mesh_deform_cases,
    skin_points_cases,
)

CASES = {
    f"{case.op}:{case.shape}": case
    for case in lbs_cases(quick=True) + skin_points_cases(quick=True) + mesh_deform_cases(True)
}
BACKENDS = [b for b in ("torch", "native") if b in pe.available_backends("cpu")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_skinning(benchmark, backend, name, mode):
    case = CASES[name]
    if case.op == "mesh_deform" and backend == "torch":
        pytest.skip(
            "the brute-force reference takes ~1 min per call here: see portrait-engine bench"
        )
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
