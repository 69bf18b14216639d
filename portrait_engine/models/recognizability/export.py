"""Embeddings out of an :class:`RIModel`: batched inference, ``.npy`` export, ONNX export.

- :func:`compute_embeddings` runs a model over a dataset (or a tensor of images) in eval mode
  without gradients and returns the embeddings, the predicted RI and the labels as numpy.
- :func:`export_embeddings` writes them as ``<prefix>embeddings.npy`` ``(N, D)`` float32,
  ``<prefix>ri.npy`` ``(N,)``, ``<prefix>labels.npy`` ``(N,)`` int64 (numpy's own format, so
  any tool reads them with ``numpy.load``).
- :func:`export_onnx` exports the inference network (images → embedding, RI) with the
  ``torch`` backend of every op (the plain-PyTorch reference: the fused kernels are custom ops
  that ONNX runtimes do not know), batch dimension dynamic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _image_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "image_size", None)


def _batches(data, batch_size: int):
    """Yield ``(images, labels or None)`` from a tensor of images or a dataset."""
    if isinstance(data, torch.Tensor):
        if data.dim() != 4 or data.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(data.shape)}")
        for start in range(0, len(data), batch_size):
            yield data[start : start + batch_size], None
        return
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    yield from loader


@torch.no_grad()
def compute_embeddings(
    model: nn.Module,
    data,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    transform=None,
) -> dict[str, np.ndarray]:
    """Embeddings and RI of every image of ``data``.

    Args:
        model: an :class:`RIModel` (anything whose output has ``embedding`` and ``ri``).
        data: a ``(N, 3, H, W)`` tensor in [-1, 1] or a dataset of ``(image, label)``.
        batch_size: images per forward pass.
        device: where the model runs (it is moved there).
        transform: optional callable applied to each ``(B, 3, H, W)`` batch before the model
            (e.g. a degradation); images are then resized to the model's input size.

    Returns ``{"embedding": (N, D) float32, "ri": (N,) float32, "labels": (N,) int64}`` (no
    ``labels`` for a tensor input).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    size = _image_size(model)
    embeddings, ris, labels = [], [], []
    try:
        for images, batch_labels in _batches(data, batch_size):
            images = images.float()
            if transform is not None:
                images = transform(images)
            if size is not None and images.shape[-2:] != (size, size):
                images = F.interpolate(
                    images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
                )
            out = model(images.to(device))
            embeddings.append(out.embedding.float().cpu())
            ris.append(out.ri.float().reshape(-1).cpu())
            if batch_labels is not None:
                labels.append(torch.as_tensor(batch_labels).long().cpu())
    finally:
        model.train(was_training)
    if not embeddings:
        raise ValueError("data is empty: no images to embed")
    result = {
        "embedding": torch.cat(embeddings).numpy(),
        "ri": torch.cat(ris).numpy(),
    }
    if labels:
        result["labels"] = torch.cat(labels).numpy()
    return result


def export_embeddings(
    out_dir: str | os.PathLike,
    embeddings,
    labels=None,
    ri=None,
    prefix: str = "",
) -> dict[str, Path]:
    """Write ``.npy`` files of embeddings (and labels, RI); returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"embeddings": np.asarray(embeddings, dtype=np.float32)}
    if arrays["embeddings"].ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {arrays['embeddings'].shape}")
    count = len(arrays["embeddings"])
    for name, values, dtype in (("labels", labels, np.int64), ("ri", ri, np.float32)):
        if values is None:
            continue
        array = np.asarray(values, dtype=dtype)
        if array.shape != (count,):
            raise ValueError(f"{name} must have shape ({count},), got {array.shape}")
        arrays[name] = array
    paths = {}
    for name, array in arrays.items():
        paths[name] = out / f"{prefix}{name}.npy"
        np.save(paths[name], array)
    return paths


class InferenceNetwork(nn.Module):
    """``images → (embedding, ri)``: the RIModel's outputs as a plain tuple for export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out.embedding, out.ri


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    image_size: int | None = None,
    opset: int = 18,
) -> Path:
    """Export ``model`` (eval mode, ``torch`` backend) to ONNX: input ``images``
    ``(batch, 3, S, S)``, outputs ``embedding`` ``(batch, D)`` and ``ri`` ``(batch,)``.

    Needs the ``onnx`` package (and ``onnxscript`` for torch's exporter).
    """
    try:
        import onnx  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "ONNX export needs the onnx package: pip install onnx onnxscript"
        ) from error
    from portrait_engine import use_backend

    size = image_size or _image_size(model)
    if size is None:
        raise ValueError("image_size is needed: the model has no config.image_size")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = InferenceNetwork(model).eval()
    example = torch.zeros(2, 3, size, size)
    was_training = model.training
    model.eval()
    try:
        with use_backend("torch"), torch.no_grad():
            torch.onnx.export(
                net,
                (example,),
                str(path),
                input_names=["images"],
                output_names=["embedding", "ri"],
                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
                opset_version=opset,
                dynamo=True,
                external_data=False,
            )
    finally:
        model.train(was_training)
    return path
