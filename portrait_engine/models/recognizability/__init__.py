"""RI: very-low-resolution face recognition with a recognizability index (Chai et al., CVPR 2023).

Backbones (:mod:`.backbones`), the margin heads and the fused margin cross-entropy
(:mod:`.heads`, :mod:`.margin_ce`), the recognizability index and its losses (:mod:`.ri`), the
inference network (:mod:`.model`), training (:mod:`.train`) and checkpoints (:mod:`.checkpoint`).
"""

from portrait_engine.models.recognizability.model import (
    RIConfig,
    RIModel,
    RIOutput,
    load_for_inference,
)

__all__ = ["RIConfig", "RIModel", "RIOutput", "load_for_inference"]
