"""The public ops. Each validates its inputs and runs on the chosen backend.

| op | what |
|---|---|
| :func:`triplane_sample` | tri-plane / tri-grid feature sampling (EG3D ``sample_from_planes``) |
| :func:`attention_pool` | attention-weighted embedding pooling (RI perceptibility attention) |
"""

from portrait_engine.ops.attention_pool import attention_pool
from portrait_engine.ops.triplane import triplane_sample

__all__ = ["attention_pool", "triplane_sample"]
