"""Markdown: the full table of one result, and BENCHMARKS.md from the committed results."""

from __future__ import annotations

import os
from pathlib import Path

from portrait_engine.benchmark import schema

# Providers that are this project's kernels (the others are PyTorch baselines).
OURS = ("native", "triton")


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _percent(fraction) -> str:
    return _fmt(None if fraction is None else 100 * fraction, ".1f", " %")


def _mib(value) -> str:
    return "-" if value is None else short_ms(value)


def ceilings_line(result: dict) -> str:
    ceil = result["ceilings"]
    copy = ceil["copy_bandwidth"]
    parts = [f"copy bandwidth {_fmt(copy['value'], '.1f')} GB/s ({copy['what']})"]
    for dtype, rate in ceil.get("matmul", {}).items():
        parts.append(f"{dtype} matrix rate {_fmt(rate['value'], '.3g')} TFLOP/s ({rate['what']})")
    return "Ceilings measured in this run: " + "; ".join(parts) + "."


def environment_line(result: dict) -> str:
    env = result["environment"]
    return (
        f"portrait_engine {env['portrait_engine']}, torch {env['torch']}, "
        f"triton {env.get('triton')}, {env['threads']} threads, {env['date']}"
        + (f", {result['elapsed_s']:.0f} s in all" if result.get("elapsed_s") else "")
        + _load_text(env)
        + _cache_text(env)
        + _build_text(env)
        + _allocator_text(env)
        + "."
    )


def _allocator_text(env: dict) -> str:
    if env.get("device_type") != "cpu" or "allocator" not in env:
        return ""  # a GPU, or a result from before the allocator was recorded
    if env["allocator"] == "default":
        return "; glibc malloc at its defaults (freed blocks go back to the kernel)"
    return "; freed CPU memory kept in the process (`--system-malloc` not given)"


def _cache_text(env: dict) -> str:
    # the CPU machines lent as "cpu-x86_64-2threads" are not all one model (on 2026-11-26 a
    # 32 MiB last-level cache, on 2026-11-27 300 MiB, with other bandwidths and ratios): the
    # cache size tells their results apart
    cache = env.get("cache_bytes")
    if env.get("device_type") != "cpu" or not cache:
        return ""
    return f"; last-level cache {cache / 2**20:.0f} MiB"


def _build_text(env: dict) -> str:
    build = env.get("extension") or {}
    if env.get("device_type") == "cpu" and build.get("isa_clones") == "0":
        return "; native CPU kernels built without their AVX2 / AVX-512 clones (baseline x86-64)"
    return ""


def _load_text(env: dict) -> str:
    before, after = env.get("load_average_before"), env.get("load_average_after")
    if before is None or after is None:
        return ""
    return (
        f"; load average {before:.1f} before and {after:.1f} after the run"
        f" on {env.get('cpu_count')} logical CPUs"
    )


