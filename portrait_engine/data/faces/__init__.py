"""Face data for RI: readers of the real formats, synthetic identities, degradations.

Every dataset is a ``torch.utils.data.Dataset`` of ``(image, label)`` with ``image`` a float32
``(3, H, W)`` tensor in [-1, 1] and ``label`` an int identity index; each exposes
``num_classes`` and ``labels`` (the label of every item, in order).

| dataset | what |
|---|---|
| :class:`SyntheticFaces` | procedural identities for tests and the CPU demo |
| :class:`IdentityFolder` | ``root/<identity>/<image>`` folders |
| :class:`RecordIO` | insightface ``train.rec`` / ``train.idx``, without MXNet |
| :class:`TinyFace` | TinyFace's probe / gallery match / gallery distractor parts |
"""

from portrait_engine.data.faces import degrade
from portrait_engine.data.faces.degrade import VeryLowResolution, unrecognizable
from portrait_engine.data.faces.folder import IdentityFolder, decode_image
from portrait_engine.data.faces.recordio import RecordIO
from portrait_engine.data.faces.synthetic import SyntheticFaces
from portrait_engine.data.faces.tinyface import TinyFace

__all__ = [
    "IdentityFolder",
    "RecordIO",
    "SyntheticFaces",
    "TinyFace",
    "VeryLowResolution",
    "decode_image",
    "degrade",
    "unrecognizable",
]
