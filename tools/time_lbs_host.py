"""Time lbs's host-side work on the CPU: a proxy, without a GPU, for lbs's wall time on one.

    python tools/time_lbs_host.py [--batch 1 32] [--vertices 12] [--rounds 12] [--threads 2]

At SMPL's size on an H100, native lbs forward+backward is bound by its host-side work, not by
its kernels: 0.37 ms of GPU kernels in 2.3 ms of wall time at B = 32, 0.25 ms in 1.9 ms at
B = 1 (`benchmarks/results/NVIDIA-H100-80GB-HBM3/logs-2026-11-27/`), and smplx's eager lbs
is as host-bound. A model of a few vertices with SMPL's 24-joint tree and 10 shape
coefficients leaves on the CPU almost nothing but that host-side work (Python, autograd,
dispatch), so the ratio eager / native here tracks the GPU's: on 2026-11-27 this gave
6.1-6.5x at B = 1 and 4.9x at B = 32 on the 2-core development machine, against 5.83x and
4.82x measured on the H100 that day. A change that cuts the time here cuts the H100's wall time
by about as much (what it does not show: the GPU's per-launch cost, about 5 µs a kernel).
With lbs's host-side work as one C++ op per direction (csrc/skinning/lbs_fused.cpp), the same
machine gave 10.98x at B = 1 and 7.4-8.4x at B = 32 (native 236 / 477 µs, from 394 / 666).

Runs native, torch (smplx's formulas) and a do-nothing autograd.Function with lbs's inputs (the
floor that a single autograd node cannot go below) interleaved, ``--rounds`` rounds of 150
forward+backward steps each, and prints each one's median and fastest round in µs per step.
The machine's speed drifts by tens of per cent between runs: compare builds in alternated runs.

On a GPU (``--device cuda --vertices 6890``: SMPL's size) the same loop measures the real
thing: each round ends with a synchronize, so a round's time per step is the throughput of
host and device together. ``--routes`` adds native with the shape part on the GPU's routes
until 2026-11-27 ("direct" for B = 1, "regressed" for B > NB),
``--fused`` adds native on the fused ops where the direct kernels would run (their A/B:
csrc/skinning/lbs_direct.h), ``--vertices-grad-only`` gives the joints no gradient (as the
benchmark harness), and
``--profile N`` ends with N native steps under torch.profiler: the ATen calls by host time and
the kernel launches per step.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from unittest import mock

import torch

from portrait_engine.ops import skinning
from portrait_engine.ops.reference import SMPL_PARENTS  # SMPL's 24-joint tree


def make_inputs(batch: int, vertices: int, generator: torch.Generator) -> list:
    joints, shapes = len(SMPL_PARENTS), 10

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator) * scale

    inputs = [
        randn(batch, shapes, scale=0.1),  # betas
        randn(batch, joints * 3, scale=0.2),  # pose (axis-angle)
        randn(vertices, 3),  # v_template
        randn(vertices, 3, shapes, scale=0.01),  # shapedirs
        randn((joints - 1) * 9, vertices * 3, scale=0.01),  # posedirs
        torch.rand(joints, vertices, generator=generator).softmax(1),  # J_regressor
        torch.tensor(SMPL_PARENTS),
        torch.rand(vertices, joints, generator=generator).softmax(1),  # lbs_weights
    ]
    for tensor in inputs:
        if tensor.is_floating_point():
            tensor.requires_grad_()
    return inputs


class _Floor(torch.autograd.Function):
    """lbs's autograd node with no work inside: empty outputs, empty gradients (so autograd
    still accumulates one gradient per model tensor, as for lbs)."""

    @staticmethod
    def forward(ctx, betas, pose, v_template, *rest):
        ctx.like = (betas, pose, v_template, *rest[:4])
        return betas.new_empty(pose.shape[0], v_template.shape[0], 3), betas.new_empty(
            pose.shape[0], len(SMPL_PARENTS), 3
        )

    @staticmethod
    def backward(ctx, grad_vertices, grad_joints):
        grads = (torch.empty_like(t) if t.requires_grad else None for t in ctx.like)
        return (*grads, None, None, None)


def main(argv: list[str] | None = None) -> int:
    from portrait_engine import ops

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--vertices", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--routes", action="store_true")
    parser.add_argument("--fused", action="store_true")
    parser.add_argument("--vertices-grad-only", action="store_true")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    for batch in args.batch:
        inputs = make_inputs(batch, args.vertices, torch.Generator().manual_seed(0))
        inputs = [t.detach().to(device).requires_grad_(t.requires_grad) for t in inputs]
        model = inputs[:6] + [inputs[7]]  # the autograd.Function order: weights before parents

        def backward(vertices, joints):
            if args.vertices_grad_only:
                vertices.backward(torch.ones_like(vertices))
            else:
                torch.autograd.backward(
                    (vertices, joints), (torch.ones_like(vertices), torch.ones_like(joints))
                )

        def lbs_step(backend, inputs=inputs, patch=None):
            patched = (
                functools.partial(mock.patch.object, skinning, *patch)
                if patch
                else contextlib.nullcontext
            )

            def run():
                for tensor in inputs:
                    tensor.grad = None
                with patched():
                    backward(*ops.lbs(*inputs, backend=backend))

            return run

        def floor_step(inputs=inputs, model=model):
            for tensor in inputs:
                tensor.grad = None
            backward(*_Floor.apply(*model, inputs[6], True, "native"))

        steps = {"native": lbs_step("native"), "torch": lbs_step("torch"), "floor": floor_step}
        if args.routes:
            steps["native-old-routes"] = lbs_step("native", patch=("_shape_route", _old_gpu_route))
        if args.fused:
            steps["native-fused"] = lbs_step("native", patch=("_DIRECT_DEVICES", ()))
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                for _ in range(10):
                    step()
                sync()
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                sync()
                times[name].append((time.perf_counter() - start) / args.steps * 1e6)
        median = {name: statistics.median(t) for name, t in times.items()}
        print(
            f"B={batch} V={args.vertices}: "
            + ", ".join(f"{n} {median[n]:.0f} us (min {min(times[n]):.0f})" for n in steps)
            + f"; torch / native {median['torch'] / median['native']:.2f}x"
        )
        if args.profile:
            _profile(steps["native"], args.profile, device, sync)
    return 0


def _old_gpu_route(name, betas, v_template) -> str:
    """The shape part's route on a GPU until 2026-11-27: "direct" up to NB shapes (B = 1
    included, now "rows"), "regressed" beyond (now "direct" up to 256 shapes)."""
    if v_template.dim() == 3 or betas.shape[0] <= betas.shape[1]:
        return "direct"
    return "regressed"


def _profile(step, count: int, device: torch.device, sync) -> None:
    """``count`` steps under torch.profiler after a warm-up: the top-level ATen and kernel ops
    by host time, and the kernel launches per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    for _ in range(20):
        step()
    with profile(activities=activities) as prof:
        for _ in range(count):
            step()
        sync()
    table = prof.key_averages().table(
        sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=120
    )
    print(table)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"device events (kernels and copies) per step: {len(kernels) / count:.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
