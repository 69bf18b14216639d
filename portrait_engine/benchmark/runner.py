"""Run benchmark cases for every provider and dtype; check, time, report, save."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from portrait_engine import __version__, _backend
from portrait_engine.benchmark import timing
from portrait_engine.benchmark.cases import OPS, PROVIDERS, Case

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Relative L2 error a provider may show against the float32 reference, per input dtype.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@dataclass
class BenchConfig:
    ops: list[str] = field(default_factory=lambda: list(OPS))
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    providers: list[str] = field(default_factory=lambda: list(PROVIDERS))
    quick: bool | None = None  # None: quick on the CPU, paper sizes on a GPU
    budget_s: float = 1.0
    out_dir: str | None = "benchmarks/results"
    check: bool = True
    seed: int = 0

    def resolved_quick(self) -> bool:
        return self.quick if self.quick is not None else torch.device(self.device).type == "cpu"


def relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = actual.detach().double()
    expected = expected.detach().double()
    if actual.shape != expected.shape:
        return math.inf
    if not torch.isfinite(actual).all():
        return math.inf
    denominator = expected.norm().item()
    difference = (actual - expected).norm().item()
    return difference / denominator if denominator > 0 else difference


def _provider_status(provider: str, device: torch.device, case: Case) -> tuple[bool, str]:
    if provider not in _backend.BACKENDS:  # eager / compiled / posed PyTorch: always runs
        return True, ""
    return _backend.backend_status(device, case.native_op)[provider]


def _forward_backward(fn, inputs, kwargs, grad_out):
    out = fn(*inputs, **kwargs)
    out.backward(grad_out)
    return out


def _timed_call(mode, fn, inputs, leaves, kwargs, grad_out):
    """The function the harness times for ``mode``: forward without autograd, or both passes."""
    if mode == "forward":

        def call():
            with torch.no_grad():
                return fn(*inputs, **kwargs)

        return call
    return lambda: _forward_backward(fn, leaves, kwargs, grad_out)


def _check(case: Case, provider: str, inputs, kwargs, dtype) -> str | None:
    """None when the provider agrees with the float32 reference, else what disagrees."""
    reference_inputs = [x.detach().float().requires_grad_() for x in inputs]
    expected = case.functions["torch"](*reference_inputs, **kwargs)
    grad_out = torch.randn_like(expected)
    expected.backward(grad_out)
    trial_inputs = [x.detach().clone().requires_grad_() for x in inputs]
    actual = case.functions[provider](*trial_inputs, **kwargs)
    actual.backward(grad_out.to(actual.dtype))
    tolerance = TOLERANCE[dtype]
    problems = []
    pairs = [("output", actual, expected)] + [
        (f"grad[{i}]", t.grad, r.grad)
        for i, (t, r) in enumerate(zip(trial_inputs, reference_inputs, strict=True))
    ]
    for name, got, want in pairs:
        error = math.inf if got is None else relative_l2(got, want)
        if not error <= tolerance:
            problems.append(f"{name} rel-L2 {error:.2e} > {tolerance:.0e}")
    return "; ".join(problems) or None


def _peak_memory_mb(fn, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def run_case(case: Case, config: BenchConfig, copy_gbps: float, progress=None) -> list[dict]:
    device = torch.device(config.device)
    rows = []
    for dtype_name in config.dtypes:
        dtype = DTYPES[dtype_name]
        generator = torch.Generator().manual_seed(config.seed)
        inputs, kwargs = case.make_inputs(device, dtype, generator)
        leaves = [x.requires_grad_() for x in inputs]
        with torch.no_grad():
            probe = case.functions["torch"](*[x.detach() for x in inputs], **kwargs)
        grad_out = torch.randn(probe.shape, generator=generator).to(device=device, dtype=dtype)
        del probe
        for provider in config.providers:
            if provider not in case.functions:
                continue  # the provider does not apply to this op
            base = dict(
                op=case.op,
                shape=case.shape,
                description=case.description,
                params=case.params,
                provider=provider,
                dtype=dtype_name,
            )
            ok, reason = _provider_status(provider, device, case)
            if not ok:
                rows.append({**base, "mode": "-", "status": f"unavailable: {reason}"})
                continue
            if progress is not None:
                progress(f"{case.op} {case.shape} {dtype_name} {provider}")
            fn = case.functions[provider]
            try:
                wrong = None
                if config.check and provider != "torch":
                    wrong = _check(case, provider, inputs, kwargs, dtype)
                if wrong is not None:
                    rows.append({**base, "mode": "-", "status": f"wrong: {wrong}"})
                    continue
                for mode in ("forward", "forward+backward"):
                    call = _timed_call(mode, fn, inputs, leaves, kwargs, grad_out)
                    result = timing.time_function(
                        call, device, budget_s=config.budget_s, grad_to_none=leaves
                    )
                    peak = _peak_memory_mb(call, device)
                    moved = case.bytes_moved(dtype, mode != "forward")
                    gbps = moved / (result.median_ms * 1e-3) / 1e9
                    rows.append(
                        {
                            **base,
                            "mode": mode,
                            "status": "ok",
                            "median_ms": result.median_ms,
                            "p20_ms": result.p20_ms,
                            "p80_ms": result.p80_ms,
                            "runs": result.runs,
                            "bytes_moved": moved,
                            "gbps": gbps,
                            "fraction_of_copy_bw": gbps / copy_gbps if copy_gbps else None,
                            "peak_memory_mb": peak,
                        }
                    )
            except Exception as error:  # a failing provider is reported, not fatal
                rows.append(
                    {**base, "mode": "-", "status": f"error: {type(error).__name__}: {error}"}
                )
            for leaf in leaves:
                leaf.grad = None
    _add_speedups(rows)
    return rows


def _add_speedups(rows: list[dict]) -> None:
    def median_of(row, provider):
        for other in rows:
            if (
                other["provider"] == provider
                and other["dtype"] == row["dtype"]
                and other["mode"] == row["mode"]
                and other["shape"] == row["shape"]
                and other["status"] == "ok"
            ):
                return other["median_ms"]
        return None

    for row in rows:
        if row["status"] != "ok":
            continue
        for provider, key in (
            ("torch", "speedup_vs_torch"),
            ("torch_compile", "speedup_vs_compile"),
        ):
            other = median_of(row, provider)
            row[key] = other / row["median_ms"] if other else None


def environment(device: torch.device, copy_gbps: float) -> dict:
    info = {
        "portrait_engine": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": timing.device_name(device),
        "device_type": device.type,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "copy_bandwidth_gbps": copy_gbps,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def run_benchmarks(config: BenchConfig, progress=None) -> dict:
    """Run every case of ``config.ops``; returns ``{"environment", "rows"}`` and saves it."""
    device = torch.device(config.device)
    unknown = [op for op in config.ops if op not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; known: {sorted(OPS)}")
    copy_gbps = timing.copy_bandwidth_gbps(device, 64 if device.type == "cpu" else 1024)
    rows = []
    for op in config.ops:
        for case in OPS[op](config.resolved_quick()):
            rows.extend(run_case(case, config, copy_gbps, progress))
    result = {
        "environment": environment(device, copy_gbps),
        "config": {**asdict(config), "quick": config.resolved_quick()},
        "rows": rows,
    }
    if config.out_dir:
        result["files"] = save(result, Path(config.out_dir))
    return result


def save(result: dict, root: Path) -> list[str]:
    folder = root / result["environment"]["device"]
    folder.mkdir(parents=True, exist_ok=True)
    stem = "quick" if result["config"]["quick"] else "full"
    json_path = folder / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    md_path = folder / f"{stem}.md"
    md_path.write_text(markdown(result))
    return [os.fspath(json_path), os.fspath(md_path)]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# Benchmarks on {env['device']}",
        "",
        f"portrait_engine {env['portrait_engine']}, torch {env['torch']}, "
        f"triton {env.get('triton')}, {env['threads']} threads, {env['date']}. "
        f"Measured copy bandwidth {env['copy_bandwidth_gbps']:.1f} GB/s.",
        "",
        "| op | shape | dtype | provider | mode | median ms | p20-p80 ms | GB/s | % copy BW "
        "| vs eager | vs compile | peak MiB | status |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        if r["status"] == "ok":
            lines.append(
                f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['provider']} | {r['mode']} "
                f"| {r['median_ms']:.3f} | {r['p20_ms']:.3f}-{r['p80_ms']:.3f} | {r['gbps']:.1f} "
                f"| {_fmt(r['fraction_of_copy_bw'] and 100 * r['fraction_of_copy_bw'], '.1f')} "
                f"| {_fmt(r.get('speedup_vs_torch'), '.2f')}x "
                f"| {_fmt(r.get('speedup_vs_compile'), '.2f')}x "
                f"| {_fmt(r['peak_memory_mb'], '.0f')} | ok |"
            )
        else:
            status = r["status"].replace("|", "/").replace("\n", " ")[:160]
            lines.append(
                f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['provider']} | - "
                f"| - | - | - | - | - | - | - | {status} |"
            )
    lines.append("")
    lines.append(
        "Shapes: "
        + "; ".join(sorted({f"{r['shape']}: {r['description']}" for r in result["rows"]}))
    )
    return "\n".join(lines) + "\n"
