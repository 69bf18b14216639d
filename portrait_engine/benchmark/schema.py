"""The result file's schema (``portrait_engine.bench/2``): what a JSON result holds.

A result is one JSON object::

    schema        "portrait_engine.bench/2"
    command       the command line that made it ("portrait-engine bench ...")
    elapsed_s     wall time of the whole run
    environment   versions, device, threads, date (and the copy bandwidth, also in ceilings),
                  extension: the native build flags (isa_clones=0: baseline CPU kernels only)
    ceilings      copy_bandwidth: {value GB/s, unit, what, timing}
                  matmul: {dtype name: {value TFLOP/s, unit, what, timing}}
    config        the BenchConfig of the run (ops, device, dtypes, providers, quick, ...)
    rows          one object per (op, shape, dtype, provider, mode) — see ROW_FIELDS
    files         paths written (present once saved)

Every row has the ``ROW_FIELDS`` keys; a row whose ``status`` is ``"ok"`` also has the
``TIMED_FIELDS`` keys (a value may be ``null`` where it does not apply, e.g. GB/s of an
end-to-end row). ``status`` is ``"ok"``, ``"wrong: <what disagreed>"`` (checked against the
reference and not timed), ``"unavailable: <why>"``, ``"skipped: <why>"`` (not timed in a
``--quick`` run) or ``"error: <exception>"``.

Version 1 files (no ``schema`` key, written before the ceilings and spread fields existed)
are upgraded on load, their missing values ``null``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

SCHEMA = "portrait_engine.bench/2"

ROW_FIELDS: dict[str, str] = {
    "op": "op name (or end-to-end step name)",
    "shape": "the case's short name",
    "description": "the sizes in words",
    "params": "the sizes as numbers",
    "kind": '"op" or "end-to-end"',
    "provider": "torch (eager reference), torch_compile, sdpa, triton, native",
    "dtype": "float32, float16 or bfloat16",
    "mode": 'forward, forward+backward (or "-" for a row that was not timed)',
    "status": "ok | wrong: ... | unavailable: ... | skipped: ... | error: ...",
}
TIMED_FIELDS: dict[str, str] = {
    "median_ms": "median time per call",
    "p20_ms": "20th percentile of the repeats",
    "p80_ms": "80th percentile of the repeats",
    "iqr_ms": "interquartile range of the repeats",
    "min_ms": "fastest repeat",
    "max_ms": "slowest repeat",
    "runs": "number of repeats",
    "calls_per_run": "calls averaged in one repeat",
    "timing_method": "cuda-events; perf_counter on a CPU (torch.utils.benchmark before 2026-11-26)",
    "rotating_sets": "input sets rotated between calls (together larger than the cache)",
    "bytes_moved": "bytes the op must move at least once (null: unknown)",
    "gbps": "bytes_moved / median time, GB/s",
    "fraction_of_copy_bw": "gbps / the measured copy bandwidth",
    "flops": "floating point operations per call (null: not counted)",
    "tflops": "flops / median time, TFLOP/s",
    "fraction_of_matmul": "tflops / the measured torch.mm rate of the dtype",
    "peak_memory_mb": "peak memory of one call above its inputs, MiB",
    "memory_method": "what peak_memory_mb measures",
    "check_error": "largest relative L2 error against the reference (null: not checked)",
    "speedup_vs_torch": "eager reference time / this time",
    "speedup_vs_compile": "torch.compile time / this time",
    "wall_s": "seconds the row took in all: check, warm-up, timing, memory",
}
TOP_FIELDS = ("schema", "command", "environment", "ceilings", "config", "rows")


class SchemaError(ValueError):
    """A result file that does not follow the schema; the message says where."""


def upgrade(result: dict) -> dict:
    """A version-1 result brought to the current schema (missing values ``None``)."""
    if result.get("schema") == SCHEMA:
        return result
    if "schema" in result:
        raise SchemaError(f"unknown result schema {result['schema']!r}; this reads {SCHEMA!r}")
    result = dict(result)
    copy = result.get("environment", {}).get("copy_bandwidth_gbps")
    result["schema"] = SCHEMA
    result.setdefault("command", None)
    result.setdefault(
        "ceilings",
        {
            "copy_bandwidth": {"value": copy, "unit": "GB/s", "what": "v1", "timing": {}},
            "matmul": {},
        },
    )
    rows = []
    for row in result.get("rows", []):
        row = {"kind": "op", **row}
        if row.get("status") == "ok":
            row = {**dict.fromkeys(TIMED_FIELDS), **row}
        rows.append(row)
    result["rows"] = rows
    return result


def validate(result: dict) -> dict:
    """``result`` itself when it follows the schema; else :class:`SchemaError`."""
    if not isinstance(result, dict):
        raise SchemaError(f"a result is a JSON object, got {type(result).__name__}")
    if result.get("schema") != SCHEMA:
        raise SchemaError(f"schema must be {SCHEMA!r}, got {result.get('schema')!r}")
    missing = [key for key in TOP_FIELDS if key not in result]
    if missing:
        raise SchemaError(f"result lacks {missing}")
    if not isinstance(result["rows"], list):
        raise SchemaError("rows must be a list")
    for index, row in enumerate(result["rows"]):
        needed = list(ROW_FIELDS) + (list(TIMED_FIELDS) if row.get("status") == "ok" else [])
        absent = [key for key in needed if key not in row]
        if absent:
            raise SchemaError(f"rows[{index}] ({row.get('op')} {row.get('shape')}) lacks {absent}")
        if row["status"] == "ok":
            median = row["median_ms"]
            if not (isinstance(median, int | float) and math.isfinite(median) and median > 0):
                raise SchemaError(f"rows[{index}] median_ms must be a positive number")
    return result


def dumps(result: dict) -> str:
    return json.dumps(validate(result), indent=2, default=str) + "\n"


def load(path: str | Path) -> dict:
    """Read, upgrade and validate one result file."""
    try:
        result = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise SchemaError(f"{path} is not JSON: {error}") from error
    return validate(upgrade(result))
