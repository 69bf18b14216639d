"""Time the native CPU kernels on each instruction-set path (SSE2 baseline, AVX2, AVX-512).

    python tools/time_cpu_isa.py [--isa baseline avx2 avx512] [--rounds 15] [--threads 2]

The extension compiles its hot range functions once per instruction set and picks one at run
time (csrc/cpu_math.h's cpu_isa(); PORTRAIT_ENGINE_CPU_ISA caps the choice). A machine only
runs the widest path it has, so a slow narrower path shows nowhere else: the development
machine and the CI runners have AVX-512, many users' CPUs (AMD before Zen 4, Intel client
cores) stop at AVX2. Each path is timed in its own process (the variable is read per call, but
one process per path keeps their allocator and cache states apart):

* ``triplane_sample`` forward and forward+backward: a tri-plane 1x3x32x128^2, 24576 uniform
  random points (the quick benchmark's size);
* ``render_rays`` (the fused renderer's kernel) forward and forward+backward: 1024 rays of 96
  samples, a tri-plane 1x3x32x64^2, EG3D's decoder 32 -> 64 -> 33.

Freed memory is kept in the process (``retain_cpu_memory``), as in the benchmarks. Prints
each path's median of ``--rounds`` calls in ms. A path the CPU lacks runs the widest one
it has (cpu_isa() caps, it does not emulate): the line says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = "--child"


def _median_ms(fn, rounds: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3


def child(rounds: int, threads: int) -> dict:
    import torch

    from portrait_engine.benchmark.memory import retain_cpu_memory
    from portrait_engine.nn import OSGDecoder
    from portrait_engine.ops import render_rays, triplane_sample

    retain_cpu_memory()  # as the benchmarks do: no first touch of fresh pages in the timings
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    results = {}

    planes = torch.randn(1, 3, 32, 128, 128, generator=generator).requires_grad_(True)
    points = (torch.rand(1, 32 * 32 * 24, 3, generator=generator) - 0.5).requires_grad_(True)

    def triplane_forward():
        with torch.no_grad():
            triplane_sample(planes, points, backend="native")

    def triplane_both():
        triplane_sample(planes, points, backend="native").sum().backward()

    results["triplane_sample forward"] = _median_ms(triplane_forward, rounds)
    results["triplane_sample fwd+bwd"] = _median_ms(triplane_both, rounds)

    rays, samples = 1024, 96
    planes = torch.randn(1, 3, 32, 64, 64, generator=generator).requires_grad_(True)
    points = (torch.rand(1, rays, samples, 3, generator=generator) - 0.5).requires_grad_(True)
    depths = torch.linspace(2.0, 3.0, samples).expand(1, rays, samples).unsqueeze(-1).contiguous()
    torch.manual_seed(0)
    decoder = OSGDecoder(32, 32)

    def render_forward():
        with torch.no_grad():
            render_rays(planes, points, depths, decoder, backend="native")

    def render_both():
        features, _, weights = render_rays(planes, points, depths, decoder, backend="native")
        (features.sum() + weights.sum()).backward()

    results["render_rays forward"] = _median_ms(render_forward, rounds)
    results["render_rays fwd+bwd"] = _median_ms(render_both, rounds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isa", nargs="+", default=["baseline", "avx2", "avx512"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.rounds, args.threads)))
        return
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, medians of {args.rounds}")
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    # what cpu_isa() requires of each path (csrc/cpu_math.h)
    needs = {
        "avx2": {"avx2", "fma"},
        "avx512": {"avx512f", "avx512vl", "avx512dq", "avx512bw", "fma"},
    }
    rows = {}
    for isa in args.isa:
        env = dict(os.environ, PORTRAIT_ENGINE_CPU_ISA=isa)
        command = [sys.executable, __file__, CHILD, "--rounds", str(args.rounds)]
        command += ["--threads", str(args.threads)]
        out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        rows[isa] = json.loads(out.stdout.strip().splitlines()[-1])
    for isa in args.isa:
        if isa in needs and flags and not needs[isa] <= flags:
            missing = " ".join(sorted(needs[isa] - flags))
            print(f"note: this CPU lacks {isa} ({missing}): that row ran the widest path it has")
    names = list(next(iter(rows.values())))
    print(f"{'path':<10}" + "".join(f"{name:>26}" for name in names))
    for isa, row in rows.items():
        print(f"{isa:<10}" + "".join(f"{row[name]:>23.2f} ms" for name in names))


if __name__ == "__main__":
    main()
