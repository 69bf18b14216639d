"""Assemble benchmark rows that runs stopped by a time limit left in ``*.partial.json`` files
into one result file (``full.json`` + ``full.md``) that ``portrait-engine bench --report`` reads.

    python tools/assemble_partial_results.py OUT_DIR ENV_JSON PARTIAL.json [PARTIAL.json ...]

A partial written since 2026-11-26 is already a whole result (``"partial": true``); older
partials hold only ``config`` and ``rows``, so the environment comes from ``ENV_JSON`` (what the
run's machine reported) and the copy-bandwidth ceiling is recovered from the rows themselves
(each timed row stores GB/s and its fraction of the measured copy bandwidth). Rows keep their
own figures; only ``speedup_vs_torch`` / ``speedup_vs_compile`` are recomputed across the
assembled rows (so torch.compile rows from one run and ours from another are compared).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from portrait_engine.benchmark import report, runner, schema


def _copy_bandwidth(rows: list[dict]) -> float | None:
    ratios = [
        r["gbps"] / r["fraction_of_copy_bw"]
        for r in rows
        if r.get("status") == "ok" and r.get("gbps") and r.get("fraction_of_copy_bw")
    ]
    return statistics.median(ratios) if ratios else None


def assemble(partials: list[dict], env: dict) -> dict:
    rows = [row for part in partials for row in part["rows"]]
    runner.add_speedups(rows)
    first = partials[0]
    if "environment" in first:
        environment, ceilings = first["environment"], first["ceilings"]
    else:
        copy = _copy_bandwidth(rows)
        environment = {**env, "copy_bandwidth_gbps": copy}
        ceilings = {
            "copy_bandwidth": {
                "value": copy,
                "unit": "GB/s",
                "what": "recovered from the rows' GB/s and fraction of copy bandwidth",
                "timing": {},
            },
            "matmul": {},
        }
    commands = [p.get("command") or p["config"].get("command") for p in partials]
    result = {
        "schema": schema.SCHEMA,
        "command": " ; ".join(c for c in commands if c),
        "elapsed_s": None,
        "environment": environment,
        "ceilings": ceilings,
        "config": {**first["config"], "assembled_from_partial_runs": len(partials)},
        "rows": rows,
    }
    return schema.validate(result)


def main(argv: list[str]) -> int:
    out_dir, env_path, *paths = argv
    partials = [json.loads(Path(p).read_text()) for p in paths]
    result = assemble(partials, json.loads(Path(env_path).read_text()))
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = "full" if not result["config"].get("quick") else "quick"
    (folder / f"{stem}.json").write_text(schema.dumps(result))
    (folder / f"{stem}.md").write_text(report.result_markdown(result))
    print(f"wrote {folder / stem}.json and .md: {len(result['rows'])} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
