"""The ``portrait-engine`` command: ``info`` and ``bench``."""

from __future__ import annotations

import argparse
import importlib
import platform
import shlex
import sys

import torch
from rich.console import Console
from rich.table import Table

import portrait_engine
from portrait_engine import _backend, _extension


def _gpu_details() -> list[dict]:
    """Name, memory, driver and clocks of each GPU, through NVML (nvidia-ml-py)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver on this machine
        return []
    details = []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            details.append(
                {
                    "index": index,
                    "name": pynvml.nvmlDeviceGetName(handle),
                    "memory_gib": memory.total / 2**30,
                    "driver": driver,
                    "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                    "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(
                        handle, pynvml.NVML_CLOCK_SM
                    ),
                    "memory_clock_mhz": pynvml.nvmlDeviceGetClockInfo(
                        handle, pynvml.NVML_CLOCK_MEM
                    ),
                }
            )
    finally:
        pynvml.nvmlShutdown()
    return details


def info(console: Console) -> int:
    versions = Table(title="portrait_engine", show_header=False)
    versions.add_row("portrait_engine", portrait_engine.__version__)
    versions.add_row("python", platform.python_version())
    versions.add_row("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    try:
        import triton

        versions.add_row("triton", triton.__version__)
    except ImportError:
        versions.add_row("triton", "not installed")
    loaded, reason = _extension.load()
    if loaded:
        flags = ", ".join(f"{k}={v}" for k, v in _extension.build_info().items())
        versions.add_row("extension", f"built: {flags}")
    else:
        versions.add_row("extension", f"[yellow]{reason}[/yellow]")
    versions.add_row("default backend", _backend.get_backend())
    console.print(versions)

    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    backends = Table(title="backends per device")
    backends.add_column("device")
    for name in _backend.BACKENDS:
        backends.add_column(name)
    backends.add_column("auto picks")
    for device in devices:
        status = _backend.backend_status(device)
        cells = [
            "[green]yes[/green]" if ok else f"[red]no[/red]: {why}" for ok, why in status.values()
        ]
        backends.add_row(device, *cells, _backend.resolve("auto", torch.device(device)))
    console.print(backends)

    gpus = _gpu_details()
    if gpus:
        table = Table(title="GPUs (NVML)")
        for column in (
            "index",
            "name",
            "memory",
            "driver",
            "SM clock",
            "max SM clock",
            "mem clock",
        ):
            table.add_column(column)
        for gpu in gpus:
            table.add_row(
                str(gpu["index"]),
                gpu["name"],
                f"{gpu['memory_gib']:.1f} GiB",
                gpu["driver"],
                f"{gpu['sm_clock_mhz']} MHz",
                f"{gpu['max_sm_clock_mhz']} MHz",
                f"{gpu['memory_clock_mhz']} MHz",
            )
        console.print(table)
    else:
        console.print("GPUs: none found (no NVIDIA driver reachable through NVML)")
    return 0


def _num(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _results_tables(result: dict) -> list[Table]:
    """One rich table per op: every provider, dtype and mode of its cases."""
    from portrait_engine.benchmark.report import short_ms, spread

    by_op: dict[str, list[dict]] = {}
    for row in result["rows"]:
        by_op.setdefault(row["op"], []).append(row)
    tables = []
    for op, rows in by_op.items():
        seconds = sum(r.get("wall_s") or 0 for r in rows)
        table = Table(title=f"{op} ({seconds:.0f} s)", title_justify="left")
        for column, justify in (
            ("shape", "left"),
            ("dtype", "left"),
            ("provider", "left"),
            ("mode", "left"),
            ("median ms", "right"),
            ("p20-p80", "right"),
            ("GB/s", "right"),
            ("% copy BW", "right"),
            ("vs eager", "right"),
            ("vs compile", "right"),
            ("peak MiB", "right"),
            ("status", "left"),
        ):
            table.add_column(column, justify=justify)
        for r in rows:
            if r["status"] == "ok":
                fraction = r.get("fraction_of_copy_bw")
                table.add_row(
                    r["shape"],
                    r["dtype"],
                    r["provider"],
                    r["mode"],
                    f"{r['median_ms']:.3f}",
                    spread(r),
                    _num(r.get("gbps"), ".2f"),
                    _num(None if fraction is None else 100 * fraction, ".1f"),
                    _num(r.get("speedup_vs_torch"), ".2f", "x"),
                    _num(r.get("speedup_vs_compile"), ".2f", "x"),
                    "-" if r.get("peak_memory_mb") is None else short_ms(r["peak_memory_mb"]),
                    "[green]ok[/green]",
                )
            else:
                kind = r["status"].split(":", 1)[0]
                colour = "yellow" if kind in ("unavailable", "skipped") else "red"
                table.add_row(
                    r["shape"],
                    r["dtype"],
                    r["provider"],
                    *["-"] * 8,
                    f"[{colour}]{kind}[/{colour}]",
                )
        tables.append(table)
    return tables


def _status_notes(result: dict) -> list[str]:
    """The reasons behind every row that did not run, once each."""
    notes = {}
    for r in result["rows"]:
        if r["status"] != "ok":
            notes.setdefault(f"{r['op']} {r['provider']}: {r['status']}", None)
    return list(notes)


def _compare_table(comparison: dict) -> Table:
    table = Table(title=f"A: {comparison['a']}\nB: {comparison['b']}", title_justify="left")
    for column, justify in (
        ("op", "left"),
        ("shape", "left"),
        ("dtype", "left"),
        ("provider", "left"),
        ("mode", "left"),
        ("A ms", "right"),
        ("B ms", "right"),
        ("speed-up A/B", "right"),
        ("note", "left"),
    ):
        table.add_column(column, justify=justify)
    for name, (a, b) in comparison["ceilings"].items():
        ratio = b / a if a and b else None
        table.add_row(
            f"[dim]{name}[/dim]",
            "",
            "",
            "",
            "",
            _num(a, ".3g"),
            _num(b, ".3g"),
            _num(ratio, ".2f"),
            "[dim]ceiling: B / A[/dim]",
        )
    for r in comparison["rows"]:
        speedup = r["speedup"]
        colour = (
            "green" if speedup and speedup >= 1.05 else "red" if speedup and speedup <= 0.95 else ""
        )
        cell = _num(speedup, ".2f", "x")
        table.add_row(
            r["op"],
            r["shape"],
            r["dtype"],
            r["provider"],
            r["mode"],
            _num(r["a_ms"], ".3f"),
            _num(r["b_ms"], ".3f"),
            f"[{colour}]{cell}[/{colour}]" if colour else cell,
            r["note"][:60],
        )
    return table


def bench(args: argparse.Namespace, console: Console) -> int:
    if args.compare:
        from portrait_engine.benchmark.compare import compare_files

        console.print(_compare_table(compare_files(*args.compare)))
        return 0
    if args.report:
        from portrait_engine.benchmark.report import write_benchmarks_markdown

        path = write_benchmarks_markdown(args.out, args.benchmarks_md)
        console.print(f"wrote {path} from {args.out}/*/*.json")
        return 0

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from portrait_engine.benchmark import BenchConfig, run_benchmarks
    from portrait_engine.benchmark.cases import OPS
    from portrait_engine.benchmark.plots import matplotlib_available
    from portrait_engine.benchmark.report import ceilings_line

    config = BenchConfig(
        ops=args.ops or list(OPS),
        shapes=args.shapes,
        device=args.device,
        dtypes=args.dtype,
        providers=args.providers,
        quick=True if args.quick else (False if args.full else None),
        budget_s=args.budget,
        min_runs=args.min_runs,
        out_dir=None if args.no_save else args.out,
        check=not args.no_check,
        plots=not args.no_plots,
        rotate=not args.no_rotate,
        quick_skip=not args.no_quick_skip,
        retain_memory=not args.system_malloc,
        command=args.command_line,
    )
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("benchmarking", total=None)
        result = run_benchmarks(
            config, progress=lambda text: progress.update(task, description=text)
        )
    env = result["environment"]
    console.print(
        f"[bold]{env['device']}[/bold]: {ceilings_line(result)} "
        f"{'Quick' if result['config']['quick'] else 'Paper'} sizes, "
        f"{result['elapsed_s']:.0f} s in all."
    )
    for table in _results_tables(result):
        console.print(table)
    for note in _status_notes(result):
        console.print(f"  [dim]{note}[/dim]")
    methods = sorted({r["memory_method"] for r in result["rows"] if r.get("memory_method")})
    for method in methods:
        console.print(f"  [dim]peak MiB: {method}[/dim]")
    if config.out_dir and config.plots and not matplotlib_available():
        console.print("  [dim]plots skipped: matplotlib is not installed (the `plot` extra)[/dim]")
    for path in result.get("files", []):
        console.print(f"wrote {path}")
    bad = [r for r in result["rows"] if r["status"].startswith(("wrong", "error"))]
    return 1 if bad else 0


# The model commands: (command, model) -> the module that implements `portrait-engine <command>
# <model>`. Each such module imports only light things at import time and defines
# `add_<command>_arguments(parser)` and `<command>_main(args, console) -> int`.
MODEL_COMMANDS: dict[tuple[str, str], str] = {
    ("train", "ri"): "portrait_engine.models.recognizability.commands",
    ("eval", "ri"): "portrait_engine.models.recognizability.eval_command",
    ("eval", "portrait"): "portrait_engine.models.portrait_gan.eval_command",
    ("train", "portrait"): "portrait_engine.models.portrait_gan.training.commands",
}
MODEL_COMMANDS.update(
    {
        (command, "portrait"): "portrait_engine.models.portrait_gan.commands"
        for command in ("generate", "orbit", "mesh", "predict-pose")
    }
)

_COMMAND_HELP = {"train": "train a model", "eval": "evaluate a trained model"}
_COMMAND_HELP.update(
    {
        "generate": "generate images",
        "orbit": "render a 360-degree orbit video",
        "mesh": "extract a mesh (.ply)",
        "predict-pose": "predict body poses of real images",
    }
)


def _add_model_commands(sub) -> None:
    for command in sorted({command for command, _ in MODEL_COMMANDS}):
        parser = sub.add_parser(command, help=_COMMAND_HELP.get(command, command))
        models = parser.add_subparsers(dest="model", required=True)
        for (cmd, model), module_name in sorted(MODEL_COMMANDS.items()):
            if cmd != command:
                continue
            module = importlib.import_module(module_name)
            doc = (module.__doc__ or "").strip().splitlines()
            model_parser = models.add_parser(model, help=doc[0] if doc else model)
            getattr(module, f"add_{command}_arguments")(model_parser)


def _run_model_command(args: argparse.Namespace, console: Console) -> int:
    module = importlib.import_module(MODEL_COMMANDS[(args.command, args.model)])
    return getattr(module, f"{args.command}_main")(args, console)


def build_parser() -> argparse.ArgumentParser:
    from portrait_engine.benchmark.cases import PROVIDERS

    parser = argparse.ArgumentParser(prog="portrait-engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, build flags, backends per device, GPUs")
    b = sub.add_parser("bench", help="time every op on every backend against the reference")
    b.add_argument("ops", nargs="*", help="ops to time (default: all)")
    b.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        metavar="GLOB",
        help="time only the cases whose size name matches one of these globs (e.g. '*-b4-128*')",
    )
    b.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    b.add_argument(
        "--dtype", nargs="+", default=["float32"], choices=["float32", "float16", "bfloat16"]
    )
    b.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=list(PROVIDERS))
    size = b.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (default on the CPU)")
    size.add_argument("--full", action="store_true", help="paper sizes (default on a GPU)")
    b.add_argument(
        "--budget", type=float, default=None, help="seconds of timing per row (default by size)"
    )
    b.add_argument("--min-runs", type=int, default=None, help="repeats per row at least")
    b.add_argument("--out", default="benchmarks/results", help="results root folder")
    b.add_argument("--no-save", action="store_true", help="print only, write no files")
    b.add_argument("--no-check", action="store_true", help="skip the correctness check")
    b.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    b.add_argument(
        "--no-rotate", action="store_true", help="time one input set (no cache-busting rotation)"
    )
    b.add_argument(
        "--no-quick-skip",
        action="store_true",
        help="time the rows that quick runs skip for their cost (e.g. torch.compile of the "
        "whole renderer: about a minute of compiling on 2 CPU cores)",
    )
    b.add_argument(
        "--system-malloc",
        action="store_true",
        help="CPU: leave glibc malloc's defaults (by default the benchmark process keeps freed "
        "memory, as the CUDA caching allocator does, so that no row times the first touch of "
        "fresh pages; see benchmark/memory.py)",
    )
    b.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="print the ratios between two result files and exit",
    )
    b.add_argument(
        "--report",
        action="store_true",
        help="regenerate BENCHMARKS.md from the result files under --out and exit",
    )
    b.add_argument("--benchmarks-md", default="BENCHMARKS.md", help="where --report writes")
    _add_model_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["portrait-engine", *argv])
    console = Console(width=None if sys.stdout.isatty() else 160)
    if args.command == "info":
        return info(console)
    if args.command == "bench":
        return bench(args, console)
    return _run_model_command(args, console)


if __name__ == "__main__":
    sys.exit(main())