def short_ms(value: float) -> str:
    """Milliseconds with three significant digits, never in exponent form."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def spread(row: dict) -> str:
    """The 20th-80th percentile range of a timed row, e.g. ``41.1-48.0``."""
    if row.get("p20_ms") is None:
        return "-"
    return f"{short_ms(row['p20_ms'])}-{short_ms(row['p80_ms'])}"


def result_markdown(result: dict, plots: list[str] | None = None) -> str:
    """The full table of one result: every row, grouped by op."""
    env = result["environment"]
    lines = [f"# Benchmarks on {env['device']}", ""]
    if result.get("command"):
        lines += [f"Command: `{result['command']}`", ""]
    lines += [environment_line(result), "", ceilings_line(result), ""]
    methods = sorted({r["memory_method"] for r in result["rows"] if r.get("memory_method")})
    if methods:
        lines += ["Peak memory: " + "; ".join(methods) + ".", ""]
    lines += [
        "Time is the median per call; spread is its 20th-80th percentile over the repeats. "
        "GB/s counts the bytes the op must move at least once.",
        "",
    ]
    by_op: dict[str, list[dict]] = {}
    for row in result["rows"]:
        by_op.setdefault(row["op"], []).append(row)
    for op, rows in by_op.items():
        lines += [
            f"## {op}",
            "",
            "| shape | dtype | provider | mode | median ms | p20-p80 ms | GB/s | % copy BW "
            "| vs eager | vs compile | peak MiB | status |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            if r["status"] == "ok":
                lines.append(
                    f"| {r['shape']} | {r['dtype']} | {r['provider']} | {r['mode']} "
                    f"| {r['median_ms']:.3f} | {spread(r)} | {_fmt(r.get('gbps'), '.2f')} "
                    f"| {_percent(r.get('fraction_of_copy_bw'))} "
                    f"| {_fmt(r.get('speedup_vs_torch'), '.2f', 'x')} "
                    f"| {_fmt(r.get('speedup_vs_compile'), '.2f', 'x')} "
                    f"| {_mib(r.get('peak_memory_mb'))} | ok |"
                )
            else:
                status = r["status"].replace("|", "/").replace("\n", " ")[:160]
                lines.append(
                    f"| {r['shape']} | {r['dtype']} | {r['provider']} | - "
                    f"| - | - | - | - | - | - | - | {status} |"
                )
        shapes = sorted({f"`{r['shape']}`: {r['description']}" for r in rows})
        lines += ["", "Shapes: " + "; ".join(shapes) + ".", ""]
        for plot in plots or []:
            if Path(plot).name.endswith(f"-{op}.png"):
                lines += [f"![{op}]({Path(plot).name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def summary_rows(result: dict) -> list[dict]:
    """Per (op, shape, dtype, mode): eager, torch.compile and the fastest of our kernels."""
    groups: dict[tuple, dict[str, dict]] = {}
    for row in result["rows"]:
        if row["status"] == "ok":
            key = (row["op"], row["shape"], row["dtype"], row["mode"])
            groups.setdefault(key, {})[row["provider"]] = row
    summary = []
    for (op, shape, dtype, mode), by_provider in groups.items():
        ours = [by_provider[p] for p in OURS if p in by_provider]
        best = min(ours, key=lambda r: r["median_ms"]) if ours else None
        eager = by_provider.get("torch")
        compiled = by_provider.get("torch_compile")
        summary.append(
            dict(
                op=op,
                shape=shape,
                description=next(iter(by_provider.values()))["description"],
                dtype=dtype,
                mode=mode,
                eager_ms=eager and eager["median_ms"],
                compile_ms=compiled and compiled["median_ms"],
                best=best and best["provider"],
                best_ms=best and best["median_ms"],
                vs_eager=best and best.get("speedup_vs_torch"),
                vs_compile=best and best.get("speedup_vs_compile"),
                fraction_of_copy_bw=best and best.get("fraction_of_copy_bw"),
                peak_memory_mb=best and best.get("peak_memory_mb"),
            )
        )
    return summary


def summary_markdown(result: dict) -> list[str]:
    lines = [
        "| op | shape | dtype | mode | eager ms | torch.compile ms | ours (fastest) | ours ms "
        "| vs eager | vs compile | % copy BW | peak MiB |",
        "|---|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in summary_rows(result):
        lines.append(
            f"| {s['op']} | {s['description'] or s['shape']} | {s['dtype']} | {s['mode']} "
            f"| {_fmt(s['eager_ms'], '.3f')} | {_fmt(s['compile_ms'], '.3f')} "
            f"| {s['best'] or '-'} | {_fmt(s['best_ms'], '.3f')} "
            f"| {_fmt(s['vs_eager'], '.2f', 'x')} | {_fmt(s['vs_compile'], '.2f', 'x')} "
            f"| {_percent(s['fraction_of_copy_bw'])} | {_mib(s['peak_memory_mb'])} |"
        )
    return lines


BENCHMARKS_INTRO = """\
# Benchmarks

