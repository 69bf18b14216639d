"""Run one benchmark case's provider forward (+ backward) a few times: a target for profilers.

    python tools/run_case.py OP SHAPE PROVIDER [--iters N] [--forward-only] [--device cuda]
                             [--profile ROWS]

e.g. ``ncu --clock-control none -k regex:render python tools/run_case.py render_rays
triplane-b4-64x64 native --iters 1``. The inputs are the harness's (``Case.make_inputs``), at
paper size unless ``--quick``; the output's gradient is all ones. Prints the wall time of each
iteration (after a CUDA synchronize), which includes any first-call compile.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from portrait_engine.benchmark.cases import OPS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("op", choices=sorted(OPS))
    parser.add_argument("shape")
    parser.add_argument("provider")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="the quick suite's sizes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="then one more iteration under torch.profiler: print its ROWS costliest kernels",
    )
    args = parser.parse_args(argv)

    cases = {case.shape: case for case in OPS[args.op](args.quick)}
    if args.shape not in cases:
        parser.error(f"no shape {args.shape!r} for {args.op}; known: {sorted(cases)}")
    case = cases[args.shape]
    if args.provider not in case.functions:
        parser.error(f"no provider {args.provider!r}; known: {sorted(case.functions)}")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    inputs, kwargs = case.make_inputs(device, dtype, torch.Generator().manual_seed(0))
    if not args.forward_only:
        inputs = [x.requires_grad_() if x.is_floating_point() else x for x in inputs]
    function = case.functions[args.provider]

    def iteration() -> None:
        # as the harness does: each backward writes fresh gradients (accumulating into the
        # previous ones added one in-place add per input, 1.2 of lbs's 4.7 ms at B = 1)
        for x in inputs:
            if isinstance(x, torch.Tensor):
                x.grad = None
        with torch.no_grad() if args.forward_only else torch.enable_grad():
            out = function(*inputs, **kwargs)
            if not args.forward_only:
                out.backward(torch.ones_like(out))
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(args.iters):
        start = time.perf_counter()
        iteration()
        print(f"iteration {i}: {1e3 * (time.perf_counter() - start):.2f} ms", flush=True)
    if args.profile:
        _profile(iteration, args.profile, device)
    return 0


def _profile(iteration, rows: int, device: torch.device) -> None:
    """One more iteration under torch.profiler; the kernels (or CPU ops) by total time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        iteration()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60))


if __name__ == "__main__":
    sys.exit(main())
