"""3DPortraitGAN checkpoints: one safetensors file holding the weights and the JSON config.

Layout of ``<name>.safetensors``:

- tensors: every module's ``state_dict`` entry under ``"<module>.<key>"`` (modules ``G``,
  ``G_ema``, ``D`` or whichever are given);
- metadata (string to string, safetensors' header): ``format`` =
  ``portrait_engine.portrait_gan``, ``format_version``, ``config`` (the
  :class:`PortraitGANConfig` as JSON), ``modules`` (JSON list of the module names) and any
  ``extra`` strings the caller adds (training progress, for example).

Loading parses a JSON header and raw tensor bytes only: no pickle, no code is executed.
Writing goes to a temporary file in the same folder, flushed, then renamed over the target
(``os.replace``), so a crash never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from portrait_engine.models.portrait_gan.config import PortraitGANConfig

FORMAT = "portrait_engine.portrait_gan"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, malformed, of another format, or does not fit the model."""


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError(
            "checkpoints need the 'safetensors' package: pip install safetensors"
        ) from err
    return st


def save_checkpoint(
    path: str | Path,
    config: PortraitGANConfig,
    modules: Mapping[str, nn.Module],
    extra: Mapping[str, str] | None = None,
) -> Path:
    """Write ``modules`` (e.g. ``{"G": generator, "D": discriminator}``) and ``config`` to
    ``path`` atomically. Returns the path."""
    st = _safetensors()
    if not isinstance(config, PortraitGANConfig):
        raise TypeError(f"config must be a PortraitGANConfig, got {type(config).__name__}")
    if not modules:
        raise ValueError("modules must name at least one module")
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"module names must be non-empty strings without '.', got {name!r}")
        if not isinstance(module, nn.Module):
            raise TypeError(f"modules[{name!r}] must be an nn.Module, got {type(module).__name__}")
        for key, value in module.state_dict().items():
            # own, contiguous CPU copies: safetensors refuses shared or strided storage
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_json(),
        "modules": json.dumps(list(modules)),
    }
    for key, value in (extra or {}).items():
        if key in metadata or not isinstance(value, str):
            raise ValueError(f"extra metadata {key!r} must be a new key with a string value")
        metadata[key] = value
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        st.save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(
    path: str | Path,
) -> tuple[PortraitGANConfig, dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """``(config, {module: state_dict}, metadata)`` of a checkpoint, on the CPU."""
    st = _safetensors()
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = st.load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(
            f"checkpoint {path} is not a readable safetensors file: {err}"
        ) from err
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {metadata.get('format')!r}, expected {FORMAT!r}"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version {metadata.get('format_version')!r}, "
            f"this code reads {FORMAT_VERSION!r}"
        )
    try:
        config = PortraitGANConfig.from_json(metadata["config"])
        names = json.loads(metadata["modules"])
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} has a bad config or module list: {err}") from err
    states: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        if name not in states or not rest:
            raise CheckpointError(f"checkpoint {path}: tensor {key!r} belongs to no module")
        states[name][rest] = value
    return config, states, metadata


def load_state(module: nn.Module, state: dict[str, torch.Tensor], name: str, path) -> None:
    """Load ``state`` into ``module`` strictly, with an error naming the checkpoint and keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path}: module {name!r} does not fit: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"checkpoint {path}: {name}.{key} has shape {tuple(value.shape)}, the model "
                f"{tuple(own[key].shape)}"
            )
    module.load_state_dict(state, strict=True)


def load_checkpoint(
    path: str | Path,
    modules: tuple[str, ...] = ("G",),
    device: torch.device | str = "cpu",
    body=None,
) -> tuple[PortraitGANConfig, dict[str, nn.Module]]:
    """Build the networks a checkpoint holds and load their weights.

    ``modules`` picks which to build: ``"G"`` and ``"G_ema"`` are :class:`PortraitGenerator`,
    ``"D"`` a :class:`PoseAwareDualDiscriminator`. ``"G"`` falls back to ``"G_ema"`` when only
    that is stored. Returns ``(config, {name: module})``, modules in eval mode on ``device``.
    """
    from portrait_engine.models.portrait_gan.discriminator import PoseAwareDualDiscriminator
    from portrait_engine.models.portrait_gan.generator import PortraitGenerator

    config, states, _ = read_checkpoint(path)
    built: dict[str, nn.Module] = {}
    for name in modules:
        stored = name
        if stored not in states and name == "G" and "G_ema" in states:
            stored = "G_ema"
        if stored not in states:
            raise CheckpointError(
                f"checkpoint {path} has no module {name!r} (it holds {sorted(states)})"
            )
        if name in ("G", "G_ema"):
            module = PortraitGenerator(config, body=body)
        elif name == "D":
            module = PoseAwareDualDiscriminator.from_config(config)
        else:
            raise ValueError(f"modules may be 'G', 'G_ema' or 'D', got {name!r}")
        load_state(module, states[stored], stored, path)
        built[name] = module.to(device).eval()
    return config, built


__all__ = [
    "FORMAT",
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
