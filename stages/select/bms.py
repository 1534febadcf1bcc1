"""BMS (Box Mining Strategy), docs/method.md §9, and the box -> SAM-mask index of the same section.

Boxes are ``xyxy`` floats in edge coordinates; areas ``(x2 - x1) * (y2 - y1)`` (no ``+1``) and the
IoU of :func:`stages.common.boxes.box_iou_aligned` (0 for an empty union).

Algorithm (code behaviour, applied per object; vectorised over objects, sequential over the G
candidates because each step sees the box merged so far)::

    b <- selected box;  A_ref <- area(b);  best <- 0
    for g in candidates (in order; the caller passes the FIRST 3 proposals of the bag):
        if area(g) <= A_ref: skip                                  # only larger proposals
        u <- IoU(b, g)                                             # b = current merged box
        if u > t_min1 and u > best:                                # rule (i)
            b <- (g + u b) / (1 + u);  best <- u;  A_ref <- area(g)
        elif u > t_min2 and g contains b (tolerance) and u > best:  # rule (ii)
            b <- (u g + b) / (1 + u);  best <- u;  A_ref <- area(g)

"g contains b" is strict with the tolerance on every side: ``g.x1 - tol < b.x1``, ``g.y1 - tol <
b.y1``, ``g.x2 + tol > b.x2``, ``g.y2 + tol > b.y2``. After a merge the area threshold is the
merged PROPOSAL's area, not the merged box's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stages.common.boxes import box_area, box_iou_aligned

BMS_T_MIN1 = 0.6
"""Rule (i) IoU threshold (IoU-weighted merge with a larger proposal)."""
BMS_T_MIN2 = 0.3
"""Rule (ii) IoU threshold (merge with a larger proposal that contains the box)."""
BMS_TOLERANCE = 2.0
"""Containment tolerance of rule (ii), in pixels on each side."""
BMS_NUM_CANDIDATES = 3
"""The code's G: the first 3 proposals of the bag (the SAM point-prompt masks)."""
TOP1_WEIGHT_EPS = 1e-8
"""The code's top-k average ``sum_k w_k box_k`` with ``w = s / (sum s + 1e-8)``; k = 1 keeps the eps."""


@torch.no_grad()
def weighted_top1_box(box: Tensor, score: Tensor) -> Tensor:
    """The official code's top-1 box before BMS: ``box * (s / (s + 1e-8))`` computed in float32.

    The code builds the selected box as the score-weighted average of the top-k proposals, k = 1, so the
    weight ``s / (s + 1e-8)`` is not exactly 1 in float32 when ``s`` is small (below about 0.25): the box
    shrinks towards the origin by a few ulps. BMS then sees the picked proposal itself as a LARGER
    candidate with IoU ~1 and merges it first (``best`` ~1), which blocks every later merge, so for low
    scores the official BMS mostly keeps the pick. ``top1_box="exact"`` skips this (the proposal itself).

    Args:
        box: ``(N, 4)`` xyxy top-1 proposal per object. score: ``(N,)`` its selection score ``s``.

    Returns:
        ``(N, 4)`` in ``box``'s dtype (computed in float32, as the code on GPU).
    """
    s = score.detach().float()[:, None]
    weight = s / (s + TOP1_WEIGHT_EPS)
    return (box.detach().float() * weight).to(box.dtype)


@torch.no_grad()
def box_mining(
    selected: Tensor,
    candidates: Tensor,
    t_min1: float = BMS_T_MIN1,
    t_min2: float = BMS_T_MIN2,
    tolerance: float = BMS_TOLERANCE,
) -> Tensor:
    """Refine the selected box of every object with the BMS rules (see the module docstring).

    Args:
        selected: ``(N, 4)`` xyxy top-1 box per object (``box_select``, clamped to the image).
        candidates: ``(N, G, 4)`` xyxy candidate proposals, in order (code: ``proposals[:, :3]``).
        t_min1, t_min2: rule (i) / rule (ii) IoU thresholds (0.6 / 0.3).
        tolerance: containment tolerance of rule (ii) in pixels (2).

    Returns:
        ``(N, 4)`` the mined box ``box_prm`` (a new tensor; the inputs are not modified).
    """
    b = selected.detach().clone()
    cands = candidates.detach().to(b.dtype)
    a_ref = box_area(b)
    best = torch.zeros_like(a_ref)
    for k in range(cands.shape[1]):
        g = cands[:, k]
        a_g = box_area(g)
        larger = a_g > a_ref
        u = box_iou_aligned(b, g)
        rule1 = larger & (u > t_min1) & (u > best)
        contains = (
            (g[:, 0] - tolerance < b[:, 0])
            & (g[:, 1] - tolerance < b[:, 1])
            & (g[:, 2] + tolerance > b[:, 2])
            & (g[:, 3] + tolerance > b[:, 3])
        )
        rule2 = larger & ~rule1 & (u > t_min2) & contains & (u > best)
        uu = u[:, None]
        merged1 = (g + uu * b) / (1.0 + uu)
        merged2 = (uu * g + b) / (1.0 + uu)
        b = torch.where(rule1[:, None], merged1, torch.where(rule2[:, None], merged2, b))
        hit = rule1 | rule2
        best = torch.where(hit, u, best)
        a_ref = torch.where(hit, a_g, a_ref)
    return b


@torch.no_grad()
def proposal_index_for_box(box: Tensor, proposals: Tensor) -> Tensor:
    """Index of the proposal with the highest IoU with ``box``, ties -> lowest index.

    Args:
        box: ``(N, 4)`` xyxy (``box_prm``). proposals: ``(N, M, 4)`` xyxy (the object's SAM boxes).

    Returns:
        ``(N,)`` long; ``Mask_prm`` is SAM mask ``index`` of the object (docs/method.md §9).
    """
    iou = box_iou_aligned(box[:, None, :].to(proposals.dtype), proposals)  # (N, M)
    best = iou.max(dim=1, keepdim=True).values
    m = iou.shape[1]
    index = torch.arange(m, device=iou.device).expand_as(iou)
    return torch.where(iou == best, index, m).min(dim=1).values
