"""Loading a real SMPL / SMPL-X model file through ``smplx`` (never downloaded)."""

from __future__ import annotations

import os

import torch

from portrait_engine.body.model import BodyModel
from portrait_engine.body.procedural import procedural_body_model


def load_body_model(
    path: str | os.PathLike,
    *,
    model_type: str = "smpl",
    gender: str = "neutral",
    num_betas: int = 10,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> BodyModel:
    """A :class:`BodyModel` from an SMPL-family model file or folder, read by ``smplx.create``.

    ``path`` is what ``smplx.create`` takes: a model file (``.pkl`` / ``.npz``) or the folder
    that holds ``<model_type>/<MODEL>_<GENDER>.<ext>``. The files are licensed downloads
    (smpl.is.tue.mpg.de, smpl-x.is.tue.mpg.de): this function never fetches them; without
    one, use :func:`procedural_body_model`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no body model at {path!r}: SMPL / SMPL-X model files are licensed downloads "
            "that portrait_engine never fetches; download one yourself, or use "
            "portrait_engine.body.procedural_body_model() (the procedural stand-in)"
        )
    try:
        import smplx
    except ImportError as error:  # pragma: no cover - smplx is a dependency
        raise ImportError(f"loading a body model file needs the smplx package ({error})") from error
    ext = "npz" if path.endswith(".npz") else "pkl"
    model = smplx.create(path, model_type=model_type, gender=gender, num_betas=num_betas, ext=ext)
    faces = torch.as_tensor(model.faces.astype("int64"))
    record = BodyModel(
        v_template=model.v_template.detach(),
        shapedirs=model.shapedirs.detach(),
        posedirs=model.posedirs.detach(),
        J_regressor=model.J_regressor.detach(),
        parents=model.parents.detach().to(torch.int64),
        lbs_weights=model.lbs_weights.detach(),
        faces=faces,
        name=f"{model_type}:{os.path.basename(path)}",
    )
    return record.to(device=device, dtype=dtype)


def body_model(path: str | os.PathLike | None = None, **kwargs) -> BodyModel:
    """The model file at ``path`` when given, else the procedural stand-in."""
    if path is None:
        return procedural_body_model(
            dtype=kwargs.get("dtype", torch.float32), device=kwargs.get("device", "cpu")
        )
    return load_body_model(path, **kwargs)
