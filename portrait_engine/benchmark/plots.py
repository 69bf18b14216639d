"""PNG plots of one result (matplotlib, the ``plot`` extra); skipped without matplotlib.

One figure per op: for each shape, dtype and mode, a bar per provider — median time on a
log axis with its 20th-80th percentile as an error bar, and beside it the achieved fraction
of the measured copy bandwidth.
"""

from __future__ import annotations

from pathlib import Path


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plots(result: dict, folder: str | Path, stem: str) -> list[str]:
    """Paths of the PNGs written (``<stem>-<op>.png``); ``[]`` without matplotlib."""
    if not matplotlib_available():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    by_op: dict[str, list[dict]] = {}
    for row in result["rows"]:
        if row["status"] == "ok":
            by_op.setdefault(row["op"], []).append(row)
    written = []
    for op, rows in by_op.items():
        groups = list(dict.fromkeys((r["shape"], r["dtype"], r["mode"]) for r in rows))
        providers = list(dict.fromkeys(r["provider"] for r in rows))
        lookup = {(r["shape"], r["dtype"], r["mode"], r["provider"]): r for r in rows}
        width = 0.8 / max(1, len(providers))
        figure, (time_axis, bw_axis) = plt.subplots(
            1, 2, figsize=(max(8, 2.2 * len(groups) + 4), 4.5), layout="constrained"
        )
        for index, provider in enumerate(providers):
            xs, medians, low, high, fractions = [], [], [], [], []
            for g, group in enumerate(groups):
                row = lookup.get((*group, provider))
                if row is None:
                    continue
                xs.append(g + (index - (len(providers) - 1) / 2) * width)
                medians.append(row["median_ms"])
                low.append(row["median_ms"] - (row.get("p20_ms") or row["median_ms"]))
                high.append((row.get("p80_ms") or row["median_ms"]) - row["median_ms"])
                fractions.append(100 * (row.get("fraction_of_copy_bw") or 0))
            time_axis.bar(xs, medians, width, yerr=[low, high], capsize=2, label=provider)
            bw_axis.bar(xs, fractions, width, label=provider)
        labels = [f"{shape}\n{dtype}\n{mode}" for shape, dtype, mode in groups]
        for axis in (time_axis, bw_axis):
            axis.set_xticks(range(len(groups)), labels, fontsize=7)
        time_axis.set_yscale("log")
        time_axis.set_ylabel("median ms (p20-p80), lower is better")
        bw_axis.set_ylabel("% of measured copy bandwidth, higher is better")
        time_axis.legend(fontsize=7)
        figure.suptitle(f"{op} on {result['environment']['device']}")
        path = folder / f"{stem}-{op}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(str(path))
    return written
