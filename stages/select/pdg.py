"""PDG (Point Distance Guidance) of the PSM stage, docs/method.md §6.

Conventions: boxes are ``xyxy`` floats in edge coordinates of the resized training image; points
``(N, 2)`` are ``[x, y]`` in the SAME edge coordinates (the caller adds 0.5 to pixel-index points
and applies the resize scale). The objects of a whole batch are concatenated along N; ``image_ids
(N,)`` says which image each object belongs to, so only objects of the same image are compared.

Code behaviour (default):

- ``t[i, m, j] = 1`` iff object ``j != i`` has the same label, is in the same image, and its point
  lies STRICTLY inside proposal box ``(i, m)``;
- ``W[i, m] = sum_j t[i, m, j] * ||p_i - p_j|| ** 0.5``;
- ``S[i, m] = sigmoid(1 / W[i, m])``, exactly 1 where ``W == 0``; S lies in (0.5, 1];
- the stage-0 class LOGITS are multiplied by ``S ** (1/64)`` before the MIL loss (not used for the
  stage-0 selection). ``S`` itself (without the power) also drives the PPG shrink branch.

Paper options: ``overlap="box"`` (t = proposal (i, m) overlaps any proposal of another same-class
bag), ``distance_power=1.0`` (plain Euclidean distance) and ``apply_pdg(mode="paper")`` (a
per-proposal factor multiplied into ``S_cls * S_ins``). Nothing here needs gradients; outputs are
computed without autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

PDG_DISTANCE_POWER = 0.5
"""Exponent on the Euclidean point distance (code: square root; paper: 1)."""
PDG_POWER = 1.0 / 64.0
"""Exponent d applied to S before use (code ``0.0625 * 0.25``)."""

_OVERLAP_MODES = ("point", "box")


def _same_group_pairs(labels: Tensor, image_ids: Tensor) -> tuple[Tensor, Tensor]:
    """All ordered pairs ``(i, j)``, ``i != j``, of objects with the same label and image.

    Built group by group without an ``(N, N)`` matrix: sort the objects by group, then expand each
    object into its group's members. Returns two ``(P,)`` long tensors.
    """
    device = labels.device
    n = labels.shape[0]
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    keys = torch.stack([image_ids.long(), labels.long()], dim=1)
    _, group = torch.unique(keys, dim=0, return_inverse=True)
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group)
    starts = torch.cumsum(counts, 0) - counts
    per_object = counts[group]  # members of i's group, i itself included
    first = torch.repeat_interleave(torch.arange(n, device=device), per_object)
    block_start = torch.repeat_interleave(torch.cumsum(per_object, 0) - per_object, per_object)
    offset = torch.arange(first.shape[0], device=device) - block_start
    second = order[starts[group[first]] + offset]
    keep = first != second
    return first[keep], second[keep]


def _pair_indicator(
    boxes: Tensor, points: Tensor, first: Tensor, second: Tensor, overlap: str
) -> Tensor:
    """``(P, M)`` bool: t for each pair ``(i, j) = (first, second)`` and proposal m of object i."""
    own = boxes[first]  # (P, M, 4)
    if overlap == "point":
        p = points[second][:, None, :]  # (P, 1, 2)
        return (
            (own[..., 0] < p[..., 0])
            & (p[..., 0] < own[..., 2])
            & (own[..., 1] < p[..., 1])
            & (p[..., 1] < own[..., 3])
        )
    other = boxes[second]  # (P, M', 4)
    iw = torch.minimum(own[:, :, None, 2], other[:, None, :, 2]) - torch.maximum(
        own[:, :, None, 0], other[:, None, :, 0]
    )
    ih = torch.minimum(own[:, :, None, 3], other[:, None, :, 3]) - torch.maximum(
        own[:, :, None, 1], other[:, None, :, 1]
    )
    return ((iw > 0) & (ih > 0)).any(dim=2)


def _check_overlap(overlap: str) -> None:
    if overlap not in _OVERLAP_MODES:
        raise ValueError(f"overlap must be one of {_OVERLAP_MODES}, got {overlap!r}")


@torch.no_grad()
def point_containment(
    boxes: Tensor,
    points: Tensor,
    labels: Tensor,
    image_ids: Tensor,
    overlap: str = "point",
) -> Tensor:
    """Dense PDG indicator ``t`` -> ``(N, M, N)`` bool.

    Args:
        boxes: ``(N, M, 4)`` xyxy proposal boxes of each object (edge coordinates).
        points: ``(N, 2)`` ``[x, y]`` annotated points in the same edge coordinates.
        labels: ``(N,)`` class ids. image_ids: ``(N,)`` image index of each object.
        overlap: ``"point"`` (code): ``t[i, m, j]`` iff ``j != i``, same label, same image and point
            ``j`` strictly inside box ``(i, m)`` (a point on the border is outside). ``"box"``
            (paper): proposal ``(i, m)`` intersects (positive area) any proposal of bag ``j``.

    Memory is ``N * M * N``; :func:`pdg_weights` does not build this tensor.
    """
    _check_overlap(overlap)
    n, m = boxes.shape[:2]
    t = torch.zeros((n, m, n), dtype=torch.bool, device=boxes.device)
    first, second = _same_group_pairs(labels, image_ids)
    if first.numel() == 0:
        return t
    t[first, :, second] = _pair_indicator(boxes, points, first, second, overlap)
    return t


@torch.no_grad()
def pdg_weights(
    boxes: Tensor,
    points: Tensor,
    labels: Tensor,
    image_ids: Tensor,
    distance_power: float = PDG_DISTANCE_POWER,
    overlap: str = "point",
) -> Tensor:
    """PDG penalty ``W[i, m] = sum_j t[i, m, j] * ||p_i - p_j|| ** distance_power`` -> ``(N, M)``.

    Same arguments as :func:`point_containment`. The code raises the squared distance to 0.25,
    i.e. ``distance_power = 0.5`` (square root of the Euclidean distance); the paper uses 1.0.
    Only same-image, same-label pairs are visited (memory ``O(pairs * M)``, not ``N^2 * M``).
    Returned in the dtype of ``boxes`` (float32 if they are not floating point).
    """
    _check_overlap(overlap)
    n, m = boxes.shape[:2]
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    w = torch.zeros((n, m), dtype=dtype, device=boxes.device)
    first, second = _same_group_pairs(labels, image_ids)
    if first.numel() == 0:
        return w
    t = _pair_indicator(boxes, points, first, second, overlap)  # (P, M)
    diff = (points[first] - points[second]).to(dtype)
    dist = (diff * diff).sum(dim=1).pow(distance_power / 2.0)  # ||d|| ** power
    w.index_add_(0, first, t.to(dtype) * dist[:, None])
    return w


@torch.no_grad()
def pdg_scores(weights: Tensor) -> Tensor:
    """``S = sigmoid(1 / W)`` -> same shape, exactly 1 where ``W == 0`` (nothing contained).

    For ``W > 0`` S lies in (0.5, 1): a farther or an additional contained point lowers S.
    """
    positive = weights > 0
    safe = torch.where(positive, weights, torch.ones_like(weights))
    return torch.where(positive, torch.sigmoid(1.0 / safe), torch.ones_like(weights))


def apply_pdg(
    cls_logits: Tensor,
    scores: Tensor,
    power: float = PDG_POWER,
    mode: str = "logits",
) -> Tensor:
    """Apply the PDG scores to the PSM.

    Args:
        cls_logits: ``(N, M, K)`` stage-0 classification logits (gradients flow through them).
        scores: ``(N, M)`` S from :func:`pdg_scores` (treated as a constant).
        power: the exponent d (code 1/64); the paper leaves d open, the same value is used.
        mode: ``"logits"`` (code, default): returns ``cls_logits * S ** power`` broadcast over the
            K classes, ``(N, M, K)``; feed it to ``psm_bag_scores`` / the stage-0 MIL loss instead
            of the raw logits (the stage-0 selection keeps the raw logits). ``"paper"``: returns
            the per-proposal factor ``S_dis = S ** power`` of shape ``(N, M)`` (``cls_logits`` only
            gives dtype/device); the caller passes it as ``proposal_factor=`` to
            ``mil.psm_bag_scores`` (loss, ``S = S_cls * S_ins * S_dis``) and, if wanted, to
            ``mil.selection_scores`` (PSM pick rescored by S_dis).
    """
    factor = scores.detach().to(cls_logits.dtype).pow(power)
    if mode == "logits":
        return cls_logits * factor[..., None]
    if mode == "paper":
        return factor.to(cls_logits.device)
    raise ValueError(f"mode must be 'logits' or 'paper', got {mode!r}")
