"""The trainers' shared progress bar (portrait_engine.training.progress)."""

from __future__ import annotations

import io

from rich.console import Console

from portrait_engine.training import training_progress


def test_progress_shows_steps_and_info():
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    with training_progress(console) as progress:
        task = progress.add_task("train tiny", total=4, info="")
        for step in range(4):
            progress.update(task, advance=1, info=f"loss {1.0 / (step + 1):.3f}")
    text = out.getvalue()
    assert "train tiny" in text
    assert "4/4" in text
    assert "loss 0.250" in text
