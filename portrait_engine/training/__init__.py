"""Pieces every trainer shares: atomic checkpoint directories, optimizer state in
safetensors + JSON, RNG state capture and restore, and the ``torchrun`` process group
(gloo on the CPU, NCCL on GPUs).

Used by the RI trainer (:mod:`portrait_engine.models.recognizability.train`) and the
3DPortraitGAN trainer (:mod:`portrait_engine.models.portrait_gan.training`).
"""

from portrait_engine.training.checkpoint_io import (
    LATEST_FILE,
    atomic_directory,
    flatten_optimizer,
    fsync_file,
    point_latest,
    prune_checkpoints,
    unflatten_optimizer,
    write_json,
)
from portrait_engine.training.distributed import (
    Distributed,
    all_reduce_gradients,
    broadcast_module,
    epoch_batches,
    init_distributed,
)
from portrait_engine.training.progress import training_progress
from portrait_engine.training.rng import capture_rng_state, restore_rng_state

__all__ = [
    "LATEST_FILE",
    "Distributed",
    "all_reduce_gradients",
    "atomic_directory",
    "broadcast_module",
    "capture_rng_state",
    "epoch_batches",
    "flatten_optimizer",
    "fsync_file",
    "init_distributed",
    "point_latest",
    "prune_checkpoints",
    "restore_rng_state",
    "training_progress",
    "unflatten_optimizer",
    "write_json",
]
