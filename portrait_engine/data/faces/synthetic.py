"""Procedural synthetic faces: identities a small CNN can learn on a CPU in minutes.

Each identity is a fixed draw of face geometry and colour (head shape and jaw, skin tone, hair
colour, hairline and volume, eye spacing, size and iris colour, brow shape, nose, mouth, ears,
optional beard and glasses). Each image of that identity redraws only nuisance factors: pose
(in-plane rotation, scale, translation, a yaw that shifts the inner features sideways), lighting
(direction, strength, brightness, colour tint), expression (smile, open mouth, eye openness,
brow raise), background and a little sensor noise. Everything is deterministic from
``(seed, split, identity, image)``, so two processes (or two DDP ranks) render the same
images, and the identities of the ``"test"`` and ``"distractor"`` splits are independent draws,
disjoint from ``"train"`` by construction (different random streams, not different indices of
one stream).

The faces are cartoons, not people: they exist for tests and the CPU demo, where what matters is
that identity is carried by stable geometry and colour while pose, light and expression vary.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SPLITS = {"train": 0, "test": 1, "distractor": 2}

_HAIR_PALETTE = np.array(
    [
        [0.08, 0.06, 0.05],  # black
        [0.30, 0.18, 0.10],  # dark brown
        [0.55, 0.38, 0.22],  # light brown
        [0.85, 0.72, 0.45],  # blond
        [0.62, 0.25, 0.10],  # red
        [0.70, 0.70, 0.70],  # grey
    ]
)
_IRIS_PALETTE = np.array(
    [
        [0.30, 0.18, 0.08],  # brown
        [0.20, 0.40, 0.75],  # blue
        [0.25, 0.55, 0.30],  # green
        [0.50, 0.55, 0.60],  # grey
        [0.10, 0.07, 0.05],  # dark
    ]
)
_SKIN_LIGHT = np.array([0.96, 0.82, 0.72])
_SKIN_DARK = np.array([0.36, 0.23, 0.15])


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def identity_parameters(seed: int, split: str, identity: int) -> dict[str, np.ndarray | float]:
    """The fixed geometry and colours of one identity (a dict of floats and RGB arrays)."""
    r = _rng(seed, SPLITS[split], identity, 0x1D)
    tone = r.uniform()
    skin = (1 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK + r.normal(0, 0.03, 3)
    hair = _HAIR_PALETTE[r.integers(len(_HAIR_PALETTE))] + r.normal(0, 0.04, 3)
    iris = _IRIS_PALETTE[r.integers(len(_IRIS_PALETTE))] + r.normal(0, 0.04, 3)
    return {
        "face_rx": r.uniform(0.48, 0.66),
        "face_ry": r.uniform(0.66, 0.84),
        "jaw": r.uniform(0.0, 0.4),
        "skin": np.clip(skin, 0.05, 1.0),
        "hair": np.clip(hair, 0.0, 1.0),
        "bald": float(r.uniform() < 0.1),
        "hairline": r.uniform(-0.62, -0.25),
        "hair_volume": r.uniform(1.04, 1.22),
        "hair_side": r.uniform(-0.35, 0.55),
        "eye_x": r.uniform(0.17, 0.30),
        "eye_y": r.uniform(-0.20, -0.02),
        "eye_rx": r.uniform(0.07, 0.12),
        "eye_aspect": r.uniform(0.4, 0.7),
        "iris": np.clip(iris, 0.0, 1.0),
        "brow_gap": r.uniform(0.07, 0.15),
        "brow_thick": r.uniform(0.015, 0.04),
        "brow_tilt": r.uniform(-0.35, 0.35),
        "nose_len": r.uniform(0.12, 0.28),
        "nose_width": r.uniform(0.05, 0.12),
        "mouth_y": r.uniform(0.28, 0.46),
        "mouth_w": r.uniform(0.12, 0.24),
        "lip": r.uniform(0.02, 0.05),
        "lip_colour": np.clip(0.6 * skin + np.array([0.35, 0.05, 0.08]), 0, 1),
        "ear": r.uniform(0.07, 0.14),
        "beard": float(r.uniform() < 0.25),
        "glasses": float(r.uniform() < 0.15),
    }


def image_parameters(seed: int, split: str, identity: int, image: int) -> dict[str, float]:
    """The nuisance factors of one image: pose, light, expression, background, noise seed."""
    r = _rng(seed, SPLITS[split], identity, image, 0x1A)
    return {
        "angle": r.uniform(-12, 12) * math.pi / 180,
        "scale": r.uniform(0.92, 1.08),
        "tx": r.uniform(-0.06, 0.06),
        "ty": r.uniform(-0.06, 0.06),
        "yaw": r.uniform(-0.25, 0.25),
        "pitch": r.uniform(-0.04, 0.04),
        "light_angle": r.uniform(0, 2 * math.pi),
        "light": r.uniform(0.0, 0.35),
        "brightness": r.uniform(0.8, 1.15),
        "tint": r.normal(0, 0.04, 3),
        "smile": r.uniform(-0.3, 1.0),
        "mouth_open": r.uniform(0, 1) ** 2 * 0.05,
        "eye_open": 0.15 if r.uniform() < 0.05 else r.uniform(0.65, 1.1),
        "brow_raise": r.uniform(-0.02, 0.03),
        "background": r.uniform(0.1, 0.9, 3),
        "background_gradient": r.normal(0, 0.15, 3),
        "noise_seed": int(r.integers(2**31)),
    }


def _ellipse(x, y, cx, cy, rx, ry, soft):
    """Soft inside-mask of an axis-aligned ellipse (≈ 1 inside, 0 outside, ~1 pixel ramp)."""
    # signed distance to the boundary, to first order: (f - 1) / |∇f| for the implicit f
    dx, dy = (x - cx) / rx, (y - cy) / ry
    f = dx**2 + dy**2
    gradient = 2 * torch.sqrt((dx / rx) ** 2 + (dy / ry) ** 2).clamp_min(1e-6)
    return torch.sigmoid((1 - f) / gradient / soft)


def _paint(canvas, mask, colour):
    colour = torch.as_tensor(np.asarray(colour, dtype=np.float32)).view(3, 1, 1)
    return canvas * (1 - mask) + colour * mask


def render_face(identity: dict, image: dict, size: int = 112) -> torch.Tensor:
    """Render one face, ``(3, size, size)`` float32 in [-1, 1].

    Runs single-threaded: the tensors are small, and intra-op threads on a busy machine cost
    far more than they save (measured: 3 ms with one thread, hundreds of ms with several).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _render_face(identity, image, size)
    finally:
        torch.set_num_threads(threads)


