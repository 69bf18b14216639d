"""Atomic checkpoint directories and optimizer state as safetensors + JSON.

A training output directory holds ``checkpoint-<step>/`` directories and a ``latest`` file
naming the newest. :func:`atomic_directory` writes a checkpoint into a hidden temporary
directory beside the target, then renames it into place (``os.replace``);
:func:`point_latest` replaces ``latest`` the same way after the directory exists. A crash at
any point leaves the previous checkpoint and ``latest`` intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

LATEST_FILE = "latest"


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON and flush it to disk."""
    with open(path, "w") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on a clean exit it replaces ``target``
    (an existing one is removed first), on an exception it is deleted and ``target`` is
    untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the checkpoint from others
    try:
        yield tmp
        for file in tmp.iterdir():
            if file.is_file():
                fsync_file(file)
        if target.exists():  # a rerun of the same step: replace it
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def point_latest(out_dir: str | Path, name: str) -> None:
    """Atomically make ``out_dir/latest`` name the checkpoint directory ``name``."""
    out_dir = Path(out_dir)
    pointer = out_dir / f".{LATEST_FILE}.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, out_dir / LATEST_FILE)


def prune_checkpoints(out_dir: str | Path, keep: int, current: str) -> None:
    """Delete all but the ``keep`` newest ``checkpoint-*`` directories (never ``current``)."""
    out_dir = Path(out_dir)
    old = sorted(p for p in out_dir.glob("checkpoint-*") if p.is_dir() and p.name != current)
    for path in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer ``state_dict`` as ``(tensors, json)``: tensors named
    ``state.<param index>.<name>``, everything else JSON-serialisable."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {"param_groups": state_dict["param_groups"], "state": {}}
    for index, values in state_dict["state"].items():
        rest["state"][str(index)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value
                rest["state"][str(index)][name] = {"tensor": True}
            else:
                rest["state"][str(index)][name] = {"value": value}
    return tensors, rest


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """The inverse of :func:`flatten_optimizer`."""
    state = {}
    for index, values in rest["state"].items():
        state[int(index)] = {
            name: tensors[f"state.{index}.{name}"] if spec.get("tensor") else spec["value"]
            for name, spec in values.items()
        }
    # JSON turns tuples (Adam's betas) into lists; only "params" is a list in torch's groups
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in rest["param_groups"]
    ]
    return {"state": state, "param_groups": groups}
