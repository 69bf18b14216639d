"""The recognizability index (RI), the UI centre, and RI's losses.

What follows the paper (Chai et al., CVPR 2023, abstract; see ``docs/ri_paper_notes.md``):
RI is built from two criteria, "(i) proximity of each face embedding against the
unrecognizable faces cluster center and (ii) closeness of each face embedding against its
positive and negative class prototypes"; a regression head predicts it, so that it is the face
quality score at test time; an "index diversion loss" pushes hard-to-recognize (low-RI)
embeddings away from the UI cluster. The UI centre is the mean of the normalised embeddings of
unrecognisable faces (Deng et al., 2021). The prototype terms are CR-FIQA's CCS (cosine to the
own class prototype) and NNCCS (largest cosine to another class prototype), both margin-free
and detached, as CR-FIQA computes its regression target.

What is our reading (the paper's equations were not at hand):

- RI, monotone in each criterion and bounded in ``[0, 1]``::

      ξ = (1 − cos_UI) / 2 · (2 + CCS − NNCCS) / 4

  with ``cos_UI = ⟨x̂, c_UI⟩``: the first factor is the angular distance from the UI centre,
  the second the positive-versus-negative prototype margin, both mapped to ``[0, 1]``. A
  product, so a face must be both far from the UI cluster and close to its own class to score
  high. (:func:`cr_fiqa_score` gives CR-FIQA's own ``CCS / (NNCCS + 1 + ε)`` for comparison.)
- The UI centre is updated *per batch*: every training batch carries unrecognisable versions
  of some of its faces (``degrade.unrecognizable``), the mean of their normalised embeddings
  (all-reduced across DDP ranks) is folded into an EMA, which is renormalised
  (:func:`update_ui_centre`); it is a buffer of the model, saved in checkpoints.
- ``μ_UI``, the RI level of the UI faces, is an EMA of the batch's mean RI of its UI faces.
- The UI cluster loss ``L_UI = mean_u (1 − ⟨û_u, c_UI⟩)`` over the batch's UI faces (centre
  detached, :func:`ui_cluster_loss`) makes the unrecognisable faces the *one* cluster that
  Deng et al. observe and that RI's first criterion presumes. Without it the four kinds of
  UI faces (2–5 px, wide blur, noise, tiny JPEG) stay apart (cosine about 0.3 to their mean),
  the centre is a blurred average that encodes "noisy" more than "unresolved", and faces that
  lose detail move *away* from it: on synthetic faces mildly down-sampled copies then got a
  higher RI than the clean ones, and the demo's mean RI of very-low-resolution faces (0.279)
  sat above the clean faces' (0.271). With it RI falls monotonically with the resolution
  (``tests/models/recognizability/test_train.py``). Its weight (``TrainConfig.ui_pull_weight``)
  is ours. The cost: UI faces now match each other (Deng et al.'s observation), so an
  error-versus-reject curve whose threshold is set on impostor pairs that include UI–UI pairs
  saturates.
- The RI regression is smooth-L1 with ``β = 0.75`` between the predicted and the (detached)
  RI, over the clean, low-resolution and UI faces of the batch.
- Index diversion: ``L_ID = mean_i max(0, μ_UI + τ − ξ_i)`` over the recognisable faces, with
  ``ξ_i`` differentiated through the embedding (prototypes and UI centre detached), so a face
  whose RI is within ``τ`` of the UI level is pushed away from the UI centre and towards its
  own prototype; faces already ``τ`` above it contribute nothing.
- The perceptibility attention term. What the paper's total loss is known to hold (its
  symbols, from a third-party summary; the equations themselves were not readable):
  ``L_MSE``, a mean squared error between the perceptibility attention module's output
  ``v_attn`` and a target ``v'`` that "projects the face embedding away from the center of the
  UIs cluster", weighted by its own factor. Our reading (:func:`attention_mse_loss`): in this
  model the attention module's output *is* the embedding (``nn.AttentionPool`` pools the
  feature map into it), so ``v_attn = v̂``, the unit embedding, and ``v' = normalize(v̂ −
  max(0, ⟨v̂, c_UI⟩) c_UI)`` (detached), the embedding with its component towards the UI
  centre removed; over the recognisable faces. Its gradient reaches the attention scores, the
  projection and the backbone alike. It is zero for a face already orthogonal to (or beyond)
  the UI centre and ``2 − 2·sqrt(1 − k²)`` at cosine ``k > 0``, so it acts on faces that drift
  towards the UI cluster — low-resolution ones — and teaches the attention to pool the
  regions that keep them away from it. The projection (rather than ``v̂ − c_UI``, which pushes
  every face towards ``−c_UI`` with the same force) is our choice.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def recognizability_index(
    cos_target: torch.Tensor, cos_negative: torch.Tensor, cos_ui: torch.Tensor
) -> torch.Tensor:
    """``ξ = (1 − cos_UI)/2 · (2 + CCS − NNCCS)/4`` in ``[0, 1]``, elementwise.

    Args:
        cos_target: CCS, cosine to the own class prototype, any shape.
        cos_negative: NNCCS, the largest cosine to another class prototype.
        cos_ui: cosine to the UI centre.
    """
    return (1 - cos_ui) / 2 * (2 + cos_target - cos_negative) / 4


def cr_fiqa_score(cos_target: torch.Tensor, cos_negative: torch.Tensor, eps: float = 1e-9):
    """CR-FIQA's certainty ratio ``CCS / (NNCCS + 1 + ε)`` (Boutros et al., CVPR 2023)."""
    return cos_target / (cos_negative + 1 + eps)


