"""Time the Triton ray_march kernels' launch alternatives on a GPU (one prepared command).

    python tools/sweep_ray_march.py [--samples 48 96] [--out sweep.json]

Inputs at the issue's size (B=4, 128x128 rays, C=32, EG3D-like densities and sorted depths).
Stage 1 times ``BLOCK_R`` x ``num_warps`` at the current unroll and stages; stage 2 times the
loop unroll and ``num_stages`` at stage 1's best blocks. Each alternative's outputs are checked
against the current default launch (``kernels.rays.march_config``) before it is timed; times
are CUDA-event medians of ``--repeats`` calls of the kernel alone (no autograd, no allocation
of the inputs). Forward and backward are swept separately. The best of each is printed last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from functools import partial

import torch


def _inputs(samples: int, side: int, generator: torch.Generator):
    batch, rays, channels = 4, side * side, 32
    colors = torch.rand(batch, rays, samples, channels, generator=generator)
    densities = 4 * torch.randn(batch, rays, samples, 1, generator=generator)
    depths = torch.sort(
        2.25 + 0.9 * torch.rand(batch, rays, samples, 1, generator=generator), dim=2
    )
    depth_range = torch.stack([depths.values.min(), depths.values.max()])
    grad_rgb = torch.randn(batch, rays, channels, generator=generator)
    grad_depth = torch.randn(batch, rays, 1, generator=generator)
    move = lambda t: t.cuda().contiguous()  # noqa: E731
    return [move(t) for t in (colors, densities, depths.values, depth_range, grad_rgb, grad_depth)]


def _time(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _sweep(name: str, fn, default: dict, samples: int, repeats: int, results: list) -> None:
    """Stage 1 (blocks x warps), then stage 2 (unroll x stages) at stage 1's best."""
    reference = fn(default)

    def run(config: dict, stage: str) -> float:
        try:
            out = fn(config)
            err = max(
                float((o.double() - r.double()).abs().max() / r.double().abs().max())
                for o, r in zip(out, reference, strict=True)
            )
            ms = _time(lambda: fn(config), repeats) if err < 1e-4 else float("nan")
            status = "ok" if err < 1e-4 else f"wrong {err:.2e}"
        except Exception as error:  # noqa: BLE001 -- a config that fails is reported
            ms, status = float("nan"), f"failed: {str(error)[:160]}"
        row = dict(samples=samples, kernel=name, stage=stage, ms=ms, status=status, **config)
        results.append(row)
        print(json.dumps(row), flush=True)
        return ms

    default_ms = run(dict(default), "default")
    best = (default_ms, dict(default))
    for block_r, warps in itertools.product((8, 16, 32, 64), (1, 2, 4, 8)):
        config = dict(default, BLOCK_R=block_r, num_warps=warps)
        if config != default:
            ms = run(config, "blocks")
            if ms == ms and ms < best[0]:
                best = (ms, config)
    top = best[1]
    for unroll, stages in itertools.product((1, 2, 4), (1, 3)):
        config = dict(top, UNROLL=unroll, num_stages=stages)
        if config != top:
            ms = run(config, "loop")
            if ms == ms and ms < best[0]:
                best = (ms, config)
    print(f"BEST S={samples} {name}: {best[0]:.4f} ms {best[1]} (default {default_ms:.4f} ms)")


def main(argv: list[str] | None = None) -> int:
    from portrait_engine.kernels import rays

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[48])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--side", type=int, default=128, help="rays per image side")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    results: list[dict] = []
    for samples in args.samples:
        colors, densities, depths, depth_range, grad_rgb, grad_depth = _inputs(
            samples, args.side, torch.Generator().manual_seed(samples)
        )
        n_rays, channels = colors.shape[0] * colors.shape[1], colors.shape[3]
        inputs = (colors, densities, depths, depth_range)
        totals = rays.ray_march_forward(*inputs, False, True)[3]
        kernels = {
            "forward": partial(rays.ray_march_forward, *inputs, False, True),
            "backward": partial(
                rays.ray_march_backward, grad_rgb, grad_depth, None, *inputs, totals, False, True
            ),
        }
        for name, kernel in kernels.items():
            default = rays.march_config(n_rays, channels, backward=name == "backward")
            _sweep(name, lambda c, k=kernel: k(config=c), default, samples, args.repeats, results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