<!-- Generated by `portrait-engine bench --report` from benchmarks/results/*/*.json; do not
edit by hand: rerun the command after committing new results. -->

The latest committed results per device, with the command that made them. Every provider was
checked against the plain-PyTorch reference at the benchmark's size before it was timed (a
provider that disagrees is reported wrong and not timed). "vs eager" and "vs compile" are
speed-ups of our fastest kernel against the eager reference and `torch.compile` of it, on the
same machine in the same run; "% copy BW" is the achieved bandwidth as a fraction of the
device-to-device copy bandwidth measured in that run. Full tables (every provider, the spread
of the repeats) and plots are linked under each device.
"""


def _current_tolerance(op: str, shape: str, quick: bool) -> float | None:
    """The check tolerance a case has today (None: the dtype default, or no such case)."""
    from portrait_engine.benchmark.cases import OPS

    if op not in OPS:
        return None
    for case in OPS[op](quick):
        if case.shape == shape:
            return case.tolerance
    return None


def _retolerated(row: dict, quick: bool) -> str:
    """For a row reported wrong against a tolerance its case has since raised: a note that the
    check would pass today (the committed result itself is left as it was measured)."""
    error = row.get("check_error")
    if not row["status"].startswith("wrong") or error is None:
        return ""
    tolerance = _current_tolerance(row["op"], row["shape"], quick)
    if tolerance is None or not error <= tolerance:
        return ""
    return (
        f" [worst rel-L2 {error:.2e} is within the case's tolerance of today, {tolerance:.0e}: "
        "the check would pass; rerun to time the row]"
    )


def benchmarks_markdown(results_root: str | Path, relative_to: str | Path = ".") -> str:
    """BENCHMARKS.md: one section per committed result file under ``results_root``."""
    root = Path(results_root)
    lines = [BENCHMARKS_INTRO]
    files = sorted(root.glob("*/*.json"))
    has_gpu = False
    for path in files:
        try:
            result = schema.load(path)
        except schema.SchemaError as error:
            lines += [f"## {path.parent.name} ({path.stem})", "", f"Unreadable: {error}", ""]
            continue
        env = result["environment"]
        has_gpu |= env.get("device_type") == "cuda"
        link = os.path.relpath(path.with_suffix(".md"), relative_to)
        size = "quick sizes" if result["config"].get("quick") else "paper sizes"
        lines += [
            f"## {env['device']} ({size})",
            "",
            f"Command: `{result.get('command') or 'not recorded (schema v1 file)'}`. "
            f"Full table: [{link}]({link}); raw data `{path.name}`"
            + (f", log `{path.stem}.log`" if path.with_suffix(".log").exists() else "")
            + ".",
            "",
            environment_line(result),
            "",
            ceilings_line(result),
            "",
            *summary_markdown(result),
            "",
        ]
        rows_by_status: dict[str, list[str]] = {}
        quick = bool(result["config"].get("quick"))
        for r in result["rows"]:
            if r["status"] != "ok":
                where = f"{r['op']} {r['shape']} {r['provider']}"
                status = r["status"][:200] + _retolerated(r, quick)
                rows_by_status.setdefault(status, []).append(where)
        if rows_by_status:
            notes = []
            for status, where in sorted(rows_by_status.items()):
                more = f" and {len(where) - 3} more" if len(where) > 3 else ""
                notes.append(f"- {status} ({', '.join(where[:3])}{more})")
            lines += ["Rows not timed:", "", *notes, ""]
    if not files:
        lines += ["No committed results yet: run `portrait-engine bench`.", ""]
    if not has_gpu:
        lines += [
            "## GPU",
            "",
            "Not yet measured: no GPU has been available to this project so far. On one, run "
            "`portrait-engine bench --dtype float32 bfloat16` (paper sizes by default on a GPU) "
            "and commit `benchmarks/results/<gpu>/` with the raw log, then "
            "`portrait-engine bench --report`.",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def write_benchmarks_markdown(results_root: str | Path, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(benchmarks_markdown(results_root, relative_to=path.parent))
    return path
