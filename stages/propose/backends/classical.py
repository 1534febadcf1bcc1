"""The weight-free ``classical`` proposal backend: an offline / CI stand-in for SAM.

Per image, ONCE: a Felzenszwalb over-segmentation into leaf regions, their colour histograms, moments and boundary
affinities (:func:`~stages.propose.backends._pointcrf.build_leaf_graph`). Per point, vectorised over all points
of a batch, two groupings of the leaves, each a colour-model figure/ground labelling with a spatial prior and
mean-field smoothing (:func:`~stages.propose.backends._pointcrf.figure_ground`):

* **pass 1, "point prompt"**: a disc prior around the point, at 13 radii (4 px to 256 px, factor sqrt 2);
* **pass 2, "ellipse prompt"** (the analogue of SAM's box-around-mask prompt): for each pass-1 mask, the ellipse
  of its second moments, centred halfway between the point and the mask's centroid, re-segmented.

Every candidate gets a prior score (how plausible it is as a whole object annotated with a quasi-centre point:
the point must be near the centre of the mask's box and centroid; a COCO-like size prior; strong image edges along
the mask's boundary; a compact shape). The linear weights :data:`PRIOR_WEIGHTS` were fitted once, by least squares
of the candidates' IoU with the ground truth of coco-dev (cross-validated on its two halves: +0.01 oracle mIoU
over fixed radii). The M = 6 proposals are chosen greedily by that score with non-maximum suppression (mask IoU
<= ``nms_iou``).

Proposal order (the SAM contract SAPNet relies on, see :attr:`ClassicalBackend.proposal_order`):

* **0, 1, 2**: three pass-1 ("point prompt") masks, small -> medium -> large and NESTED (proposal i is the union
  of the chosen masks 0..i): the BMS candidates, like SAM's three multimask outputs for a point;
* **3, 4, 5**: three pass-2 ("ellipse around a point-prompt mask") masks, by increasing area.

Every mask contains the pixel nearest to its point (that pixel's leaf is forced to foreground) and is non-empty.
Scores are stability scores in [0, 1], SAM's ``stability_score`` for the posterior ``q`` of the leaves:
``area(q > 0.5 + delta) / area(q > 0.5 - delta)`` (both with the point's leaf, nested like the mask).
Everything is deterministic (no randomness).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from stages.common.errors import InputError
from stages.propose.backends import _pointcrf as crf
from stages.propose.backends.base import ProposalBatch, check_inputs

ALGORITHM_VERSION = "3"

# Pass-1 disc radii in pixels: 4 * sqrt(2)**k, k = 0..12.
RADII = tuple(round(4.0 * math.sqrt(2.0) ** k, 2) for k in range(13))

# Linear prior score of a candidate mask (least-squares fit of candidate IoU on coco-dev; see the module
# docstring). Features: second_pass (1 for pass-2 masks); box_offset = max(|dx| / box w, |dy| / box h) of the
# point from the centre of the mask's box; centroid_offset = |point - centroid| / sqrt(area); log_area_vs_prior =
# log(area / (pi r^2)) for the prompt radius r; log_area = log(area in pixels); boundary_edge = mean
# colour-gradient magnitude along the mask's boundary with the rest of the image (object contours are strong
# edges); boundary_length_ratio = that boundary's length / sqrt(area) (compact masks are more object-like).
PRIOR_WEIGHTS = {
    "second_pass": -0.0027,
    "box_offset": -0.3511,
    "centroid_offset": -0.0822,
    "log_area_vs_prior": 0.0071,
    "log_area_vs_prior_sq": 0.0088,
    "log_area": 0.0941,
    "log_area_sq": -0.0069,
    "boundary_edge": 0.0120,
    "boundary_length_ratio": -0.0117,
}


@dataclass(frozen=True)
class ClassicalParams:
    """Every setting of the algorithm (all recorded in the fingerprint)."""

    fz_scale: float = 50.0
    fz_sigma: float = 0.8
    fz_min_size: int = 10
    edge_sigma: float = 2.0
    edge_scale: float = 10.0
    radii: tuple[float, ...] = RADII
    lam: float = 3.0
    beta: float = 3.0
    iters: int = 5
    fg_sigma: float = 0.5
    ring: tuple[float, float] = (1.5, 3.0)
    ellipse_centre_mix: float = 0.5  # 0 = at the point, 1 = at the pass-1 mask's centroid
    ellipse_scale: float = 1.0
    nms_iou: float = 0.7
    stability_delta: float = 0.25
    prior_weights: dict[str, float] = field(default_factory=lambda: dict(PRIOR_WEIGHTS))

    def __post_init__(self) -> None:
        if len(self.radii) < 3 or min(self.radii) <= 0:
            raise ValueError(f"need at least 3 positive radii, got {self.radii}")
        if not 0 < self.ring[0] < self.ring[1]:
            raise ValueError(f"ring must be (inner, outer) with 0 < inner < outer, got {self.ring}")
        if not 0 < self.nms_iou <= 1 or not 0 <= self.stability_delta < 0.5:
            raise ValueError("nms_iou must be in (0, 1] and stability_delta in [0, 0.5)")
        if set(self.prior_weights) != set(PRIOR_WEIGHTS):
            raise ValueError(f"prior_weights must have the keys {sorted(PRIOR_WEIGHTS)}")


class ClassicalBackend:
    """A :class:`~stages.propose.backends.base.ProposalBackend` from classical image segmentation.

    Args:
        num_proposals: 3 (pass-1 masks only) or 6 (plus the pass-2 masks).
        batch_points: points segmented per vectorised step (memory: about ``batch * 26 * leaves`` floats).
        params: algorithm settings.
    """

    name = "classical"

    def __init__(
        self,
        num_proposals: int = 6,
        batch_points: int = 64,
        params: ClassicalParams | None = None,
    ) -> None:
        if num_proposals not in (3, 6):
            raise InputError(
                f"the classical backend makes 3 or 6 proposals per point, not {num_proposals}"
            )
        if batch_points < 1:
            raise InputError(f"batch_points must be >= 1, got {batch_points}")
        self.num_proposals = int(num_proposals)
        self.batch_points = int(batch_points)
        self.params = params or ClassicalParams()
        self.proposal_order = [
            "point prompt (disc prior), smallest of the 3 chosen masks (part)",
            "point prompt (disc prior), union of masks 0-1 (medium)",
            "point prompt (disc prior), union of masks 0-2 (largest, whole)",
        ]
        if self.num_proposals == 6:
            self.proposal_order += [
                f"ellipse prompt around a point-prompt mask, {size} of 3 (by area)"
                for size in ("smallest", "middle", "largest")
            ]

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the proposals (JSON types only; ``batch_points`` excluded: it changes nothing)."""
        params = asdict(self.params)
        params["radii"] = [float(r) for r in params["radii"]]
        params["ring"] = [float(r) for r in params["ring"]]
        return {
            "name": self.name,
            "version": ALGORITHM_VERSION,
            "num_proposals": self.num_proposals,
            "params": params,
        }

    def propose(self, image: np.ndarray, points: np.ndarray) -> Iterator[ProposalBatch]:
        """Segment ``image`` once, then yield proposals for chunks of ``batch_points`` points."""
        image, pts = check_inputs(image, points, "classical", np.float64)
        if len(pts) == 0:
            return
        p = self.params
        graph = crf.build_leaf_graph(
            image, p.fz_scale, p.fz_sigma, p.fz_min_size, p.edge_sigma, p.edge_scale
        )
        leaf_box = leaf_boxes(graph.leaf_map, graph.num_leaves)
        for start in range(0, len(pts), self.batch_points):
            sel, scores = propose_leaves(
                graph, leaf_box, pts[start : start + self.batch_points], p, self.num_proposals
            )
            yield ProposalBatch(start, sel[:, :, graph.leaf_map], scores)


