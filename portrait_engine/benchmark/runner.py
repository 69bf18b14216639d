"""Run benchmark cases for every provider and dtype: check, then time, then save.

For each case and dtype the runner draws fresh random inputs (several sets where one is
smaller than the cache, rotated between calls), computes the float32 reference once, checks
each provider against it at the benchmark's size (forward and every input gradient) and
times only those that agree; a provider that disagrees is reported ``wrong`` and not timed.
A reference that cannot run (out of memory, as the plain margin head at a million classes)
gets an ``error`` row, and the other providers are timed with an ``unchecked`` note.
"""

from __future__ import annotations

import datetime
import fnmatch
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from portrait_engine import __version__, _backend, _extension
from portrait_engine.benchmark import ceilings, memory, schema, timing
from portrait_engine.benchmark.cases import OPS, PROVIDERS, Case

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Relative L2 error a provider may show against the float32 reference, per input dtype.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
# Seconds of timing per row, and repeats at least, when the config does not say.
QUICK_BUDGET_S, FULL_BUDGET_S = 0.2, 1.0
QUICK_MIN_RUNS, FULL_MIN_RUNS = 5, 10
MAX_ROTATING_SETS = 8


@dataclass
class BenchConfig:
    ops: list[str] = field(default_factory=lambda: list(OPS))
    shapes: list[str] | None = None  # glob patterns on the case names; None: every case
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    providers: list[str] = field(default_factory=lambda: list(PROVIDERS))
    quick: bool | None = None  # None: quick on the CPU, paper sizes on a GPU
    budget_s: float | None = None  # seconds of timing per row; None: by size
    min_runs: int | None = None  # repeats per row at least; None: by size
    out_dir: str | None = "benchmarks/results"
    check: bool = True
    plots: bool = True
    rotate: bool = True  # rotate input sets that together exceed the cache
    quick_skip: bool = True  # honour the cases' quick_skip (rows too costly for quick runs)
    # CPU: keep freed memory in the process (memory.retain_cpu_memory; process-wide, for good)
    retain_memory: bool = False
    seed: int = 0
    command: str | None = None  # the command line, recorded in the result

    def resolved_quick(self) -> bool:
        return self.quick if self.quick is not None else torch.device(self.device).type == "cpu"

    def resolved_budget_s(self) -> float:
        if self.budget_s is not None:
            return self.budget_s
        return QUICK_BUDGET_S if self.resolved_quick() else FULL_BUDGET_S

    def resolved_min_runs(self) -> int:
        if self.min_runs is not None:
            return self.min_runs
        return QUICK_MIN_RUNS if self.resolved_quick() else FULL_MIN_RUNS


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


def _differentiable(inputs: list) -> list[torch.Tensor]:
    return [x for x in inputs if isinstance(x, torch.Tensor) and x.is_floating_point()]


def _check_random(case: Case, inputs: list) -> None:
    """Nothing is timed on constant inputs (zeros make some kernels look faster)."""
    for index, x in enumerate(inputs):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel() > 1:
            if x.detach().float().flatten()[:65536].std().item() == 0:
                raise ValueError(
                    f"case {case.op}/{case.shape}: input {index} is constant; benchmark "
                    "inputs must be random"
                )


def _input_bytes(inputs: list) -> int:
    return sum(x.numel() * x.element_size() for x in inputs if isinstance(x, torch.Tensor))


def rotating_sets(set_bytes: int, device: torch.device, rotate: bool = True) -> int:
    """How many input sets to rotate so that together they exceed twice the cache."""
    if not rotate or set_bytes <= 0:
        return 1
    cache = timing.cache_bytes(device.type, device.index or 0)
    return max(1, min(MAX_ROTATING_SETS, math.ceil(2 * cache / set_bytes)))


@dataclass
class _Reference:
    """The float32 reference's output and input gradients on input set 0."""

    output: torch.Tensor
    grads: list[torch.Tensor | None]
    grad_out: torch.Tensor
    mask: torch.Tensor | None = None  # the case's check_mask, when it has one


def _reference(case: Case, inputs: list, kwargs: dict, grad_out: torch.Tensor) -> _Reference:
    reference_inputs = [
        x.detach().float().requires_grad_() if x.is_floating_point() else x for x in inputs
    ]
    output = case.functions["torch"](*reference_inputs, **kwargs)
    grad_out = grad_out.float()
    mask = None
    if case.check_mask is not None:
        mask = case.check_mask(inputs, kwargs).to(output.device)
        grad_out = grad_out * mask
    output.backward(grad_out)
    grads = [x.grad if x.is_floating_point() else None for x in reference_inputs]
    return _Reference(output.detach(), grads, grad_out, mask)


