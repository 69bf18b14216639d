"""Benchmark cases: for each op, its sizes, inputs, providers and the bytes it must move.

One module per op family (``triplane.py``, ``attention_pool.py``, ...) defines a function
``quick: bool -> list[Case]``; ``OPS`` below maps each op name to it. To add an op family, add
its module and one line to ``_FAMILIES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from portrait_engine.benchmark.cases.base import PROVIDERS, Case

# op name -> (module under portrait_engine.benchmark.cases, function name)
_FAMILIES: dict[str, tuple[str, str]] = {
    "triplane_sample": ("triplane", "triplane_cases"),
    "attention_pool": ("attention_pool", "attention_pool_cases"),
    "ray_march": ("rays", "ray_march_cases"),
    "ray_sample": ("rays", "ray_sample_cases"),
    "sample_importance": ("importance", "importance_cases"),
    "merge_samples": ("importance", "merge_cases"),
    "renderer": ("importance", "renderer_cases"),
    "render_rays": ("render", "render_rays_cases"),
    "renderer_unfused": ("render", "renderer_unfused_cases"),
    "softplus": ("activation", "softplus_cases"),
    "decoder_outputs": ("activation", "decoder_outputs_cases"),
    "generator": ("portrait_gan", "generator_cases"),
    "portrait_gan_train_step": ("portrait_gan", "portrait_gan_train_step_cases"),
    "lbs": ("skinning", "lbs_cases"),
    "skin_points": ("skinning", "skin_points_cases"),
    "mesh_deform": ("skinning", "mesh_deform_cases"),
    "margin_head": ("recognizability", "margin_head_cases"),
    "ri_train_step": ("recognizability", "ri_train_step_cases"),
}


def _load(module: str, function: str) -> Callable[[bool], list[Case]]:
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


OPS: dict[str, Callable[[bool], list[Case]]] = {
    op: _load(module, function) for op, (module, function) in _FAMILIES.items()
}


__all__ = ["OPS", "PROVIDERS", "Case"]
