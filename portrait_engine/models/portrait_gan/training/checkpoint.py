"""Resumable 3DPortraitGAN training checkpoints: safetensors + JSON in a directory.

A training output directory holds ``checkpoint-<step>/`` directories and a ``latest`` file
naming the newest (written atomically, :mod:`portrait_engine.training`). Each holds:

- ``networks.safetensors``: ``G``, ``G_ema``, ``D`` and ``D_ema`` in the format of
  :mod:`portrait_engine.models.portrait_gan.checkpoint` (so ``generate portrait --checkpoint
  .../networks.safetensors`` renders with ``G``, or ``G_ema`` where only it is asked for);
- ``config.json``: the model config (``"model"``), the training config (``"train"``), the
  world size and the data description;
- ``optimizer_G`` / ``optimizer_D`` ``.safetensors`` + ``.json``: both Adam states;
- ``trainer.safetensors`` + ``trainer.json``: RNG states, step, images seen, schedule values.

Every per-step random draw is seeded from ``(seed, step, rank)``, and the data order from
``(seed, epoch)``, so restoring these files continues a run exactly. Loading a damaged or
incomplete checkpoint raises :class:`~portrait_engine.models.portrait_gan.CheckpointError`
naming the file, before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from portrait_engine.models.portrait_gan.checkpoint import (
    CheckpointError,
    load_state,
    read_checkpoint,
    save_checkpoint,
)
from portrait_engine.models.portrait_gan.config import PortraitGANConfig
from portrait_engine.training import (
    LATEST_FILE,
    atomic_directory,
    flatten_optimizer,
    point_latest,
    prune_checkpoints,
    unflatten_optimizer,
    write_json,
)

NETWORKS = "networks.safetensors"
CONFIG = "config.json"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"
MODULES = ("G", "G_ema", "D", "D_ema")
FILES = (
    NETWORKS,
    CONFIG,
    "optimizer_G.safetensors",
    "optimizer_G.json",
    "optimizer_D.safetensors",
    "optimizer_D.json",
    TRAINER_TENSORS,
    TRAINER_JSON,
)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def has_checkpoint(out_dir: str | Path) -> bool:
    return (Path(out_dir) / LATEST_FILE).is_file()


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from itself or from an output directory (``latest``)."""
    path = Path(path)
    if (path / LATEST_FILE).is_file():
        name = (path / LATEST_FILE).read_text().strip()
        if not name or "/" in name or name.startswith("."):
            raise CheckpointError(f"{path / LATEST_FILE} names no checkpoint directory: {name!r}")
        path = path / name
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def save_training_checkpoint(
    out_dir: str | Path,
    step: int,
    *,
    model_config: PortraitGANConfig,
    config: dict,
    networks: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    trainer_tensors: dict[str, torch.Tensor],
    trainer_json: dict,
    keep: int = 2,
) -> Path:
    """Write ``out_dir/checkpoint-<step>`` atomically, point ``latest`` at it, keep ``keep``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    name = f"checkpoint-{step:08d}"
    target = out_dir / name
    with atomic_directory(target) as tmp:
        save_checkpoint(tmp / NETWORKS, model_config, networks, extra={"step": str(step)})
        write_json(tmp / CONFIG, config)
        for key, optimizer in optimizers.items():
            tensors, rest = flatten_optimizer(optimizer.state_dict())
            save_file(_cpu(tensors), str(tmp / f"optimizer_{key}.safetensors"))
            write_json(tmp / f"optimizer_{key}.json", rest)
        save_file(_cpu(trainer_tensors), str(tmp / TRAINER_TENSORS))
        write_json(tmp / TRAINER_JSON, trainer_json)
    point_latest(out_dir, name)
    prune_checkpoints(out_dir, keep, name)
    return target


def load_training_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Everything :func:`save_training_checkpoint` wrote: ``path``, ``model_config``,
    ``config``, ``networks`` (module -> state dict), ``optimizers`` (``G``, ``D`` state
    dicts), ``trainer_tensors``, ``trainer``. Raises :class:`CheckpointError` for a missing,
    truncated or malformed file."""
    from safetensors.torch import load_file

    path = resolve(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: it lacks {missing}")
    model_config, states, _ = read_checkpoint(path / NETWORKS)
    absent = [m for m in MODULES if m not in states]
    if absent:
        raise CheckpointError(f"checkpoint {path / NETWORKS} lacks modules {absent}")
    device = str(torch.device(device))
    try:
        config = json.loads((path / CONFIG).read_text())
        optimizers = {
            key: unflatten_optimizer(
                load_file(str(path / f"optimizer_{key}.safetensors"), device=device),
                json.loads((path / f"optimizer_{key}.json").read_text()),
            )
            for key in ("G", "D")
        }
        trainer_tensors = load_file(str(path / TRAINER_TENSORS))
        trainer = json.loads((path / TRAINER_JSON).read_text())
    except Exception as err:  # safetensors, JSON and key errors alike
        raise CheckpointError(f"checkpoint {path} is damaged: {type(err).__name__}: {err}") from err
    return {
        "path": path,
        "model_config": model_config,
        "config": config,
        "networks": states,
        "optimizers": optimizers,
        "trainer_tensors": trainer_tensors,
        "trainer": trainer,
    }


__all__ = [
    "CheckpointError",
    "has_checkpoint",
    "load_state",
    "load_training_checkpoint",
    "resolve",
    "save_training_checkpoint",
]