def _render_face(identity: dict, image: dict, size: int) -> torch.Tensor:
    p, q = identity, image
    soft = 1.2 / size  # one pixel of edge ramp in the [-1, 1] coordinate frame
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    # inverse pose: image coordinates -> face coordinates
    c, s = math.cos(q["angle"]), math.sin(q["angle"])
    x0, y0 = (u - q["tx"]) / q["scale"], (v - q["ty"]) / q["scale"]
    x = c * x0 + s * y0
    y = -s * x0 + c * y0
    # inner features slide sideways with yaw and are foreshortened
    fx = (x - q["yaw"] * 0.22) / (1 - 0.3 * abs(q["yaw"]))
    fy = y - q["pitch"]

    bg = torch.as_tensor(q["background"], dtype=torch.float32).view(3, 1, 1)
    grad = torch.as_tensor(q["background_gradient"], dtype=torch.float32).view(3, 1, 1)
    canvas = bg + grad * v.unsqueeze(0)

    rx, ry = p["face_rx"], p["face_ry"]
    # the jaw narrows the lower half of the head
    narrow = 1 - p["jaw"] * torch.clamp(y / ry, min=0) ** 2
    head = _ellipse(x / narrow, y, 0.0, 0.0, rx, ry, soft)
    hair_col = p["hair"]
    if not p["bald"]:
        vol = p["hair_volume"]
        back = _ellipse(x, y, 0.0, -0.05, rx * vol, ry * vol, soft)
        back = back * torch.sigmoid((p["hair_side"] - y) / soft)
        canvas = _paint(canvas, back, hair_col)
    for side in (-1, 1):
        ear = _ellipse(x, y, side * rx * 0.98, -0.02, p["ear"] * 0.6, p["ear"], soft)
        canvas = _paint(canvas, ear, p["skin"] * 0.9)
    canvas = _paint(canvas, head, p["skin"])
    if p["beard"]:
        beard = head * torch.sigmoid((y - (p["mouth_y"] - 0.1)) / soft)
        beard = beard * (1 - _ellipse(fx, fy, 0, p["mouth_y"], p["mouth_w"] * 1.1, 0.07, soft))
        canvas = _paint(canvas, beard * 0.85, hair_col)
    if not p["bald"]:
        fringe = head * torch.sigmoid((p["hairline"] - y + 0.04 * torch.cos(6 * x)) / soft)
        canvas = _paint(canvas, fringe, hair_col)

    # lighting over the face (not the background): a directional ramp and a global gain
    la = q["light_angle"]
    shade = 1 + q["light"] * (x * math.cos(la) + y * math.sin(la))
    lit = canvas * shade.unsqueeze(0)

    ex, ey, erx = p["eye_x"], p["eye_y"], p["eye_rx"]
    ery = erx * p["eye_aspect"] * q["eye_open"]
    for side in (-1, 1):
        cx = side * ex
        brow_y = ey - p["brow_gap"] - q["brow_raise"] + side * p["brow_tilt"] * (fx - cx) * 0.3
        brow = _ellipse(fx, fy, cx, brow_y, erx * 1.3, p["brow_thick"], soft)
        brow = brow * torch.sigmoid((0.0 - (fy - brow_y).abs() + p["brow_thick"]) / soft)
        lit = _paint(lit, brow, hair_col * 0.7)
        white = _ellipse(fx, fy, cx, ey, erx, max(ery, 0.006), soft)
        lit = _paint(lit, white, [0.95, 0.95, 0.92])
        iris = _ellipse(fx, fy, cx, ey, erx * 0.5, erx * 0.5, soft) * white
        lit = _paint(lit, iris, p["iris"])
        pupil = _ellipse(fx, fy, cx, ey, erx * 0.22, erx * 0.22, soft) * white
        lit = _paint(lit, pupil, [0.02, 0.02, 0.02])
        if p["glasses"]:
            rim = _ellipse(fx, fy, cx, ey, erx * 1.6, erx * 1.3, soft)
            rim = rim - _ellipse(fx, fy, cx, ey, erx * 1.45, erx * 1.15, soft)
            lit = _paint(lit, rim.clamp(0, 1), [0.05, 0.05, 0.05])

    nose_y = ey + p["nose_len"]
    nose = _ellipse(fx, fy, 0.0, nose_y, p["nose_width"], 0.04, soft)
    lit = _paint(lit, nose * 0.6, np.asarray(p["skin"]) * 0.6)
    ridge = _ellipse(fx, fy, 0.02, ey + p["nose_len"] * 0.5, 0.012, p["nose_len"] * 0.5, soft)
    lit = _paint(lit, ridge * 0.4, np.asarray(p["skin"]) * 0.75)

    mw, my = p["mouth_w"], p["mouth_y"]
    t = torch.clamp(1 - (fx / mw) ** 2, min=0)
    centre = my - q["smile"] * 0.05 * (1 - t)  # corners rise with a smile
    half = p["lip"] + q["mouth_open"] * t
    mouth = torch.sigmoid((half - (fy - centre).abs()) / soft) * torch.sigmoid(
        (mw - fx.abs()) / soft
    )
    lit = _paint(lit, mouth, p["lip_colour"])
    inner = torch.sigmoid((q["mouth_open"] * t - (fy - centre).abs()) / soft) * mouth
    lit = _paint(lit, inner, [0.15, 0.03, 0.05])

    tint = 1 + torch.as_tensor(q["tint"], dtype=torch.float32).view(3, 1, 1)
    out = lit * q["brightness"] * tint
    noise = torch.Generator().manual_seed(q["noise_seed"])
    out = out + 0.01 * torch.randn(out.shape, generator=noise)
    return (out.clamp(0, 1) * 2 - 1).contiguous()


