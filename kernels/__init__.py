"""Triton kernels and their launchers: no autograd, no validation (see portrait_engine.ops)."""
