"""Reference of the decoder's activation: ``torch.nn.functional.softplus`` (beta 1, threshold 20).

EG3D's ``OSGDecoder`` (Chan et al., CVPR 2022, sec. 3.2) puts ``softplus(x) = log(1 + e^x)``
between its two fully-connected layers, as ``torch.nn.Softplus()`` with its defaults: above the
threshold 20 the function is taken to be linear (``x``), and so is its gradient (1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SOFTPLUS_THRESHOLD = 20.0


def softplus_reference(x: torch.Tensor) -> torch.Tensor:
    """``softplus(x)``, any shape, differentiable (torch's own kernel)."""
    return F.softplus(x, beta=1.0, threshold=SOFTPLUS_THRESHOLD)