def build_classical_backend(
    num_proposals: int = 6,
    device: str = "cpu",
    model: str | None = None,
    checkpoint: str | None = None,
    batch_points: int = 64,
    precision: str = "fp32",
    **_ignored: Any,
) -> ClassicalBackend:
    """Factory registered as ``classical`` in :data:`~stages.propose.backends.base.BACKENDS`.

    ``device``, ``model``, ``checkpoint`` and ``precision`` are SAM options: accepted and ignored (CPU only).
    """
    return ClassicalBackend(num_proposals=num_proposals, batch_points=batch_points)


def propose_leaves(
    graph: crf.LeafGraph,
    leaf_box: np.ndarray,
    points: np.ndarray,
    params: ClassicalParams,
    num_proposals: int = 6,
) -> tuple[np.ndarray, np.ndarray]:
    """The M proposals of B points as leaf selections.

    Args:
        graph: the image's leaf graph (n leaves); leaf_box: its ``(n, 4)`` leaf boxes (:func:`leaf_boxes`).
        points: ``(B, 2)`` ``[x, y]`` pixel-index coordinates.

    Returns:
        ``sel (B, M, n)`` bool (pixel masks are ``sel[:, :, graph.leaf_map]``) and ``scores (B, M)`` float32
        stability scores, in the order of :attr:`ClassicalBackend.proposal_order`.
    """
    p = params
    b, n = len(points), graph.num_leaves
    radii = np.asarray(p.radii, dtype=np.float64)
    r = len(radii)
    seeds = np.repeat(graph.leaf_at(points), r)
    kw = {"lam": p.lam, "beta": p.beta, "iters": p.iters, "fg_sigma": p.fg_sigma, "ring": p.ring}
    sel1, q1 = crf.figure_ground(
        graph, crf.disc_distance(graph, points, radii).reshape(-1, n), seeds, **kw
    )
    sels, qs = [sel1], [q1]
    if num_proposals == 6:
        _, mean, cov = crf.mask_moments(graph, sel1)
        centres = p.ellipse_centre_mix * mean + (1.0 - p.ellipse_centre_mix) * np.repeat(
            points, r, 0
        )
        dist2 = crf.ellipse_distance(graph, centres, cov, p.ellipse_scale)
        sel2, q2 = crf.figure_ground(graph, dist2, seeds, **kw)
        sels.append(sel2)
        qs.append(q2)
    groups = len(sels)
    sel = np.concatenate([s.reshape(b, r, n) for s in sels], axis=1)  # (B, C, n), C = groups * R
    q = np.concatenate([x.reshape(b, r, n) for x in qs], axis=1)
    cand_group = np.repeat(np.arange(groups), r)
    prior = prior_scores(
        graph, leaf_box, sel, points, np.tile(radii, groups), cand_group, p.prior_weights
    )
    area = sel.astype(np.float64) @ graph.count  # (B, C)
    chosen = greedy_nms(
        prior,
        pairwise_iou(sel, graph.count),
        cand_group,
        [0, 0, 0, 1, 1, 1][:num_proposals],
        p.nms_iou,
    )
    # Order each group's three by area (small -> large).
    rows = np.arange(b)[:, None]
    for lo in range(0, num_proposals, 3):
        part = chosen[:, lo : lo + 3]
        chosen[:, lo : lo + 3] = np.take_along_axis(
            part, np.argsort(area[rows, part], axis=1, kind="stable"), 1
        )
    out = sel[rows, chosen]  # (B, M, n)
    qc = q[rows, chosen]
    seed_mask = np.zeros((b, 1, n), dtype=bool)
    seed_mask[np.arange(b), 0, graph.leaf_at(points)] = True
    lo_set = (qc > 0.5 - p.stability_delta) | seed_mask
    hi_set = (qc > 0.5 + p.stability_delta) | seed_mask
    for x in (out, lo_set, hi_set):  # proposals 0-2 nested: cumulative union
        x[:, :3] = np.logical_or.accumulate(x[:, :3], axis=1)
    scores = (hi_set.astype(np.float64) @ graph.count) / (lo_set.astype(np.float64) @ graph.count)
    return out, scores.astype(np.float32)


