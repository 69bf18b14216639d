"""References of the decoder's element-wise stages: the hidden activation
``torch.nn.functional.softplus`` (beta 1, threshold 20) and the output head.

EG3D's ``OSGDecoder`` (Chan et al., CVPR 2022, sec. 3.2) puts ``softplus(x) = log(1 + e^x)``
between its two fully-connected layers, as ``torch.nn.Softplus()`` with its defaults: above the
threshold 20 the function is taken to be linear (``x``), and so is its gradient (1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from portrait_engine.ops.reference.render import RGB_PADDING

SOFTPLUS_THRESHOLD = 20.0


def softplus_reference(x: torch.Tensor) -> torch.Tensor:
    """``softplus(x)``, any shape, differentiable (torch's own kernel)."""
    return F.softplus(x, beta=1.0, threshold=SOFTPLUS_THRESHOLD)


def decoder_outputs_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """EG3D's ``OSGDecoder`` output head on ``x`` ``(..., 1 + C_out)``: ``sigma = x[..., :1]``
    (raw: the ray marcher applies its softplus) and ``rgb = sigmoid(x[..., 1:]) · (1 + 2·0.001)
    − 0.001`` (a sigmoid widened so that 0 and 1 are reachable, as in MipNeRF)."""
    sigma, colors = x.split([1, x.shape[-1] - 1], dim=-1)
    return sigma, torch.sigmoid(colors) * (1 + 2 * RGB_PADDING) - RGB_PADDING
