"""Modules built from the ops."""

from portrait_engine.nn.attention_pool import AttentionPool
from portrait_engine.nn.decoder import FullyConnectedLayer, OSGDecoder
from portrait_engine.nn.deformer import PoseDeformer
from portrait_engine.nn.renderer import ImportanceRenderer

__all__ = [
    "AttentionPool",
    "FullyConnectedLayer",
    "ImportanceRenderer",
    "OSGDecoder",
    "PoseDeformer",
]
