"""Time sample_importance alone (no merge) at EG3D's size: every backend against the eager one.

    python tools/time_sample_importance.py [--rays 65536] [--samples 48] [--draws 48]
                                           [--dtype float32] [--sweep]

The benchmark case ``sample_importance`` times the sampling and the merge together; this
isolates the sampling kernels (the warp-per-ray CUDA kernel, the Triton kernel with its
in-kernel sort). The three backends run interleaved, ``--repeats`` rounds, each round timed by
``triton.testing.do_bench`` on a GPU (a wall clock on the CPU); prints each backend's median over
the rounds and its speed-up over ``torch`` (the eager reference). ``--sweep`` also times the
Triton kernel at other (BLOCK_R, num_warps) for the sorted case, launched directly.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _timer(device: torch.device):
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=100)

    def wall(fn, iters=5):
        fn()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - start) / iters * 1e3

    return wall


def main() -> int:
    from portrait_engine import backend_status
    from portrait_engine.ops import sample_importance
    from portrait_engine.ops.reference import importance_uniforms

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rays", type=int, default=65536)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--draws", type=int, default=48)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    steps = torch.linspace(2.25, 3.3, args.samples).expand(args.rays, args.samples)
    depths = steps + torch.rand(args.rays, args.samples, generator=generator) * 1.05 / args.samples
    raw = torch.rand(args.rays, args.samples - 1, generator=generator) ** 4
    weights = raw / raw.sum(-1, keepdim=True) * 0.9
    depths = depths.reshape(1, args.rays, args.samples, 1).to(device, dtype)
    weights = weights.reshape(1, args.rays, args.samples - 1, 1).to(device, dtype)
    timer = _timer(device)
    status = backend_status(device.type, "sample_importance")
    # Triton on the CPU is the interpreter: nothing to time
    names = ("torch", "native", "triton") if device.type == "cuda" else ("torch", "native")
    backends = [name for name in names if status[name][0]]
    print(
        f"{device} {torch.cuda.get_device_name() if device.type == 'cuda' else ''} "
        f"{args.rays} rays, S={args.samples}, n={args.draws}, {args.dtype}"
    )
    for sort in (True, False):
        times = {name: [] for name in backends}
        for _ in range(args.repeats):
            for name in backends:

                def run(name=name, sort=sort):
                    return sample_importance(
                        depths,
                        weights,
                        args.draws,
                        generator=torch.Generator(device).manual_seed(1),
                        sort=sort,
                        backend=name,
                    )

                times[name].append(timer(run))
        eager = statistics.median(times["torch"])
        for name in backends:
            median = statistics.median(times[name])
            print(f"  sort={sort!s:5} {name:7} {median:8.4f} ms  x{eager / median:6.2f} vs torch")

    if args.sweep and device.type == "cuda" and status["triton"][0]:
        import triton

        from portrait_engine.kernels import importance as kernels

        flat_depths = depths.reshape(args.rays, args.samples)
        flat_weights = weights.reshape(args.rays, args.samples - 1)
        u = importance_uniforms(args.rays, args.draws, device=device)
        out = torch.empty(args.rays, args.draws, dtype=dtype, device=device)
        block_s = triton.next_power_of_2(max(args.samples - 3, 1))
        row_d = triton.next_power_of_2(args.draws)
        print(f"  Triton sorted in the kernel, (BLOCK_R, {row_d}, {block_s}) tiles:")
        for block_r in (1, 2, 4):
            for warps in (2, 4, 8):

                def launch(block_r=block_r, warps=warps):
                    kernels._sample_importance_kernel[(triton.cdiv(args.rays, block_r),)](
                        flat_depths,
                        flat_weights,
                        u,
                        out,
                        args.rays,
                        args.samples,
                        args.draws,
                        SORT=True,
                        SORT_IN_KERNEL=True,
                        BLOCK_R=block_r,
                        BLOCK_S=block_s,
                        BLOCK_D=row_d,
                        num_warps=warps,
                    )

                print(f"    BLOCK_R={block_r} warps={warps}: {timer(launch):8.4f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
