"""pytest-benchmark entry points for every op's CPU paths (``pytest benchmarks/ --benchmark-only``).

One test per (op, quick case, backend, mode), generated from the harness's own case registry
(``portrait_engine.benchmark.cases.OPS``), so an op family added to the harness shows up here
without another file. Backends: the eager reference (``torch``) and the C++ kernels
(``native``) where the extension has the case's op.
"""

import pytest
import torch

from portrait_engine import _extension
from portrait_engine.benchmark.cases import OPS

CASES = {(op, case.shape): case for op, make in OPS.items() for case in make(True)}


def _params():
    for (op, shape), case in sorted(CASES.items()):
        for backend in ("torch", "native"):
            if backend not in case.functions:
                continue
            marks = []
            if backend == "native" and not (case.native_op and _extension.has_op(case.native_op)):
                marks.append(pytest.mark.skip(reason="native kernels not built"))
            for mode in ("forward", "forward+backward"):
                yield pytest.param(op, shape, backend, mode, marks=marks)


@pytest.mark.parametrize("op, shape, backend, mode", list(_params()))
def test_op(benchmark, op, shape, backend, mode):
    case = CASES[op, shape]
    inputs, kwargs = case.make_inputs(
        torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0)
    )
    fn = case.functions[backend]
    benchmark.group = f"{op} {shape} {mode}"
    if mode == "forward":
        with torch.no_grad():
            benchmark(fn, *inputs, **kwargs)
        return
    leaves = [x.requires_grad_() if x.is_floating_point() else x for x in inputs]
    grad = torch.randn_like(fn(*leaves, **kwargs))

    def step():
        for leaf in leaves:
            leaf.grad = None
        fn(*leaves, **kwargs).backward(grad)

    benchmark(step)
