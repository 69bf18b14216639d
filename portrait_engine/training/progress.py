"""The rich progress bar every trainer shows: description, bar, steps done of all, elapsed,
remaining, and a free ``info`` field (losses, images/s) the trainer updates each step."""

from __future__ import annotations


def training_progress(console):
    """A ``rich.progress.Progress`` for a training loop, printing on ``console``; its tasks
    need an ``info`` field (``progress.add_task(..., info="")``)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
