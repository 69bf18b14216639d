"""The public ops. Each validates its inputs and runs on the chosen backend.

| op | what |
|---|---|
| :func:`triplane_sample` | tri-plane / tri-grid feature sampling (EG3D ``sample_from_planes``) |
"""

from portrait_engine.ops.triplane import triplane_sample

__all__ = ["triplane_sample"]
