"""Selection that uses the OTHER annotated points: the ``point-aware`` selector and the point constraint.

Every object comes with the points of its neighbours. A proposal that contains another object's point
(above all one of the same class) is a group or a spill-over, not this object. Everything here works on
the exported objects of a store (P objects, M proposals each) and never reads the ground truth.

Conventions: points ``xy (P, 2)`` are ``[x, y]`` pixel-index coordinates (the centre of pixel (r, c) is
``(c, r)``); boxes ``(P, M, 4)`` xyxy in edge coordinates; masks are the store's compressed COCO RLE.

- :func:`neighbour_counts`: per proposal, how many OTHER objects' points of the same image it contains,
  of the same class and of any class. ``test="mask"``: the point's pixel is in the mask (looked up on the
  RLE run lengths, no decoding); ``test="box"``: strictly inside the box (the PDG test of the code).
- :func:`penalty`: the violation ranking: the same-class count, then (``scope="any"``) the any-class count.
  :func:`allowed` marks, per object, the proposals of minimal penalty: the clean ones when one exists,
  else the least bad (the fallback never leaves an object without a candidate).
- :func:`select_point_aware`: among the allowed proposals, ``rule`` picks: ``consensus`` (the one that
  agrees best with the whole bag: highest mean mask IoU with the M proposals, :func:`proposal_consensus`),
  ``score`` (best backend score), ``median-area`` (the lower median of the areas), ``largest`` or
  ``smallest`` area.
- :func:`constrain_pick`, :func:`constrain_aux`: keep a learned pick (psm, sapnet) and the MPS
  auxiliary masks on allowed proposals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from stages.common.config import check_choices, option
from stages.common.errors import InputError
from stages.export.gt import image_groups

POINT_RULES = ("consensus", "median-area", "score", "largest", "smallest")
POINT_SCOPES = ("same", "any")
POINT_TESTS = ("mask", "box")


@dataclass(frozen=True)
class PointAwareOptions:
    """Choices of the ``point-aware`` selector and of the constraint (defaults fitted on one half of the
    dev data, docs/method.md §16).

    Attributes:
        rule: which allowed proposal wins (:data:`POINT_RULES`).
        scope: ``same``: only other points of the same class count; ``any``: same-class points first, then
            points of any class break the tie.
        test: ``box`` (strictly inside the box; ~10x cheaper) or ``mask`` (point pixel inside the mask).
    """

    rule: str = option(
        "consensus",
        "point-aware: which proposal wins among those without another point (consensus = highest "
        "mean mask IoU with the bag's proposals; fitted on half the dev data).",
        flag="--point-rule",
        choices=POINT_RULES,
    )
    scope: str = option(
        "any",
        "Points that count against a proposal: same (other points of the same class) or any "
        "(same class first, then any class). Also used by --point-constraint.",
        flag="--point-scope",
        choices=POINT_SCOPES,
    )
    test: str = option(
        "box",
        "A proposal contains a point when the point's pixel centre is strictly inside its box "
        "(box; cheap) or the pixel is in its mask (mask; about 10x slower).",
        flag="--point-test",
        choices=POINT_TESTS,
    )

    def validate(self) -> None:
        """InputError naming the option when a field is not one of its declared choices."""
        check_choices(self)


def _point_rles(pix: np.ndarray, h: int, w: int) -> list[dict]:
    """One-pixel COCO RLEs (compressed) of integer pixels ``pix (K, 2)`` = ``[col, row]``."""
    idx = pix[:, 0] * h + pix[:, 1]  # column-major (Fortran) pixel index, as RLE counts run
    raw = [{"size": [h, w], "counts": [int(i), 1, int(h * w - i - 1)]} for i in idx.tolist()]
    return mask_utils.frPyObjects(raw, h, w)


def _contains_mask(
    counts: np.ndarray, xy: np.ndarray, h: int, w: int, boxes: np.ndarray | None = None
) -> np.ndarray:
    """``(n, M, n)`` bool: proposal (i, m) of one image's n objects contains point j (mask test).

    Only proposals whose tight box (``boxes (n, M, 4)``; from the RLE when None) holds another point's
    pixel centre are looked up (a mask pixel lies inside the mask's box). pycocotools' IoU against a
    crowd region is ``|a & b| / |a|``; with ``a`` a one-pixel point RLE it is 1 exactly when the pixel is
    in the mask, computed on the RLE without decoding.
    """
    n, m = counts.shape
    pix = np.stack(
        [np.clip(np.rint(xy[:, 0]), 0, w - 1), np.clip(np.rint(xy[:, 1]), 0, h - 1)], axis=1
    ).astype(np.int64)
    if boxes is None:
        rles = [{"size": [h, w], "counts": str(c).encode("ascii")} for c in counts.reshape(-1)]
        boxes = np.asarray(mask_utils.toBbox(rles), dtype=np.float64).reshape(n, m, 4)
        boxes[..., 2:] += boxes[..., :2]  # xywh -> xyxy
    cand = _contains_box(boxes, pix)  # (n, M, n)
    cand[np.arange(n), :, np.arange(n)] = False  # the object's own point
    inside = np.zeros((n, m, n), dtype=bool)
    flat = np.flatnonzero(cand.any(axis=2))
    if len(flat) == 0:
        return inside
    props = [{"size": [h, w], "counts": str(c).encode("ascii")} for c in counts.reshape(-1)[flat]]
    hit = mask_utils.iou(_point_rles(pix, h, w), props, [1] * len(props))  # (n points, k)
    hit = np.asarray(hit, dtype=np.float64).reshape(n, len(flat)).T > 0.5  # (k, n)
    inside.reshape(n * m, n)[flat] = hit
    return inside & cand


def _strictly_inside(b: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """``x1 < px < x2 and y1 < py < y2`` for xyxy boxes ``b (..., 4)``, broadcast against ``px``, ``py``."""
    return (b[..., 0] < px) & (px < b[..., 2]) & (b[..., 1] < py) & (py < b[..., 3])


def _contains_box(boxes: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``(n, M, n)`` bool: point j (pixel centre ``xy + 0.5``) lies STRICTLY inside box (i, m)."""
    p = np.asarray(xy, dtype=np.float64) + 0.5
    b = np.asarray(boxes, dtype=np.float64)[:, :, None, :]  # (n, M, 1, 4)
    return _strictly_inside(b, p[None, None, :, 0], p[None, None, :, 1])


def neighbour_counts(
    image_index: np.ndarray,
    category_id: np.ndarray,
    xy: np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
    counts: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    test: str = "mask",
) -> tuple[np.ndarray, np.ndarray]:
    """How many OTHER objects' points each proposal contains.

    Args:
        image_index, category_id: ``(P,)`` the image and class of each object. xy: ``(P, 2)`` points.
        heights, widths: ``(P,)`` image size of each object.
        counts: ``(P, M)`` RLE counts (``test="mask"``). boxes: ``(P, M, 4)`` (``test="box"``).

    Returns:
        ``same (P, M)`` int32: other points of the same class inside proposal (i, m); ``other (P, M)``
        int32: other points of any class inside it (same-class ones included). Only points of the same
        image count; the object's own point never does.
    """
    if test not in POINT_TESTS:
        raise InputError(f"point test must be one of {', '.join(POINT_TESTS)}; got {test!r}")
    source = counts if test == "mask" else boxes
    if source is None:
        raise ValueError(f"test={test!r} needs {'counts' if test == 'mask' else 'boxes'}")
    p, m = source.shape[:2]
    image_index = np.asarray(image_index)
    if test == "box":
        return _box_counts(image_index, np.asarray(category_id), xy, boxes)
    same = np.zeros((p, m), np.int32)
    other = np.zeros((p, m), np.int32)
    for _, rows in image_groups(image_index):
        if len(rows) < 2:
            continue
        h, w = int(heights[rows[0]]), int(widths[rows[0]])
        sub = None if boxes is None else boxes[rows]
        inside = _contains_mask(counts[rows], xy[rows], h, w, sub)  # never the object's own point
        cat = category_id[rows]
        same_class = cat[:, None] == cat[None, :]  # (i, j)
        other[rows] = inside.sum(-1)
        same[rows] = (inside & same_class[:, None, :]).sum(-1)
    return same, other


def _image_pairs(image_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs ``(i, j)``, ``i != j``, of objects of the same image -> two ``(Q,)`` arrays
    (no ``(P, P)`` matrix: each object is expanded into its image's members)."""
    order = np.argsort(image_index, kind="stable")
    _, start, size = np.unique(image_index[order], return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(size)), size)  # group of order[k]
    per = size[group]  # members of each object's image
    first = np.repeat(order, per)
    block = np.repeat(np.cumsum(per) - per, per)
    offset = np.arange(len(first)) - block
    second = order[np.repeat(start[group], per) + offset]
    keep = first != second
    return first[keep], second[keep]


def _box_counts(
    image_index: np.ndarray, category_id: np.ndarray, xy: np.ndarray, boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`neighbour_counts` with the box test, vectorised over all same-image pairs at once."""
    p, m = boxes.shape[:2]
    i, j = _image_pairs(image_index)
    pt = np.asarray(xy, np.float64)[j] + 0.5  # (Q, 2) pixel centres of the other points
    b = np.asarray(boxes, np.float64)[i]  # (Q, M, 4)
    inside = _strictly_inside(b, pt[:, None, 0], pt[:, None, 1])  # (Q, M)
    flat = (i[:, None] * m + np.arange(m)[None, :]).ravel()
    other = np.bincount(flat, weights=inside.ravel(), minlength=p * m)
    same_class = (category_id[i] == category_id[j])[:, None]
    same = np.bincount(flat, weights=(inside & same_class).ravel(), minlength=p * m)
    return same.reshape(p, m).astype(np.int32), other.reshape(p, m).astype(np.int32)


def proposal_consensus(
    counts: np.ndarray, heights: np.ndarray, widths: np.ndarray, image_index: np.ndarray
) -> np.ndarray:
    """``(P, M)`` float64: mean mask IoU of each proposal with the M proposals of its own bag (itself
    included): how much the backend's alternatives agree with it (one pycocotools call per object).
    ``image_index`` is unused (kept for a per-image implementation)."""
    p, m = counts.shape
    out = np.zeros((p, m))
    for i in range(p):  # per object: only the diagonal blocks are needed
        rles = [
            {"size": [int(heights[i]), int(widths[i])], "counts": str(c).encode("ascii")}
            for c in counts[i]
        ]
        iou = np.asarray(mask_utils.iou(rles, rles, [0] * m), dtype=np.float64).reshape(m, m)
        out[i] = iou.mean(axis=1)
    return out


def penalty(same: np.ndarray, other: np.ndarray, scope: str = "any") -> np.ndarray:
    """``(P, M)`` int64 violation rank: ``same`` (scope "same"), else ``same`` first, ``other`` as the
    tie-break (``same * (M_points + 1) + other`` with a bound larger than any count)."""
    same = np.asarray(same, np.int64)
    if scope == "same":
        return same
    big = int(np.max(other, initial=0)) + 1
    return same * big + np.asarray(other, np.int64)


def allowed(pen: np.ndarray) -> np.ndarray:
    """``(P, M)`` bool: the proposals of minimal penalty per object (never empty)."""
    return pen == pen.min(axis=1, keepdims=True)


def _argmax_where(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, the index of the largest ``values`` among ``mask`` (ties: lowest index)."""
    return np.argmax(np.where(mask, values, -np.inf), axis=1).astype(np.int64)


def select_point_aware(
    scores: np.ndarray,
    areas: np.ndarray,
    ok: np.ndarray,
    rule: str = "consensus",
    consensus: np.ndarray | None = None,
) -> np.ndarray:
    """The ``point-aware`` pick ``(P,)`` int64 among the allowed proposals ``ok (P, M)``.

    ``consensus``: the highest ``consensus (P, M)`` (:func:`proposal_consensus`); ``score``: best backend
    score; ``largest`` / ``smallest``: area; ``median-area``: the proposal at position ``(k - 1) // 2`` of
    the k allowed ones sorted by area (ascending; ties by index). Ties go to the lowest index.
    """
    if rule == "consensus":
        if consensus is None:
            raise ValueError("rule 'consensus' needs the consensus array (proposal_consensus)")
        return _argmax_where(np.asarray(consensus, np.float64), ok)
    if rule == "score":
        return _argmax_where(np.asarray(scores, np.float64), ok)
    a = np.asarray(areas, np.float64)
    if rule == "largest":
        return _argmax_where(a, ok)
    if rule == "smallest":
        return _argmax_where(-a, ok)
    if rule != "median-area":
        raise InputError(f"point-aware rule must be one of {', '.join(POINT_RULES)}; got {rule!r}")
    order = np.argsort(np.where(ok, a, np.inf), axis=1, kind="stable")  # allowed first, by area
    k = ok.sum(axis=1)
    return order[np.arange(len(order)), (k - 1) // 2].astype(np.int64)


def constrain_pick(
    index: np.ndarray, ok: np.ndarray, preference: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Keep a learned pick on an allowed proposal.

    Args:
        index: ``(P,)`` the selector's pick. ok: ``(P, M)`` :func:`allowed`. preference: ``(P, M)`` how the
            selector ranks the alternatives (its scores, or the IoU with its BMS box).

    Returns:
        ``(new index (P,), changed (P,) bool)``: the pick where it is allowed, else the allowed proposal
        with the highest preference.
    """
    index = np.asarray(index, np.int64)
    rows = np.arange(len(index))
    keep = ok[rows, index]
    best = _argmax_where(np.asarray(preference, np.float64), ok)
    return np.where(keep, index, best), ~keep


def constrain_aux(
    aux_index: np.ndarray, ok: np.ndarray, scores: np.ndarray, ranks: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """MPS auxiliary masks with the constraint: rank the allowed proposals by ``scores`` first, the
    others after them, take ``ranks`` (1-based) and give the not-allowed ones weight 0.

    Returns ``(index (P, R) int64, keep (P, R) bool)``; ``aux_index`` (the unconstrained choice) only
    fixes R.
    """
    m = ok.shape[1]
    keep_ranks = [r - 1 for r in ranks if 1 <= r <= m]
    key = np.where(ok, 0.0, 1.0)[..., None]  # allowed first
    order = np.lexsort((-np.asarray(scores, np.float64), key[..., 0]), axis=1)
    index = order[:, keep_ranks].astype(np.int64)
    assert index.shape == np.asarray(aux_index).shape
    return index, np.take_along_axis(ok, index, axis=1)
