"""Ratios between two results (two commits, two devices): ``bench --compare A.json B.json``.

Rows are matched on (op, shape, dtype, provider, mode). ``speedup`` is A's median time over
B's: above 1, B is faster. Rows timed in only one of the two are listed with the reason.
"""

from __future__ import annotations

from pathlib import Path

from portrait_engine.benchmark import schema

KEY = ("op", "shape", "dtype", "provider", "mode")


def _key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY)


def compare(a: dict, b: dict) -> dict:
    """``{"rows": [...], "ceilings": {...}, "a": label, "b": label}``."""
    a_rows = {_key(r): r for r in a["rows"] if r["status"] == "ok"}
    b_rows = {_key(r): r for r in b["rows"] if r["status"] == "ok"}
    # untimed rows are keyed without their mode ("-"): they stand for both modes
    a_untimed = {_key(r)[:4]: r["status"] for r in a["rows"] if r["status"] != "ok"}
    b_untimed = {_key(r)[:4]: r["status"] for r in b["rows"] if r["status"] != "ok"}
    rows = []
    for key in list(a_rows) + [k for k in b_rows if k not in a_rows]:
        ra, rb = a_rows.get(key), b_rows.get(key)
        row = dict(zip(KEY, key, strict=True))
        row["a_ms"] = ra and ra["median_ms"]
        row["b_ms"] = rb and rb["median_ms"]
        row["speedup"] = ra["median_ms"] / rb["median_ms"] if ra and rb else None
        row["a_fraction_of_copy_bw"] = ra and ra.get("fraction_of_copy_bw")
        row["b_fraction_of_copy_bw"] = rb and rb.get("fraction_of_copy_bw")
        if ra is None:
            row["note"] = "A: " + a_untimed.get(key[:4], "absent")
        elif rb is None:
            row["note"] = "B: " + b_untimed.get(key[:4], "absent")
        else:
            row["note"] = ""
        rows.append(row)

    def copy_of(result):
        return result["ceilings"]["copy_bandwidth"]["value"]

    ceilings = {"copy_bandwidth_gbps": (copy_of(a), copy_of(b))}
    for dtype in sorted(set(a["ceilings"]["matmul"]) & set(b["ceilings"]["matmul"])):
        ceilings[f"{dtype}_matmul_tflops"] = (
            a["ceilings"]["matmul"][dtype]["value"],
            b["ceilings"]["matmul"][dtype]["value"],
        )
    return {"a": _label(a), "b": _label(b), "rows": rows, "ceilings": ceilings}


def _label(result: dict) -> str:
    env = result["environment"]
    return f"{env['device']} {env['date']} (portrait_engine {env['portrait_engine']})"


def compare_files(a_path: str | Path, b_path: str | Path) -> dict:
    return compare(schema.load(a_path), schema.load(b_path))


def compare_markdown(comparison: dict) -> str:
    def num(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [
        f"A: {comparison['a']}  ",
        f"B: {comparison['b']}",
        "",
        "| ceiling | A | B | B / A |",
        "|---|---:|---:|---:|",
    ]
    for name, (va, vb) in comparison["ceilings"].items():
        ratio = vb / va if va and vb else None
        lines.append(f"| {name} | {num(va, '.3g')} | {num(vb, '.3g')} | {num(ratio, '.2f')} |")
    lines += [
        "",
        "| op | shape | dtype | provider | mode | A ms | B ms | speed-up A/B | note |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in comparison["rows"]:
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['provider']} | {r['mode']} "
            f"| {num(r['a_ms'], '.3f')} | {num(r['b_ms'], '.3f')} | {num(r['speedup'], '.2f')} "
            f"| {r['note'][:80]} |"
        )
    return "\n".join(lines) + "\n"
