"""Atomic, resumable training checkpoints: safetensors + JSON in a directory.

A training output directory holds ``checkpoint-<step>/`` directories and a ``latest`` file
naming the newest. Each checkpoint directory holds:

- ``config.json``: the model config (``"model"``), the training config (``"train"``) and the
  number of classes;
- ``model.safetensors``: the :class:`RIModel` state (what :func:`load_for_inference` reads);
- ``head.safetensors``: the margin head (class prototypes, AdaFace statistics);
- ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's tensors, flattened to
  ``state.<param index>.<name>``, and the rest of its state dict;
- ``trainer.safetensors`` + ``trainer.json``: step, epoch and RNG states.

Atomicity: everything is written into a hidden temporary directory beside the target, flushed,
then renamed into place (``os.replace``); ``latest`` is replaced the same way, after the
directory exists. A crash at any point leaves the previous checkpoint and ``latest`` intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from portrait_engine.models.recognizability.model import (
    CONFIG_FILE,
    LATEST_FILE,
    MODEL_WEIGHTS,
    resolve_checkpoint,
)

HEAD_WEIGHTS = "head.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone each tensor on its own.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
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


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
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


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    *,
    config: dict,
    model_state: dict[str, torch.Tensor],
    head_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    trainer_tensors: dict[str, torch.Tensor],
    trainer_json: dict,
    keep: int = 2,
) -> Path:
    """Write ``out_dir/checkpoint-<step>`` atomically, point ``latest`` at it, and keep only the
    ``keep`` newest checkpoints. Returns the checkpoint directory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"checkpoint-{step:08d}"
    target = out_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the checkpoint from others
    try:
        _write_json(tmp / CONFIG_FILE, config)
        save_file(_contiguous(model_state), str(tmp / MODEL_WEIGHTS))
        save_file(_contiguous(head_state), str(tmp / HEAD_WEIGHTS))
        opt_tensors, opt_rest = _flatten_optimizer(optimizer_state)
        save_file(_contiguous(opt_tensors), str(tmp / OPTIMIZER_TENSORS))
        _write_json(tmp / OPTIMIZER_JSON, opt_rest)
        save_file(_contiguous(trainer_tensors), str(tmp / TRAINER_TENSORS))
        _write_json(tmp / TRAINER_JSON, trainer_json)
        for file in (MODEL_WEIGHTS, HEAD_WEIGHTS, OPTIMIZER_TENSORS, TRAINER_TENSORS):
            _fsync_file(tmp / file)
        if target.exists():  # a rerun of the same step: replace it
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = out_dir / f".{LATEST_FILE}.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, out_dir / LATEST_FILE)
    old = sorted(p for p in out_dir.glob("checkpoint-*") if p.is_dir() and p.name != name)
    for path in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    return target


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Everything :func:`save_checkpoint` wrote, from a checkpoint or training output
    directory: ``config``, ``model``, ``head``, ``optimizer``, ``trainer_tensors``,
    ``trainer`` and ``path``."""
    path = resolve_checkpoint(path)
    device = str(torch.device(map_location))
    missing = [
        f
        for f in (HEAD_WEIGHTS, OPTIMIZER_TENSORS, OPTIMIZER_JSON, TRAINER_TENSORS, TRAINER_JSON)
        if not (path / f).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"{path} is not a resumable checkpoint: it lacks {missing}")
    return {
        "path": path,
        "config": json.loads((path / CONFIG_FILE).read_text()),
        "model": load_file(str(path / MODEL_WEIGHTS), device=device),
        "head": load_file(str(path / HEAD_WEIGHTS), device=device),
        "optimizer": _unflatten_optimizer(
            load_file(str(path / OPTIMIZER_TENSORS), device=device),
            json.loads((path / OPTIMIZER_JSON).read_text()),
        ),
        "trainer_tensors": load_file(str(path / TRAINER_TENSORS)),
        "trainer": json.loads((path / TRAINER_JSON).read_text()),
    }


def has_checkpoint(out_dir: str | Path) -> bool:
    return (Path(out_dir) / LATEST_FILE).is_file()
