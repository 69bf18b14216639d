"""The ``portrait-engine`` command: ``info`` and ``bench``."""

from __future__ import annotations

import argparse
import importlib
import platform
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


def _results_table(result: dict) -> Table:
    env = result["environment"]
    table = Table(title=f"{env['device']} — copy bandwidth {env['copy_bandwidth_gbps']:.1f} GB/s")
    for column, justify in (
        ("op", "left"),
        ("shape", "left"),
        ("dtype", "left"),
        ("provider", "left"),
        ("mode", "left"),
        ("median ms", "right"),
        ("GB/s", "right"),
        ("% copy BW", "right"),
        ("vs eager", "right"),
        ("vs compile", "right"),
        ("peak MiB", "right"),
        ("status", "left"),
    ):
        table.add_column(column, justify=justify)

    def num(value, spec, suffix=""):
        return "-" if value is None else format(value, spec) + suffix

    for r in result["rows"]:
        if r["status"] == "ok":
            fraction = r["fraction_of_copy_bw"]
            table.add_row(
                r["op"],
                r["shape"],
                r["dtype"],
                r["provider"],
                r["mode"],
                f"{r['median_ms']:.3f}",
                f"{r['gbps']:.1f}",
                num(fraction and 100 * fraction, ".1f"),
                num(r.get("speedup_vs_torch"), ".2f", "x"),
                num(r.get("speedup_vs_compile"), ".2f", "x"),
                num(r["peak_memory_mb"], ".0f"),
                "[green]ok[/green]",
            )
        else:
            kind = r["status"].split(":", 1)[0]
            colour = "yellow" if kind == "unavailable" else "red"
            table.add_row(
                r["op"],
                r["shape"],
                r["dtype"],
                r["provider"],
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                f"[{colour}]{kind}[/{colour}]",
            )
    return table


def _status_notes(result: dict) -> list[str]:
    """The reasons behind every row that did not run, once each."""
    notes = {}
    for r in result["rows"]:
        if r["status"] != "ok":
            notes.setdefault(f"{r['provider']}: {r['status']}", None)
    return list(notes)


def bench(args: argparse.Namespace, console: Console) -> int:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from portrait_engine.benchmark import BenchConfig, run_benchmarks
    from portrait_engine.benchmark.cases import OPS

    config = BenchConfig(
        ops=args.ops or list(OPS),
        device=args.device,
        dtypes=args.dtype,
        providers=args.providers,
        quick=True if args.quick else (False if args.full else None),
        budget_s=args.budget,
        out_dir=None if args.no_save else args.out,
        check=not args.no_check,
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
    console.print(_results_table(result))
    for note in _status_notes(result):
        console.print(f"  [dim]{note}[/dim]")
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
}

_COMMAND_HELP = {"train": "train a model", "eval": "evaluate a trained model"}


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
    b.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    b.add_argument(
        "--dtype", nargs="+", default=["float32"], choices=["float32", "float16", "bfloat16"]
    )
    b.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=list(PROVIDERS))
    size = b.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (default on the CPU)")
    size.add_argument("--full", action="store_true", help="paper sizes (default on a GPU)")
    b.add_argument("--budget", type=float, default=1.0, help="seconds of timing per row")
    b.add_argument("--out", default="benchmarks/results", help="results root folder")
    b.add_argument("--no-save", action="store_true", help="print only, write no files")
    b.add_argument("--no-check", action="store_true", help="skip the correctness check")
    _add_model_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    if args.command == "info":
        return info(console)
    if args.command == "bench":
        return bench(args, console)
    return _run_model_command(args, console)


if __name__ == "__main__":
    sys.exit(main())
