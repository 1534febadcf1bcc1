"""Matrix NMS (SOLOv2): class-aware, one-shot soft suppression of masks sorted by score.

For masks sorted by descending score, with ``iou[i, j]`` the mask IoU of i and j kept only when ``i < j``
(i scores higher) and both have the same label (0 otherwise):

    comp[i]  = max_k iou[k, i]                  (how much i is itself suppressed: "compensate IoU")
    decay[j] = min_i f(iou[i, j]) / f(comp[i])  (over all i; entries with iou 0 give >= 1)
    score'[j] = score[j] * decay[j]

with the gaussian ``f(x) = exp(-sigma * x^2)`` (the reference code's form, sigma = 2) or linear
``f(x) = 1 - x``. A linear ratio with ``f(comp[i]) = 0`` (i duplicates a higher mask) is +inf, so such an i
never suppresses others.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mask_iou_matrix(masks: Tensor, mask_area: Tensor | None = None) -> Tensor:
    """Pairwise IoU ``(n, n)`` float32 of ``masks (n, H, W)`` (bool or {0, 1}); 0 where the union is 0."""
    n = masks.shape[0]
    flat = masks.reshape(n, -1).to(torch.float32)
    inter = flat @ flat.T
    area = flat.sum(dim=1) if mask_area is None else mask_area.to(torch.float32)
    union = area[:, None] + area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-6), torch.zeros_like(inter))


def matrix_nms(
    masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    kernel: str = "gaussian",
    sigma: float = 2.0,
    mask_area: Tensor | None = None,
) -> Tensor:
    """Decayed scores ``(n,)`` by Matrix NMS (formulas in the module docstring).

    Args:
        masks: ``(n, H, W)`` bool or {0, 1} float masks, sorted by descending ``scores``.
        labels: ``(n,)`` class ids; only masks of the same class suppress each other.
        scores: ``(n,)`` scores, sorted descending.
        kernel: "gaussian" or "linear".
        sigma: gaussian parameter in ``exp(-sigma * iou^2)``.
        mask_area: optional precomputed ``(n,)`` mask areas (pixel counts).
    """
    n = scores.shape[0]
    if n == 0:
        return scores.clone()
    iou = mask_iou_matrix(masks, mask_area)
    same = labels[:, None] == labels[None, :]
    decay_iou = torch.where(same, iou, torch.zeros_like(iou)).triu(diagonal=1)
    comp = decay_iou.max(dim=0).values[:, None]  # (n, 1): row i's own compensate IoU
    if kernel == "gaussian":
        ratio = torch.exp(-sigma * (decay_iou**2 - comp**2))
    elif kernel == "linear":
        den = (1.0 - comp).expand_as(decay_iou)
        ratio = torch.where(
            den > 0, (1.0 - decay_iou) / den.clamp(min=1e-12), torch.full_like(den, float("inf"))
        )
    else:
        raise ValueError(f"matrix_nms: unknown kernel {kernel!r} (use 'gaussian' or 'linear')")
    decay = ratio.min(dim=0).values
    return scores * decay.to(scores.dtype)
