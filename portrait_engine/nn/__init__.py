"""Modules built from the ops."""

from portrait_engine.nn.attention_pool import AttentionPool

__all__ = ["AttentionPool"]