def _check(
    case: Case, provider: str, inputs: list, kwargs: dict, dtype, reference: _Reference
) -> tuple[str | None, float]:
    """``(None, error)`` when the provider agrees with the float32 reference, else what
    disagrees; ``error`` is the largest relative L2 error seen."""
    trial_inputs = [
        x.detach().clone().requires_grad_() if x.is_floating_point() else x for x in inputs
    ]
    actual = case.functions[provider](*trial_inputs, **kwargs)
    actual.backward(reference.grad_out.to(actual.dtype))
    tolerance = case.tolerance if case.tolerance is not None else TOLERANCE[dtype]
    if reference.mask is None:
        pairs = [("output", actual, reference.output)]
    else:
        mask = reference.mask.expand_as(reference.output)
        pairs = [("output", actual.detach()[mask], reference.output[mask])]
    for i, (x, want) in enumerate(zip(trial_inputs, reference.grads, strict=True)):
        if want is not None:  # the reference's gradient w.r.t. this input exists
            pairs.append((f"grad[{i}]", x.grad, want))
    problems, worst = [], 0.0
    for name, got, want in pairs:
        error = math.inf if got is None else relative_l2(got, want)
        worst = max(worst, error)
        if not error <= tolerance:
            problems.append(f"{name} rel-L2 {error:.2e} > {tolerance:.0e}")
    return ("; ".join(problems) or None), worst


def _forward_backward(fn, inputs, kwargs, grad_out):
    out = fn(*inputs, **kwargs)
    out.backward(grad_out)
    return out


def _timed_call(mode, fn, inputs, kwargs, grad_out):
    """The function the harness times for ``mode``: forward without autograd, or both passes."""
    if mode == "forward":

        def call():
            with torch.no_grad():
                return fn(*inputs, **kwargs)

        return call
    return lambda: _forward_backward(fn, inputs, kwargs, grad_out)


def _rate(amount: float | None, median_ms: float, scale: float) -> float | None:
    return None if not amount else amount / (median_ms * 1e-3) / scale


def _timed_rows(case, mode, providers, sets, kwargs, grad_out, dtype, config, device, ceil):
    """One row per provider for ``mode``: the providers are timed together, their samples
    interleaved (timing.time_interleaved), then each one's peak memory is measured. Returns
    {provider: row or the exception its calls raised}."""
    calls = {
        name: [_timed_call(mode, fn, inputs, kwargs, grad_out) for inputs in sets]
        for name, fn in providers.items()
    }
    leaves = [x for inputs in sets for x in _differentiable(inputs)]
    results = timing.time_interleaved(
        calls,
        device,
        budget_s=config.resolved_budget_s(),
        min_runs=config.resolved_min_runs(),
        grad_to_none={name: leaves for name in calls},
    )
    with_backward = mode != "forward"
    moved = case.bytes_moved(dtype, with_backward)
    flops = case.flops(dtype, with_backward) if case.flops is not None else None
    copy_gbps = ceil["copy_bandwidth"]["value"]
    matmul = ceil["matmul"].get(str(dtype).removeprefix("torch."), {}).get("value")
    rows = {}
    for name, result in results.items():
        if isinstance(result, Exception):
            rows[name] = result
            continue
        mark = time.perf_counter()
        for leaf in leaves:
            leaf.grad = None
        try:
            peak_mb, memory_method = memory.peak_memory(calls[name][0], device)
        except Exception as error:  # noqa: BLE001 -- reported as this provider's error
            rows[name] = error
            continue
        finally:
            for leaf in leaves:
                leaf.grad = None
        gbps = _rate(moved, result.median_ms, 1e9)
        tflops = _rate(flops, result.median_ms, 1e12)
        rows[name] = {
            "mode": mode,
            "status": "ok",
            "median_ms": result.median_ms,
            "p20_ms": result.p20_ms,
            "p80_ms": result.p80_ms,
            "iqr_ms": result.iqr_ms,
            "min_ms": result.min_ms,
            "max_ms": result.max_ms,
            "runs": result.runs,
            "calls_per_run": result.calls_per_run,
            "timing_method": result.method,
            "rotating_sets": len(sets),
            "bytes_moved": moved,
            "gbps": gbps,
            "fraction_of_copy_bw": gbps / copy_gbps if gbps is not None and copy_gbps else None,
            "flops": flops,
            "tflops": tflops,
            "fraction_of_matmul": tflops / matmul if tflops is not None and matmul else None,
            "peak_memory_mb": peak_mb,
            "memory_method": memory_method,
            "wall_s": result.wall_s + time.perf_counter() - mark,
        }
    return rows