def leaf_boxes(leaf_map: np.ndarray, n: int) -> np.ndarray:
    """``(n, 4)`` float64 ``xyxy`` edge-coordinate boxes of the leaves of ``leaf_map`` (labels ``0..n-1``)."""
    boxes = np.zeros((n, 4), dtype=np.float64)
    for i, sl in enumerate(ndimage.find_objects(leaf_map + 1, max_label=n)):
        if sl is not None:
            boxes[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return boxes


def prior_scores(
    graph: crf.LeafGraph,
    leaf_box: np.ndarray,
    sel: np.ndarray,
    points: np.ndarray,
    radius: np.ndarray,
    cand_group: np.ndarray,
    weights: dict[str, float],
) -> np.ndarray:
    """Linear prior score of candidates ``sel (B, C, n)`` for ``points (B, 2)`` -> ``(B, C)`` (higher = better).

    ``radius (C,)`` is each candidate's prompt radius, ``cand_group (C,)`` its pass (0 or 1); see
    :data:`PRIOR_WEIGHTS` for the features.
    """
    b, c, n = sel.shape
    flat_t = np.ascontiguousarray(sel.reshape(b * c, n).T).astype(np.float32)  # (n, B*C)
    area = (graph.count @ flat_t).reshape(b, c)
    cen = ((graph.centroid * graph.count[:, None]).T @ flat_t).T.reshape(b, c, 2) / area[..., None]
    x1 = np.where(sel, leaf_box[:, 0], np.inf).min(-1)
    y1 = np.where(sel, leaf_box[:, 1], np.inf).min(-1)
    x2 = np.where(sel, leaf_box[:, 2], -np.inf).max(-1)
    y2 = np.where(sel, leaf_box[:, 3], -np.inf).max(-1)
    px, py = points[:, 0:1] + 0.5, points[:, 1:2] + 0.5  # edge coordinates, like the boxes
    box_offset = np.maximum(
        np.abs(px - (x1 + x2) / 2) / np.maximum(x2 - x1, 1.0),
        np.abs(py - (y1 + y2) / 2) / np.maximum(y2 - y1, 1.0),
    )
    centroid_offset = np.linalg.norm(cen - points[:, None, :], axis=-1) / np.sqrt(area)
    la = np.log(area / (np.pi * radius**2))
    lg = np.log(area)
    outside = 1.0 - flat_t
    cut_length = ((graph.boundary_length @ flat_t) * outside).sum(0).reshape(b, c)
    cut_edge = ((graph.boundary_edge @ flat_t) * outside).sum(0).reshape(b, c)
    w = weights
    return (
        w["boundary_edge"] * cut_edge / np.maximum(cut_length, 1.0)
        + w["boundary_length_ratio"] * cut_length / np.sqrt(area)
        + w["second_pass"] * (cand_group == 1)
        + w["box_offset"] * box_offset
        + w["centroid_offset"] * centroid_offset
        + w["log_area_vs_prior"] * la
        + w["log_area_vs_prior_sq"] * la**2
        + w["log_area"] * lg
        + w["log_area_sq"] * lg**2
    )


def pairwise_iou(sel: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mask IoU between the candidates of each point: ``sel (B, C, n)`` bool, leaf pixel counts ``(n,)`` ->
    ``(B, C, C)``."""
    s = sel.astype(np.float32)
    inter = (s * count.astype(np.float32)) @ s.transpose(0, 2, 1)
    area = np.diagonal(inter, axis1=1, axis2=2)
    return inter / (area[:, :, None] + area[:, None, :] - inter)


def greedy_nms(
    prior: np.ndarray,
    iou: np.ndarray,
    cand_group: np.ndarray,
    slot_group: list[int],
    nms_iou: float,
) -> np.ndarray:
    """Choose one candidate per slot, vectorised over points (the loop runs over the M slots).

    Slot s takes the best-``prior`` candidate of group ``slot_group[s]`` not yet taken and not suppressed
    (IoU > ``nms_iou`` with a taken one); if the group has none left unsuppressed, the one not yet taken whose
    largest IoU with the taken ones is smallest (ties: best prior).

    Args:
        prior: ``(B, C)`` scores; iou: ``(B, C, C)``; cand_group: ``(C,)`` group of each candidate.

    Returns:
        ``(B, M)`` int64 candidate indices.
    """
    b, c = prior.shape
    rows = np.arange(b)
    chosen = np.zeros((b, len(slot_group)), dtype=np.int64)
    taken = np.zeros((b, c), dtype=bool)
    overlap = np.zeros((b, c))  # largest IoU with a taken candidate
    rank = np.argsort(np.argsort(-prior, axis=1, kind="stable"), axis=1)  # 0 = best prior
    for s, g in enumerate(slot_group):
        free = (cand_group == g)[None, :] & ~taken
        ok = free & (overlap <= nms_iou)
        j_ok = np.argmax(np.where(ok, prior, -np.inf), axis=1)
        j_free = np.argmin(np.where(free, overlap + 1e-6 * rank, np.inf), axis=1)
        j = np.where(ok.any(1), j_ok, j_free)
        chosen[:, s] = j
        taken[rows, j] = True
        overlap = np.maximum(overlap, iou[rows, j, :])
    return chosen