def prototype_cosines(
    unit_embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    negative_index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable CCS and NNCCS of ``(B, D)`` unit embeddings against the *detached*
    prototypes ``weight (N, D)``: the own class ``labels`` and the class ``negative_index``
    (``-1``: no other class, NNCCS = −1)."""
    prototypes = F.normalize(weight.detach(), dim=1)
    cos_target = (unit_embeddings * prototypes[labels]).sum(dim=1)
    has_negative = negative_index >= 0
    cos_negative = (unit_embeddings * prototypes[negative_index.clamp_min(0)]).sum(dim=1)
    return cos_target, torch.where(has_negative, cos_negative, -torch.ones_like(cos_negative))


def update_ui_centre(
    centre: torch.Tensor,
    initialised: torch.Tensor,
    ui_unit_embeddings: torch.Tensor,
    momentum: float,
) -> None:
    """Fold the batch mean of the UI faces' unit embeddings ``(n, D)`` into ``centre`` (in
    place): ``c ← normalize((1 − momentum) c + momentum · mean)``; the first batch sets it.

    Under ``torch.distributed`` the mean is over the UI faces of all ranks, so every rank keeps
    the same centre. ``initialised`` is a 0-d bool buffer, set here.
    """
    with torch.no_grad():
        total = torch.cat(
            [
                ui_unit_embeddings.detach().float().sum(dim=0),
                ui_unit_embeddings.new_tensor([ui_unit_embeddings.shape[0]], dtype=torch.float32),
            ]
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        count = total[-1]
        if count == 0:
            return
        batch_mean = (total[:-1] / count).to(centre.dtype)
        if bool(initialised):
            batch_mean = (1 - momentum) * centre + momentum * batch_mean
        centre.copy_(F.normalize(batch_mean, dim=0))
        initialised.fill_(True)


def update_ui_level(level: torch.Tensor, ui_ri: torch.Tensor, momentum: float) -> None:
    """EMA of the mean RI of the UI faces (``μ_UI``), all-reduced across ranks, in place."""
    with torch.no_grad():
        total = torch.stack(
            [ui_ri.detach().float().sum(), torch.tensor(float(ui_ri.numel()), device=ui_ri.device)]
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        if total[1] == 0:
            return
        level.mul_(1 - momentum).add_(momentum * (total[0] / total[1]).to(level.dtype))


def ri_regression_loss(
    predicted: torch.Tensor, target: torch.Tensor, beta: float = 0.75
) -> torch.Tensor:
    """Smooth-L1 (``β = 0.75``) between predicted and detached target RI, averaged."""
    return F.smooth_l1_loss(predicted.float(), target.detach().float(), beta=beta)


def index_diversion_loss(ri: torch.Tensor, ui_level: torch.Tensor, tau: float) -> torch.Tensor:
    """``mean_i max(0, μ_UI + τ − ξ_i)``: zero once a face's RI is ``τ`` above the UI level.

    ``ri`` ``(B,)`` differentiable RI of the recognisable faces; ``ui_level`` ``μ_UI``
    (detached). An empty batch gives 0.
    """
    if ri.numel() == 0:
        return ri.sum()
    return F.relu(ui_level.detach() + tau - ri).mean()


def ui_cluster_loss(ui_unit_embeddings: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """``L_UI = mean_u (1 − ⟨û_u, c_UI⟩)`` over the UI faces' unit embeddings ``(n, D)``, the
    centre detached: draws every unrecognisable face to the one UI cluster. An empty set or an
    uninitialised (zero) centre gives 0."""
    if ui_unit_embeddings.numel() == 0 or not bool(centre.any()):
        return ui_unit_embeddings.sum() * 0
    return (1 - ui_unit_embeddings @ centre.detach().to(ui_unit_embeddings.dtype)).mean()


def ui_diverted_target(unit_embeddings: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """``v' = normalize(v̂ − max(0, ⟨v̂, c_UI⟩) · c_UI)``, detached: each ``(B, D)`` unit
    embedding with its component *towards* the UI centre removed (our reading of the paper's
    "projecting the face embedding away from the center of the UIs cluster"). An embedding
    already on the far side of the UI centre (``⟨v̂, c⟩ ≤ 0``) is its own target; an
    uninitialised (zero) centre leaves every embedding unchanged."""
    unit = unit_embeddings.detach()
    c = centre.detach().to(unit.dtype)
    towards = (unit @ c).clamp_min(0)
    return F.normalize(unit - towards[:, None] * c, dim=1)


def attention_mse_loss(unit_embeddings: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """The perceptibility attention term ``L_MSE = mean_i ‖v̂_i − v'_i‖²`` over the
    recognisable faces' attention-pooled unit embeddings ``(B, D)``, with ``v'`` the detached
    UI-diverted target of :func:`ui_diverted_target`. For a unit embedding at cosine
    ``k > 0`` to the centre it is ``2 − 2·sqrt(1 − k²)``, zero for ``k ≤ 0``. An empty batch
    gives 0."""
    if unit_embeddings.numel() == 0:
        return unit_embeddings.sum() * 0
    target = ui_diverted_target(unit_embeddings, centre)
    return (unit_embeddings - target).pow(2).sum(dim=1).mean()