def _grad_out(case, inputs, kwargs, generator, device, dtype, skip=None) -> torch.Tensor:
    """A random output gradient shaped like the case's output (from the first provider, the
    reference unless ``skip`` names it, that runs)."""
    error = None
    for provider, fn in case.functions.items():
        if provider == skip:
            continue
        try:
            with torch.no_grad():
                shape = fn(*inputs, **kwargs).shape
        except Exception as failure:  # this provider cannot run here; try the next
            error = failure
            _release_memory(device)
            continue
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    raise RuntimeError(f"case {case.op}/{case.shape}: no provider runs") from error


def _release_memory(device: torch.device) -> None:
    """Free what a failed call (an out-of-memory error) left cached."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_case(case: Case, config: BenchConfig, ceil: dict, progress=None) -> list[dict]:
    """Every row of one case: per dtype and provider, checked, then timed per mode."""
    device = torch.device(config.device)
    rows = []
    for dtype_name in config.dtypes:
        dtype = DTYPES[dtype_name]
        generator = torch.Generator().manual_seed(config.seed)
        first, kwargs = case.make_inputs(device, dtype, generator)
        _check_random(case, first)
        sets = [first] + [
            case.make_inputs(device, dtype, generator)[0]
            for _ in range(rotating_sets(_input_bytes(first), device, config.rotate) - 1)
        ]
        for inputs in sets:
            for x in _differentiable(inputs):
                x.requires_grad_()
        reference, unchecked = None, None
        try:
            grad_out = _grad_out(case, first, kwargs, generator, device, dtype)
            if config.check and any(p != "torch" for p in config.providers):
                reference = _reference(case, first, kwargs, grad_out)
        except Exception as error:  # e.g. the plain reference running out of memory
            unchecked = f"reference failed ({type(error).__name__}: {error})"
            reference = None
            _release_memory(device)
            grad_out = _grad_out(case, first, kwargs, generator, device, dtype, skip="torch")
        # check every provider, then time those that agree with the reference together
        per_provider: dict[str, list[dict]] = {}
        timed: dict[str, tuple[dict, object]] = {}  # provider -> (row base, function)
        for provider in config.providers:
            if provider not in case.functions:
                continue  # the provider does not apply to this case
            base = dict(
                op=case.op,
                shape=case.shape,
                description=case.description,
                params=case.params,
                kind=case.kind,
                provider=provider,
                dtype=dtype_name,
            )
            out = per_provider.setdefault(provider, [])
            ok, reason = _provider_status(provider, device, case)
            if not ok:
                out.append({**base, "mode": "-", "status": f"unavailable: {reason}"})
                continue
            if config.resolved_quick() and config.quick_skip and provider in case.quick_skip:
                why = case.quick_skip[provider]
                out.append({**base, "mode": "-", "status": f"skipped: {why}"})
                continue
            if progress is not None:
                progress(f"{case.op} {case.shape} {dtype_name} {provider}: check")
            fn = case.functions[provider]
            mark = time.perf_counter()
            try:
                wrong, check_error = None, None
                if reference is not None and provider != "torch":
                    wrong, check_error = _check(case, provider, first, kwargs, dtype, reference)
            except Exception as error:  # a failing provider is reported, not fatal
                out.append(
                    {**base, "mode": "-", "status": f"error: {type(error).__name__}: {error}"}
                )
                _release_memory(device)
                continue
            if wrong is not None:
                out.append(
                    {**base, "mode": "-", "status": f"wrong: {wrong}", "check_error": check_error}
                )
                continue
            # the first timed row's wall time includes the check
            base.update(check_error=check_error, wall_s=time.perf_counter() - mark)
            if unchecked is not None and provider != "torch":
                base["unchecked"] = unchecked
            timed[provider] = (base, fn)
        for mode in case.modes:
            if not timed:
                break
            if progress is not None:
                progress(f"{case.op} {case.shape} {dtype_name} {mode}: {', '.join(timed)}")
            functions = {provider: fn for provider, (_, fn) in timed.items()}
            results = _timed_rows(
                case, mode, functions, sets, kwargs, grad_out, dtype, config, device, ceil
            )
            for provider, row in results.items():
                base = timed[provider][0]
                if isinstance(row, Exception):
                    status = f"error: {type(row).__name__}: {row}"
                    per_provider[provider].append({**base, "mode": "-", "status": status})
                    del timed[provider]  # as before: a provider that fails is not timed further
                    _release_memory(device)
                    continue
                wall_s = base.pop("wall_s", 0.0) + row.pop("wall_s")
                per_provider[provider].append({**base, **row, "wall_s": wall_s})
            for inputs in sets:
                for leaf in _differentiable(inputs):
                    leaf.grad = None
        for provider_rows in per_provider.values():
            rows.extend(provider_rows)
    add_speedups(rows)
    return rows


def add_speedups(rows: list[dict]) -> None:
    """``speedup_vs_torch`` / ``speedup_vs_compile`` of each timed row, within its group."""
    medians = {
        (r["op"], r["shape"], r["dtype"], r["mode"], r["provider"]): r["median_ms"]
        for r in rows
        if r["status"] == "ok"
    }
    for row in rows:
        if row["status"] != "ok":
            continue
        group = (row["op"], row["shape"], row["dtype"], row["mode"])
        for provider, key in (
            ("torch", "speedup_vs_torch"),
            ("torch_compile", "speedup_vs_compile"),
        ):
            other = medians.get((*group, provider))
            row[key] = other / row["median_ms"] if other else None


def _load_average() -> float | None:
    """The 1-minute load average: other work on the machine slows every row alike."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def environment(device: torch.device, copy_gbps: float, load_before: float | None) -> dict:
    info = {
        "portrait_engine": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": timing.device_name(device),
        "device_type": device.type,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cache_bytes": timing.cache_bytes(device.type, device.index or 0),
        "copy_bandwidth_gbps": copy_gbps,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": _load_average(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    # how the native kernels were built (isa_clones=0: CPU kernels for baseline x86-64 only)
    info["extension"] = _extension.build_info() or None
    return info


def _partial_path(config: BenchConfig, device: torch.device) -> Path | None:
    """``<out>/<device>/<stem>.partial.json``: the result so far (a valid result file with
    ``"partial": true``), rewritten after every case and removed once the whole result is
    saved, so a run stopped by a time limit keeps its rows."""
    if not config.out_dir:
        return None
    folder = Path(config.out_dir) / timing.device_name(device)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{'quick' if config.resolved_quick() else 'full'}.partial.json"


def run_benchmarks(config: BenchConfig, progress=None) -> dict:
    """Run every case of ``config.ops``; returns the result (see :mod:`.schema`), saved to
    ``config.out_dir/<device>/`` unless that is ``None``."""
    started = time.perf_counter()
    load_before = _load_average()
    device = torch.device(config.device)
    unknown = [op for op in config.ops if op not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; known: {sorted(OPS)}")
    bad_dtypes = [d for d in config.dtypes if d not in DTYPES]
    if bad_dtypes:
        raise ValueError(f"unknown dtype(s) {bad_dtypes}; known: {sorted(DTYPES)}")
    allocator = None
    if config.retain_memory and device.type == "cpu":
        allocator = memory.retain_cpu_memory()
    if progress is not None:
        progress("measuring the device's copy bandwidth and matrix rate")
    ceil = ceilings.measure_ceilings(
        device, [DTYPES[d] for d in config.dtypes], min(config.resolved_budget_s(), 0.5)
    )
    rows = []
    partial = _partial_path(config, device)

    def result_so_far() -> dict:
        return {
            "schema": schema.SCHEMA,
            "command": config.command,
            "elapsed_s": time.perf_counter() - started,
            "environment": {
                **environment(device, ceil["copy_bandwidth"]["value"], load_before),
                "allocator": allocator
                or ("cuda caching allocator" if device.type == "cuda" else "default"),
            },
            "ceilings": ceil,
            "config": {**asdict(config), "quick": config.resolved_quick()},
            "rows": rows,
        }

    for op in config.ops:
        for case in OPS[op](config.resolved_quick()):
            if config.shapes and not any(fnmatch.fnmatch(case.shape, p) for p in config.shapes):
                continue
            rows.extend(run_case(case, config, ceil, progress))
            if partial is not None:  # what a run stopped part-way leaves: a valid result
                partial.write_text(schema.dumps({**result_so_far(), "partial": True}))
    result = result_so_far()
    schema.validate(result)
    if config.out_dir:
        result["files"] = save(result, Path(config.out_dir), plots=config.plots)
        partial.unlink(missing_ok=True)
    return result


def save(result: dict, root: Path, plots: bool = True) -> list[str]:
    """Write ``<stem>.json``, ``<stem>.md`` and the plots under ``root/<device>/``."""
    from portrait_engine.benchmark import report
    from portrait_engine.benchmark.plots import write_plots

    folder = Path(root) / result["environment"]["device"]
    folder.mkdir(parents=True, exist_ok=True)
    stem = result_stem(result)
    written = []
    if plots:
        written += write_plots(result, folder, stem)
    result["files"] = [str(folder / f"{stem}.json"), str(folder / f"{stem}.md"), *written]
    (folder / f"{stem}.json").write_text(schema.dumps(result))
    (folder / f"{stem}.md").write_text(report.result_markdown(result, plots=written))
    return result["files"]


def result_stem(result: dict) -> str:
    return "quick" if result["config"]["quick"] else "full"
