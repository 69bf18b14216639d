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
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from portrait_engine.models.recognizability.model import (
    CONFIG_FILE,
    LATEST_FILE,
    MODEL_WEIGHTS,
    resolve_checkpoint,
)
from portrait_engine.training.checkpoint_io import (
    atomic_directory,
    flatten_optimizer,
    point_latest,
    prune_checkpoints,
    unflatten_optimizer,
    write_json,
)

HEAD_WEIGHTS = "head.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone each tensor on its own.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


# the generic pieces live in portrait_engine.training (shared with the 3DPortraitGAN trainer)
_flatten_optimizer = flatten_optimizer
_unflatten_optimizer = unflatten_optimizer
_write_json = write_json


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
    with atomic_directory(target) as tmp:
        _write_json(tmp / CONFIG_FILE, config)
        save_file(_contiguous(model_state), str(tmp / MODEL_WEIGHTS))
        save_file(_contiguous(head_state), str(tmp / HEAD_WEIGHTS))
        opt_tensors, opt_rest = _flatten_optimizer(optimizer_state)
        save_file(_contiguous(opt_tensors), str(tmp / OPTIMIZER_TENSORS))
        _write_json(tmp / OPTIMIZER_JSON, opt_rest)
        save_file(_contiguous(trainer_tensors), str(tmp / TRAINER_TENSORS))
        _write_json(tmp / TRAINER_JSON, trainer_json)
    point_latest(out_dir, name)
    prune_checkpoints(out_dir, keep, name)
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
