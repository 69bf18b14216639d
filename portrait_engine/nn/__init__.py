"""Modules built from the ops."""

from portrait_engine.nn.attention_pool import AttentionPool
from portrait_engine.nn.deformer import PoseDeformer

__all__ = ["AttentionPool", "PoseDeformer"]
