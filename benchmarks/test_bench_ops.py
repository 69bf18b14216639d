"""pytest-benchmark entry points of the CPU paths (``pytest benchmarks/ --benchmark-only``).

One benchmark per registered case (every op family in ``portrait_engine.benchmark.cases``,
end-to-end steps included), per CPU provider that can run it (the eager reference and the
native C++ kernels; Triton runs on a CPU only under its interpreter) and per mode, at the
``--quick`` sizes, so that regressions show in the usual tool (``--benchmark-compare``).
The harness (``portrait-engine bench``) checks correctness before it times; here the
pytest-benchmark runs time what the harness has already checked.
"""

from __future__ import annotations

import pytest
import torch

from portrait_engine import _backend
from portrait_engine.benchmark.cases import OPS

CPU = torch.device("cpu")
PROVIDERS = ("torch", "native")


def _params():
    for op, make_cases in OPS.items():
        for case in make_cases(True):
            status = _backend.backend_status(CPU, case.native_op)
            for provider in PROVIDERS:
                if provider not in case.functions:
                    continue
                ok, reason = status[provider]
                marks = () if ok else (pytest.mark.skip(reason=reason),)
                for mode in case.modes:
                    yield pytest.param(
                        case, provider, mode, id=f"{op}-{case.shape}-{provider}-{mode}", marks=marks
                    )


@pytest.mark.parametrize(("case", "provider", "mode"), list(_params()))
def test_cpu_path(benchmark, case, provider, mode):
    inputs, kwargs = case.make_inputs(CPU, torch.float32, torch.Generator().manual_seed(0))
    fn = case.functions[provider]
    benchmark.group = f"{case.op} {case.shape} {mode}"
    benchmark.extra_info.update(case.params)
    if mode == "forward":

        def forward():
            with torch.no_grad():
                return fn(*inputs, **kwargs)

        benchmark(forward)
        return
    leaves = [x.requires_grad_() for x in inputs if x.is_floating_point()]
    grad = torch.randn_like(fn(*inputs, **kwargs))

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        fn(*inputs, **kwargs).backward(grad)

    benchmark(forward_backward)
