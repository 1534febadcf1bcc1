"""MIL bag scores, losses and selection of the PSM (stage 0) and PRM (stage 1), docs/method.md §5, §8.

Shapes: ``N`` bags (objects of the whole batch), ``M`` proposals per bag, ``K`` classes
(PSM: ``K0 = num_classes + 1`` with the background column last, COCO 81; PRM: ``K1 =
num_classes``, COCO 80). ``labels (N,)`` are class indices into the K columns. Logits come
straight from the head's linear layers; everything returned keeps the autograd graph except the
selection functions (detached) and the weights ``beta`` (treated as constants).

- PSM: ``S_cls = softmax_K(W_cls)``, ``S_ins = softmax_M(W_ins)``, bag ``= sum_m S_cls * S_ins``,
  BCE summed over all K columns, mean over bags, loss weight 0.25.
- PRM: ``P_cls = sigmoid(W_cls)``, ``P_ins = softmax_M(W_ins)``; positive loss = generalised focal
  BCE (gamma 2) weighted by the PSM bag score ``beta_i`` of the GT class; negative loss on the
  negatives' classification branch only; ``L_prm = 0.25 L_pos + 0.75 L_neg``.
- Selection (both stages): ``softmax_K(W_cls)[c] * softmax_M(W_ins)[c]`` and top-1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stages.select.config import PSM_NORMALISE

PSM_LOSS_WEIGHT = 0.25
"""lambda of Eq. 9: the caller multiplies ``psm_loss`` by this."""
PRM_ALPHA = 0.25
"""alpha of Eq. 8: ``L_prm = alpha L_pos + (1 - alpha) L_neg``."""
PRM_GAMMA = 2.0
PRM_EPS = 1e-6

_NEG_NORMALISE = ("bags", "negatives")


def _instance_probs(ins_logits: Tensor, valid: Tensor | None) -> Tensor:
    """softmax over proposals (dim 1), times the validity mask, L1-renormalised over proposals."""
    prob = ins_logits.softmax(dim=1)
    if valid is None:
        return prob
    prob = prob * valid[..., None].to(prob.dtype)
    return prob / prob.sum(dim=1, keepdim=True).clamp(min=1e-12)


def _bag(
    cls_prob: Tensor, ins_prob: Tensor, proposal_factor: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    score = cls_prob * ins_prob
    if proposal_factor is not None:
        score = score * proposal_factor.detach().to(score.dtype)[..., None]
    return score.sum(dim=1).clamp(0.0, 1.0), cls_prob, ins_prob


def psm_bag_scores(
    cls_logits: Tensor,
    ins_logits: Tensor,
    valid: Tensor | None = None,
    proposal_factor: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """PSM bag scores (Eq. 1, 3).

    Args:
        cls_logits: ``(N, M, K)``; with the code's PDG pass ``pdg.apply_pdg(...)`` output here.
        ins_logits: ``(N, M, K)``.
        valid: optional ``(N, M)`` bool; invalid proposals get instance probability 0 and the
            valid ones are renormalised to sum to 1 (all-invalid bags get 0 everywhere).
        proposal_factor: optional ``(N, M)`` constant multiplied into ``S_cls * S_ins`` before the
            sum over proposals (the paper's ``S_dis``, from ``apply_pdg(mode="paper")``).

    Returns:
        ``bag (N, K)`` = ``sum_m S_cls * S_ins`` clamped to [0, 1], ``cls_prob (N, M, K)`` (softmax
        over classes) and ``ins_prob (N, M, K)`` (masked softmax over proposals).
    """
    cls_prob = cls_logits.softmax(dim=-1)
    return _bag(cls_prob, _instance_probs(ins_logits, valid), proposal_factor)


def prm_bag_scores(
    cls_logits: Tensor,
    ins_logits: Tensor,
    valid: Tensor | None = None,
    proposal_factor: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """PRM bag scores: SIGMOID over classes x softmax over proposals; same contract as
    :func:`psm_bag_scores` (``cls_logits``/``ins_logits`` ``(N, M1, K1)``)."""
    cls_prob = torch.sigmoid(cls_logits)
    return _bag(cls_prob, _instance_probs(ins_logits, valid), proposal_factor)


def _zero_with_grad(x: Tensor) -> Tensor:
    """A scalar 0 that stays connected to the graph of ``x`` (for empty batches)."""
    return x.sum() * 0.0


def psm_loss(
    bag: Tensor, labels: Tensor, bag_valid: Tensor | None = None, normalise: str = "valid-bags"
) -> Tensor:
    """PSM MIL loss (Eq. 3): BCE of ``bag (N, K)`` against one-hot ``labels (N,)``.

    Summed over all K columns (the background column always has target 0); logs are clamped at -100
    (torch's BCE). ``bag_valid (N,)`` bool marks the bags with at least one valid proposal (None: all).
    ``normalise``: ``"valid-bags"`` (official code): empty bags weigh 0 and the sum is divided by the
    number of non-empty bags (at least 1); ``"all-bags"``: every bag counts and the sum is divided by N.
    ``N = 0`` (or no valid bag) gives 0 with a grad path. Not weighted: the caller multiplies by
    :data:`PSM_LOSS_WEIGHT`.
    """
    if normalise not in PSM_NORMALISE:
        raise ValueError(f"normalise must be one of {PSM_NORMALISE}, got {normalise!r}")
    n = bag.shape[0]
    if n == 0:
        return _zero_with_grad(bag)
    # torch's BCE clamps the logs at -100 with a finite gradient at 0 and 1; it is computed in at
    # least float32 (half inputs are upcast, the result is cast back).
    p = bag if bag.dtype in (torch.float32, torch.float64) else bag.float()
    q = F.one_hot(labels.long(), bag.shape[-1]).to(p.dtype)
    if bag_valid is None or normalise == "all-bags":
        return (F.binary_cross_entropy(p, q, reduction="sum") / n).to(bag.dtype)
    per_bag = F.binary_cross_entropy(p, q, reduction="none").sum(dim=-1)
    weight = bag_valid.to(per_bag.dtype)
    denom = weight.sum().clamp(min=1.0)
    return ((per_bag * weight).sum() / denom).to(bag.dtype)


def prm_positive_loss(
    bag: Tensor,
    labels: Tensor,
    beta: Tensor,
    gamma: float = PRM_GAMMA,
    eps: float = PRM_EPS,
) -> Tensor:
    """PRM positive MIL loss (Eq. 5):
    ``(1/N) sum_i beta_i sum_k -|p - q|^gamma [q log(p + eps) + (1 - q) log(1 - p + eps)]``.

    Args:
        bag: ``(N, K1)`` PRM bag scores ``p`` (from :func:`prm_bag_scores`).
        labels: ``(N,)`` class indices (``q`` = one-hot).
        beta: ``(N,)`` PSM bag score of the GT class per bag; detached here.
    ``N = 0`` gives 0 with a grad path. The modulating factor is not detached (as the code).
    """
    n = bag.shape[0]
    if n == 0:
        return _zero_with_grad(bag)
    q = F.one_hot(labels.long(), bag.shape[-1]).to(bag.dtype)
    modulator = (bag - q).abs().pow(gamma)
    bce = q * torch.log(bag + eps) + (1.0 - q) * torch.log(1.0 - bag + eps)
    per_bag = -(modulator * bce).sum(dim=-1)
    return (per_bag * beta.detach().to(per_bag.dtype)).sum() / n


def prm_negative_loss(
    neg_cls_logits: Tensor,
    weights: Tensor,
    beta_mean: Tensor,
    num_bags: int,
    eps: float = PRM_EPS,
    normalise: str = "bags",
) -> Tensor:
    """PRM negative loss (Eq. 6, 7), classification branch only.

    ``beta_mean * sum_n w_n sum_k -p_nk^2 log(1 - p_nk + eps) / D`` with ``p = sigmoid(logits)``.

    Args:
        neg_cls_logits: ``(Nn, K1)`` stage-1 class logits of all negatives of the batch.
        weights: ``(Nn,)`` 0/1 validity weights (NPG).
        beta_mean: scalar, mean over the batch's bags of the PSM GT-class bag score (detached).
        num_bags: number of positive bags N in the batch.
        normalise: ``"bags"`` (code): ``D = num_bags``; ``"negatives"`` (paper ``1/|U|``):
            ``D`` = number of negatives with weight > 0. ``D`` is clamped at >= 1.
    Not weighted: :func:`prm_loss` applies ``1 - alpha``.
    """
    if normalise not in _NEG_NORMALISE:
        raise ValueError(f"normalise must be one of {_NEG_NORMALISE}, got {normalise!r}")
    if neg_cls_logits.shape[0] == 0:
        return _zero_with_grad(neg_cls_logits)
    p = torch.sigmoid(neg_cls_logits)
    per_neg = -(p * p * torch.log(1.0 - p + eps)).sum(dim=-1)
    total = (per_neg * weights.detach().to(per_neg.dtype)).sum()
    if normalise == "bags":
        denom = max(int(num_bags), 1)
    else:
        denom = max(int((weights > 0).sum().item()), 1)
    beta = torch.as_tensor(beta_mean, device=total.device).detach().to(total.dtype)
    return total * beta / denom


def prm_loss(pos: Tensor, neg: Tensor, alpha: float = PRM_ALPHA) -> Tensor:
    """``L_prm = alpha * L_pos + (1 - alpha) * L_neg`` (Eq. 8)."""
    return alpha * pos + (1.0 - alpha) * neg


@torch.no_grad()
def selection_scores(
    cls_logits: Tensor,
    ins_logits: Tensor,
    labels: Tensor,
    valid: Tensor | None = None,
    proposal_factor: Tensor | None = None,
) -> Tensor:
    """Per-proposal selection score of the GT class, detached -> ``(N, M)``.

    ``softmax_K(W_cls)[m, c] * softmax_M(W_ins)[m, c]`` (softmax over classes in BOTH stages, as
    the code, although the PRM loss uses sigmoid). With ``valid`` the instance softmax is
    renormalised over the valid proposals and invalid ones score 0. Use the raw (un-PDG-scaled)
    logits; ``proposal_factor (N, M)`` optionally multiplies the scores (paper PDG). Its row sums
    are ``beta`` (PSM bag score of the GT class), used to weight the PRM losses.
    """
    idx = labels.long()[:, None, None].expand(-1, cls_logits.shape[1], 1)
    cls_prob = cls_logits.softmax(dim=-1).gather(-1, idx)[..., 0]
    # the softmax over proposals is per class column: only the GT column is needed
    ins_prob = _instance_probs(ins_logits.gather(-1, idx), valid)[..., 0]
    scores = cls_prob * ins_prob
    if valid is not None:
        scores = scores * valid.to(scores.dtype)
    if proposal_factor is not None:
        scores = scores * proposal_factor.to(scores.dtype)
    return scores.detach()


def top1(scores: Tensor) -> Tensor:
    """Index of the best proposal per bag, ``(N, M)`` -> ``(N,)`` long; ties go to the lowest
    index (on every device)."""
    if scores.shape[1] == 0:
        raise ValueError("top1 needs at least one proposal per bag")
    best = scores.max(dim=1, keepdim=True).values
    m = scores.shape[1]
    index = torch.arange(m, device=scores.device).expand_as(scores)
    return torch.where(scores == best, index, m).min(dim=1).values
