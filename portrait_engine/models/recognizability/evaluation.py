"""Face recognition and face quality metrics on embeddings and quality scores.

Inputs may be numpy arrays or torch tensors (moved to the CPU, computed in float64).
Similarity is the cosine of the embeddings throughout.

- :func:`identification`: closed-set 1:N identification with distractors (the TinyFace
  protocol): each probe is compared with the whole gallery (its identity's gallery images plus
  faces of other identities and distractors); rank-k accuracy is the fraction of probes whose
  best-scoring mate is among the k highest-scoring gallery items. A probe with no mate in the
  gallery is an error (the set would not be closed).
- :func:`verification`: 1:1 verification over pairs: ROC AUC (the Mann–Whitney probability
  that a genuine pair outscores an impostor pair, ties counted one half) and TAR at FAR
  1e-2 … 1e-4, the threshold taken from the impostor scores so that at most ``far`` of them
  exceed it (a FAR below ``1 / #impostors`` cannot be measured and gives NaN).
- :func:`error_versus_reject`: the ERC of Grother & Tabassi as CR-FIQA evaluates it: a pair's
  quality is the lower of its two samples' qualities; the decision threshold is fixed once, at
  the target FMR on all impostor pairs; then the lowest-quality fraction of pairs is rejected
  and the FNMR of the genuine pairs left is measured. A quality score that predicts
  recognisability makes the FNMR fall fast; the area under the curve (trapezoids over the
  rejected fraction, leaving out fractions with no genuine pair left) summarises it (lower is
  better).
- quality scores to compare with RI: :func:`embedding_norm_quality` (the feature norm, as
  AdaFace/MagFace use it) and :func:`crfiqa_quality` (CR-FIQA's certainty ratio
  ``CCS / (NNCCS + 1 + ε)``, with class centres of the evaluated set standing in for the
  classifier's prototypes, so it uses the labels: an informed reference, not a blind score).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

DEFAULT_RANKS = (1, 5, 20)
DEFAULT_FARS = (1e-2, 1e-3, 1e-4)


def as_array(x, name: str, ndim: int | None = None, dtype=np.float64) -> np.ndarray:
    """A float64 (or ``dtype``) numpy copy of a numpy array or torch tensor, shape-checked."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        array = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be numeric (a numpy array or tensor): {error}") from None
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {array.shape}")
    if dtype == np.float64 and not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _labels(x, name: str, length: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    array = np.asarray(x)
    if array.ndim != 1 or len(array) != length:
        raise ValueError(f"{name} must be 1-D of length {length}, got shape {array.shape}")
    if array.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integer labels, got dtype {array.dtype}")
    return array.astype(np.int64)


def normalize(embeddings: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm."""
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), eps)


# ------------------------------------------------------------------------------------------
# identification
# ------------------------------------------------------------------------------------------


def mate_ranks(
    probe_embeddings,
    probe_labels,
    gallery_embeddings,
    gallery_labels,
    chunk: int = 1024,
) -> np.ndarray:
    """The rank (1 = best) of each probe's best mate in the gallery.

    ``probe_embeddings`` ``(P, D)``, ``gallery_embeddings`` ``(G, D)``; labels ``(P,)`` and
    ``(G,)`` ints (distractors: any label no probe has, e.g. -1). Rank = 1 + the number of
    non-mate gallery items scoring strictly higher than the best mate (ties go to the probe).
    """
    probes = as_array(probe_embeddings, "probe_embeddings", 2)
    gallery = as_array(gallery_embeddings, "gallery_embeddings", 2)
    if probes.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"probe_embeddings and gallery_embeddings differ in dimension: "
            f"{probes.shape[1]} vs {gallery.shape[1]}"
        )
    if len(probes) == 0 or len(gallery) == 0:
        raise ValueError(
            f"need at least one probe and one gallery item, got {len(probes)} and {len(gallery)}"
        )
    p_labels = _labels(probe_labels, "probe_labels", len(probes))
    g_labels = _labels(gallery_labels, "gallery_labels", len(gallery))
    missing = np.setdiff1d(np.unique(p_labels), g_labels)
    if len(missing):
        raise ValueError(
            f"{len(missing)} probe identities have no mate in the gallery (closed-set "
            f"identification needs one), e.g. {missing[:5].tolist()}"
        )
    probes, gallery = normalize(probes), normalize(gallery)
    ranks = np.empty(len(probes), dtype=np.int64)
    for start in range(0, len(probes), chunk):
        scores = probes[start : start + chunk] @ gallery.T
        mates = p_labels[start : start + chunk, None] == g_labels[None, :]
        best_mate = np.where(mates, scores, -np.inf).max(axis=1)
        above = (np.where(mates, -np.inf, scores) > best_mate[:, None]).sum(axis=1)
        ranks[start : start + chunk] = 1 + above
    return ranks


def cumulative_match(ranks: np.ndarray, max_rank: int) -> np.ndarray:
    """CMC: entry ``k - 1`` is the fraction of probes of rank ≤ k, for k = 1 … ``max_rank``."""
    ranks = np.asarray(ranks)
    return np.array([(ranks <= k).mean() for k in range(1, max_rank + 1)])


def identification(
    probe_embeddings,
    probe_labels,
    gallery_embeddings,
    gallery_labels,
    ranks: Sequence[int] = DEFAULT_RANKS,
) -> dict[str, float]:
    """Rank-k identification accuracy, ``{"rank1": …, "rank5": …, "rank20": …}``."""
    if not ranks or any(int(k) < 1 for k in ranks):
        raise ValueError(f"ranks must be positive ints, got {ranks}")
    found = mate_ranks(probe_embeddings, probe_labels, gallery_embeddings, gallery_labels)
    return {f"rank{int(k)}": float((found <= int(k)).mean()) for k in ranks}


# ------------------------------------------------------------------------------------------
# verification
# ------------------------------------------------------------------------------------------


def pair_scores(embeddings, labels, max_pairs: int | None = None, seed: int = 0):
    """Cosine scores of all pairs ``i < j`` of a set (or ``max_pairs`` of them, at random).

    Returns ``(scores, is_same, first, second)``: ``(M,)`` float64, bool, and the two indices.
    """
    x = normalize(as_array(embeddings, "embeddings", 2))
    y = _labels(labels, "labels", len(x))
    if len(x) < 2:
        raise ValueError(f"need at least two embeddings to form pairs, got {len(x)}")
    first, second = np.triu_indices(len(x), k=1)
    if max_pairs is not None and len(first) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(first), max_pairs, replace=False))
        first, second = first[keep], second[keep]
    scores = np.einsum("ij,ij->i", x[first], x[second])
    return scores, y[first] == y[second], first, second


def _pairs(scores, is_same) -> tuple[np.ndarray, np.ndarray]:
    s = as_array(scores, "scores", 1)
    if isinstance(is_same, torch.Tensor):
        is_same = is_same.detach().cpu().numpy()
    same = np.asarray(is_same)
    if same.shape != s.shape:
        raise ValueError(f"is_same must have the shape of scores {s.shape}, got {same.shape}")
    if same.dtype != bool:
        if not np.isin(same, (0, 1)).all():
            raise ValueError("is_same must be booleans (or 0 / 1)")
        same = same.astype(bool)
    if same.all() or not same.any():
        raise ValueError(
            f"need both genuine and impostor pairs, got {int(same.sum())} genuine and "
            f"{int((~same).sum())} impostor"
        )
    return s, same


def roc_auc(scores, is_same) -> float:
    """Area under the ROC curve: P(genuine score > impostor score) + ½ P(equal)."""
    s, same = _pairs(scores, is_same)
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(len(s))
    # average ranks over ties (1-based)
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(s)]))
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2
    genuine, impostor = int(same.sum()), int((~same).sum())
    u = ranks[same].sum() - genuine * (genuine + 1) / 2
    return float(u / (genuine * impostor))


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> float:
    """The smallest threshold ``t`` such that at most ``far`` of the impostors score ``> t``."""
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    ordered = np.sort(impostor_scores)[::-1]
    allowed = int(np.floor(far * len(ordered) + 1e-9))
    return float(ordered[min(allowed, len(ordered) - 1)])


def tar_at_far(scores, is_same, fars: Sequence[float] = DEFAULT_FARS) -> dict[float, float]:
    """True-accept rate (genuine scores ``> t``) at each FAR; NaN where too few impostors."""
    s, same = _pairs(scores, is_same)
    impostor, genuine = s[~same], s[same]
    out = {}
    for far in fars:
        if far * len(impostor) < 1:
            out[far] = float("nan")
            continue
        t = threshold_at_far(impostor, far)
        out[far] = float((genuine > t).mean())
    return out


def verification(scores, is_same, fars: Sequence[float] = DEFAULT_FARS) -> dict[str, float]:
    """``{"auc": …, "tar@far=0.01": …, …}`` for a set of scored pairs."""
    result = {"auc": roc_auc(scores, is_same)}
    for far, tar in tar_at_far(scores, is_same, fars).items():
        result[f"tar@far={far:g}"] = tar
    return result


def roc_curve(scores, is_same) -> tuple[np.ndarray, np.ndarray]:
    """``(far, tar)`` at every distinct threshold, from the strictest down."""
    s, same = _pairs(scores, is_same)
    order = np.argsort(-s, kind="mergesort")
    s, same = s[order], same[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tar = np.cumsum(same)[last] / same.sum()
    far = np.cumsum(~same)[last] / (~same).sum()
    return np.r_[0.0, far], np.r_[0.0, tar]


# ------------------------------------------------------------------------------------------
# face quality: error-versus-reject
# ------------------------------------------------------------------------------------------


@dataclass
class ErrorRejectCurve:
    """FNMR (at a threshold fixed at ``fmr`` before rejection) against the rejected fraction."""

    fractions: np.ndarray
    fnmr: np.ndarray
    fmr: float
    threshold: float
    area: float = field(init=False)

    def __post_init__(self) -> None:
        # points with no genuine pair left (NaN) are left out of the area
        finite = np.isfinite(self.fnmr)
        self.area = float(np.trapezoid(self.fnmr[finite], self.fractions[finite]))


def pair_quality(quality, first, second) -> np.ndarray:
    """A pair's quality: the lower of its two samples' (the weakest sample decides)."""
    q = as_array(quality, "quality", 1)
    return np.minimum(q[np.asarray(first)], q[np.asarray(second)])


def error_versus_reject(
    scores,
    is_same,
    quality,
    fmr: float = 1e-3,
    fractions: Sequence[float] | None = None,
    threshold_pairs=None,
) -> ErrorRejectCurve:
    """ERC of pairs: ``quality`` is per pair (see :func:`pair_quality`), higher = better.

    ``fractions``: rejected fractions of the pairs (default 0, 0.05, …, 0.95). Pairs are
    rejected lowest quality first; at each fraction the FNMR of the genuine pairs kept is
    measured at the threshold fixed at ``fmr`` on the impostor pairs (NaN if none kept).
    ``threshold_pairs``: optional boolean mask of the pairs whose impostors fix that threshold
    (default: every impostor pair), e.g. to leave out pairs of unrecognisable faces, which
    match each other and would otherwise push the threshold to the top of the score range.
    """
    s, same = _pairs(scores, is_same)
    if threshold_pairs is None:
        impostors = ~same
    else:
        mask = np.asarray(threshold_pairs)
        if mask.shape != s.shape or mask.dtype != bool:
            raise ValueError(
                f"threshold_pairs must be a boolean mask of shape {s.shape}, "
                f"got {mask.dtype} {mask.shape}"
            )
        impostors = ~same & mask
    q = as_array(quality, "quality", 1)
    if q.shape != s.shape:
        raise ValueError(f"quality must have one value per pair {s.shape}, got {q.shape}")
    if fractions is None:
        fractions = np.arange(0, 0.951, 0.05)
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or (fractions < 0).any() or (fractions >= 1).any():
        raise ValueError(f"fractions must be 1-D within [0, 1), got {fractions}")
    if impostors.sum() * fmr < 1:
        raise ValueError(
            f"fmr={fmr} needs at least {int(np.ceil(1 / fmr))} impostor pairs, "
            f"got {impostors.sum()}"
        )
    threshold = threshold_at_far(s[impostors], fmr)
    order = np.argsort(q, kind="mergesort")  # lowest quality first
    fnmr = []
    for fraction in fractions:
        kept = order[int(round(fraction * len(order))) :]
        genuine = s[kept][same[kept]]
        fnmr.append(float((genuine <= threshold).mean()) if len(genuine) else float("nan"))
    return ErrorRejectCurve(fractions, np.array(fnmr), float(fmr), threshold)


def embedding_norm_quality(embeddings) -> np.ndarray:
    """The L2 norm of each (unnormalised) embedding."""
    return np.linalg.norm(as_array(embeddings, "embeddings", 2), axis=1)


def crfiqa_quality(embeddings, labels, eps: float = 1e-9) -> np.ndarray:
    """CR-FIQA's certainty ratio ``CCS / (NNCCS + 1 + ε)`` with class centres as prototypes.

    CCS: cosine to the sample's own class centre, the mean of the *other* normalised
    embeddings of its class (leave-one-out, so a sample is not scored against itself; a class
    with one sample uses the sample itself, CCS = 1). NNCCS: the largest cosine to the centre
    of another class. Needs at least two classes.
    """
    x = normalize(as_array(embeddings, "embeddings", 2))
    y = _labels(labels, "labels", len(x))
    classes, index = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError("crfiqa_quality needs at least two classes")
    sums = np.zeros((len(classes), x.shape[1]))
    np.add.at(sums, index, x)
    counts = np.bincount(index).astype(np.float64)
    own = sums[index] - x
    own = np.where(counts[index, None] > 1, own, x)
    ccs = np.einsum("ij,ij->i", normalize(x), normalize(own))
    centres = normalize(sums / counts[:, None])
    cosines = x @ centres.T
    cosines[np.arange(len(x)), index] = -np.inf
    nnccs = cosines.max(axis=1)
    return ccs / (nnccs + 1 + eps)
