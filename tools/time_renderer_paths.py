"""Time ImportanceRenderer's fused path against its unfused ops, alternated in one process.

    python tools/time_renderer_paths.py [--rays 64] [--plane 256] [--trigrid] [--rounds 4]
                                        [--repeats 5] [--threads 2] [--backend native]

``ImportanceRenderer(fused=None)`` picks one of the two on the planes' device (``use_fused``).
The fused path (``render_rays``) keeps no per-sample intermediates but decodes more samples:
the coarse ones again in the fine pass, and every sample again in its backward. Which path is
faster depends on where the time goes (arithmetic on a CPU, memory traffic on a GPU), so this
times both at one size, in three modes:

* ``infer``: forward under ``no_grad``;
* ``planes``: forward + backward to the planes only (the decoder frozen: the benchmark's
  ``renderer`` case, GAN inversion);
* ``train``: forward + backward to the planes and the decoder's weights (generator training).

B = 1, ``--rays``² rays on EG3D's FFHQ camera, 48 + 48 samples, EG3D's decoder (C = 32), a
tri-plane 3×32×plane² (``--trigrid``: 3×32×3×plane², PanoHead's axes). Each round times every
(mode, path) pair for ``--repeats`` calls after two warm-up calls; the paths alternate within a
round so that a change of machine speed hits both. Prints each pair's median per round (ms).
Freed memory is kept in the process (``retain_cpu_memory``), as in the benchmarks.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from portrait_engine import use_backend
from portrait_engine.benchmark.memory import retain_cpu_memory
from portrait_engine.nn import ImportanceRenderer, OSGDecoder

MODES = ("infer", "planes", "train")
PATHS = {"unfused": False, "fused": True}


def _scene(rays: int, plane: int, trigrid: bool):
    torch.manual_seed(0)
    shape = (1, 3, 32, 3, plane, plane) if trigrid else (1, 3, 32, plane, plane)
    planes = torch.randn(shape)
    decoder = OSGDecoder(32, 32)
    pixels = (torch.rand(1, rays, 2) - 0.5) * 0.35
    directions = torch.cat([pixels, torch.ones(1, rays, 1)], -1)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = torch.tensor([0.0, 0.0, -2.7]).expand(1, rays, 3).contiguous()
    return planes, decoder, origins, directions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rays", type=int, default=64, help="rays per side (rays² rays)")
    parser.add_argument("--plane", type=int, default=256, help="plane side")
    parser.add_argument("--trigrid", action="store_true", help="a 3-deep tri-grid")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="native")
    args = parser.parse_args()
    retain_cpu_memory()
    torch.set_num_threads(args.threads)
    planes, decoder, origins, directions = _scene(args.rays**2, args.plane, args.trigrid)
    renderer = ImportanceRenderer(
        depth_resolution=48,
        depth_resolution_importance=48,
        box_warp=1.0,
        plane_axes="panohead" if args.trigrid else "eg3d",
    )

    def call(mode: str) -> None:
        planes.grad = None
        for parameter in decoder.parameters():
            parameter.grad = None
        planes.requires_grad_(mode != "infer")
        decoder.requires_grad_(mode == "train")
        generator = torch.Generator().manual_seed(0)
        with use_backend(args.backend), torch.set_grad_enabled(mode != "infer"):
            rgb = renderer(planes, decoder, origins, directions, generator=generator)[0]
            if mode != "infer":
                rgb.sum().backward()

    medians: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for mode in MODES:
            for path, fused in PATHS.items():
                renderer.fused = fused
                call(mode)
                call(mode)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    call(mode)
                    times.append(1e3 * (time.perf_counter() - start))
                medians.setdefault((mode, path), []).append(statistics.median(times))
    kind = "tri-grid 3x32x3" if args.trigrid else "tri-plane 3x32"
    print(
        f"{args.rays}^2 rays x 48+48, {kind}x{args.plane}^2, {args.backend}, "
        f"{args.threads} threads; medians of {args.repeats} per round (ms)"
    )
    for (mode, path), values in medians.items():
        print(f"{mode:7s} {path:8s} " + " ".join(f"{v:7.1f}" for v in values))


if __name__ == "__main__":
    main()
