"""A/B two or more forms of a CPU kernel in one process: lbs forward+backward steps at SMPL's
size, alternated between values of an environment variable that a temporary build reads.

    python tools/ab_env_steps.py VAR [--values ,1] [--batch 1] [--steps 300] [--case lbs]

The machine's speed drifts by 10-40 % between runs (2-core VM), so two builds timed in turn
cannot be compared. Instead, a temporary build reads ``getenv(VAR)`` at each call (a
``const bool`` inside the kernel's host function, never a ``static``) and takes the old form
or the new one; this loop sets VAR to each of ``--values`` in turn (an empty value unsets it),
one step each, the order reversed every other round, and prints each value's median, 20th
percentile and fastest step in ms. The steps run as the benchmark harness's calls do: four
rotating input sets (together beyond the L3 cache, so every step starts from cold inputs),
every leaf's gradient cleared before the step, the loss's gradient all ones. The switch is
removed before committing; the figures in the skinning contract's 2026-11-28 entries came from
this loop (``lbs`` at B = 1, 300 steps, run three or four times).

``--case skin_points`` times skin_points at lbs's shape instead (B = 32, SMPL's 6890 points).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from portrait_engine.benchmark.cases import skinning as cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("var", help="the environment variable the temporary build reads")
    parser.add_argument("--values", default=",1", help="comma-separated values ('' unsets)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--case", choices=("lbs", "skin_points"), default="lbs")
    args = parser.parse_args()
    values = args.values.split(",")

    generator = torch.Generator().manual_seed(0)
    if args.case == "lbs":
        case = cases._lbs_case("ab", args.batch, 6890)
    else:
        case = cases._skin_case("ab", args.batch, 6890, inverse=False)
    sets = []
    for _ in range(4):
        tensors, kwargs = case.make_inputs("cpu", torch.float32, generator)
        leaves = [t.requires_grad_() if t.is_floating_point() else t for t in tensors]
        sets.append((leaves, kwargs))
    fn = case.functions["native"]
    state = {"step": 0}

    def step() -> None:
        tensors, kwargs = sets[state["step"] % len(sets)]
        state["step"] += 1
        for tensor in tensors:
            tensor.grad = None
        out = fn(*tensors, **kwargs)
        out.backward(torch.ones_like(out))

    def select(value: str) -> None:
        if value:
            os.environ[args.var] = value
        else:
            os.environ.pop(args.var, None)

    for value in values:  # warm-up: allocator growth, first-call work
        select(value)
        for _ in range(10):
            step()
    times: dict[str, list[float]] = {value: [] for value in values}
    for round_index in range(args.steps):
        for value in values if round_index % 2 == 0 else values[::-1]:
            select(value)
            start = time.perf_counter()
            step()
            times[value].append(time.perf_counter() - start)
    for value in values:
        ordered = sorted(times[value])
        print(
            f"{args.var}={value!r}: median {1e3 * ordered[len(ordered) // 2]:.3f} ms, "
            f"p20 {1e3 * ordered[len(ordered) // 5]:.3f}, fastest {1e3 * ordered[0]:.3f}"
        )


if __name__ == "__main__":
    main()