class SyntheticFaces(torch.utils.data.Dataset):
    """Procedural faces of ``num_identities`` identities, ``images_per_identity`` each.

    Args:
        num_identities: number of identities (classes), ≥ 1.
        images_per_identity: images of each identity, ≥ 1.
        size: output side in pixels (square images).
        seed: the dataset seed; the same seed gives the same images in any process.
        split: ``"train"``, ``"test"`` or ``"distractor"``; identities of different splits are
            independent draws (disjoint identities).
        cache: keep rendered images in memory (each image is rendered once).

    Item ``i`` is ``(image, label)``: image ``(3, size, size)`` float32 in [-1, 1], label the
    identity index ``i // images_per_identity`` in ``[0, num_identities)``.
    """

    def __init__(
        self,
        num_identities: int,
        images_per_identity: int,
        size: int = 112,
        seed: int = 0,
        split: str = "train",
        cache: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        for name, value in (
            ("num_identities", num_identities),
            ("images_per_identity", images_per_identity),
            ("size", size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {size}")
        self.num_identities = num_identities
        self.images_per_identity = images_per_identity
        self.size = size
        self.seed = int(seed)
        self.split = split
        self.num_classes = num_identities
        self.labels = np.repeat(np.arange(num_identities), images_per_identity)
        self._identity_cache: dict[int, dict] = {}
        self._image_cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    def identity(self, label: int) -> dict:
        if label not in self._identity_cache:
            self._identity_cache[label] = identity_parameters(self.seed, self.split, label)
        return self._identity_cache[label]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = index % len(self)
        label, image = divmod(index, self.images_per_identity)
        if self._image_cache is not None and index in self._image_cache:
            return self._image_cache[index], label
        params = image_parameters(self.seed, self.split, label, image)
        face = render_face(self.identity(label), params, self.size)
        if self._image_cache is not None:
            self._image_cache[index] = face
        return face, label

    def __repr__(self) -> str:
        return (
            f"SyntheticFaces(num_identities={self.num_identities}, "
            f"images_per_identity={self.images_per_identity}, size={self.size}, "
            f"seed={self.seed}, split={self.split!r})"
        )
