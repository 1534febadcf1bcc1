"""Which of an object's M proposals becomes its pseudo mask: SAPNet and the baselines without training.

Every selector is a pure function of per-object arrays returning a :class:`Choice` (proposal index and the
pseudo label's ``score``), registered in :data:`SELECTORS` under its CLI name (``--selector``), and
:func:`choose_proposals` runs one. Naming: in this module a "selector" is such a rule; the MIL network that
`sapnet select` trains is the *selector network* (:mod:`stages.select`), whose output the ``sapnet`` and
``psm`` rules read.

- ``sapnet``: ``Selections.final_index`` (PRM + BMS box, matched back to a proposal); score = the bag score.
  With the point constraint (``SelectorInputs.allowed``), a pick outside the allowed proposals moves to the
  allowed proposal whose box has the highest IoU with the BMS box.
- ``psm``: ``Selections.psm_top1`` (PSM only, stage 0); score = that proposal's PSM score. With the point
  constraint, the allowed proposal with the best PSM score.
- ``top1``: the backend's own best score ("SAM-top1" in the paper); score = that backend score.
- ``largest``: the largest mask area (ties: lowest index); score = that proposal's backend score.
- ``point-aware``: training-free, uses the other annotated points (``stages.export.point_aware``): among the
  proposals that contain no other point (same class, then any class; else the least bad), the one chosen
  by the rule (default: the best agreement with the bag); score = its backend score.
- ``oracle``: the highest mask IoU with the ground truth; score = that IoU. An upper bound that reads the GT:
  never training data by default (the file's ``info`` says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stages.common.boxes import box_iou_aligned
from stages.common.errors import StoreError
from stages.common.selections import Selections
from stages.export.point_aware import constrain_pick, select_point_aware


@dataclass
class Choice:
    """A selector's decision for P objects: ``index (P,)`` int64 in ``[0, M)``, ``score (P,)`` float32."""

    index: np.ndarray
    score: np.ndarray


@dataclass
class SelectorInputs:
    """What selectors read, restricted to the exported objects (P of them, M proposals each).

    Attributes:
        scores: ``(P, M)`` backend scores. areas: ``(P, M)`` mask areas in pixels.
        selections: the `sapnet select` output for these objects, or None.
        gt_iou: ``(P, M)`` mask IoU of each proposal with the object's GT mask, or None.
        boxes: ``(P, M, 4)`` proposal boxes (xyxy), or None.
        allowed: ``(P, M)`` bool proposals that pass the point test (``point_aware.allowed``), or None:
            with it ``point-aware`` runs, and ``sapnet``/``psm`` are constrained.
        consensus: ``(P, M)`` ``point_aware.proposal_consensus`` (rule "consensus"), or None.
        point_rule: the ``point-aware`` rule.
        constrain: apply ``allowed`` to the learned picks (sapnet, psm).
    """

    scores: np.ndarray
    areas: np.ndarray
    selections: Selections | None = None
    gt_iou: np.ndarray | None = None
    boxes: np.ndarray | None = None
    allowed: np.ndarray | None = None
    consensus: np.ndarray | None = None
    point_rule: str = "consensus"
    constrain: bool = False


def _take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values (P, M)`` at ``index (P,)`` -> ``(P,)`` float32."""
    return np.take_along_axis(values, index[:, None], axis=1)[:, 0].astype(np.float32)


def select_top1(scores: np.ndarray) -> Choice:
    """Backend top-1: ``argmax`` of ``scores (P, M)`` (ties: lowest index)."""
    index = np.argmax(scores, axis=1).astype(np.int64)
    return Choice(index, _take(scores, index))


def select_largest(areas: np.ndarray, scores: np.ndarray) -> Choice:
    """Largest mask: ``argmax`` of ``areas (P, M)``; score = the chosen proposal's backend score."""
    index = np.argmax(areas, axis=1).astype(np.int64)
    return Choice(index, _take(scores, index))


def select_psm(sel: Selections, allowed: np.ndarray | None = None) -> Choice:
    """PSM-only: ``sel.psm_top1``; score = ``sel.psm_scores`` at that proposal. With ``allowed (P, M)``
    a pick outside it moves to the allowed proposal with the best PSM score."""
    index = np.asarray(sel.psm_top1, dtype=np.int64)
    scores = np.asarray(sel.psm_scores)
    if allowed is not None:
        index, _ = constrain_pick(index, allowed, scores)
    return Choice(index, _take(scores, index))


def select_sapnet(
    sel: Selections, allowed: np.ndarray | None = None, boxes: np.ndarray | None = None
) -> Choice:
    """SAPNet: ``sel.final_index``; score = ``sel.bag_score``. With ``allowed (P, M)`` and the proposal
    ``boxes (P, M, 4)``, a pick outside it moves to the allowed proposal whose box has the highest IoU
    with the BMS box ``sel.bms_box`` (the BMS result matched within the allowed proposals)."""
    index = np.asarray(sel.final_index, dtype=np.int64)
    if allowed is not None:
        if boxes is None:
            raise ValueError("the constrained sapnet selector needs the proposal boxes")
        pref = box_iou_aligned(np.asarray(sel.bms_box)[:, None, :], boxes)  # (P, M)
        index, _ = constrain_pick(index, allowed, pref + 1e-6 * np.asarray(sel.prm_scores))
    return Choice(index, np.asarray(sel.bag_score, dtype=np.float32))


def select_point_aware_choice(inputs: SelectorInputs) -> Choice:
    """``point-aware``: :func:`stages.export.point_aware.select_point_aware` over ``inputs.allowed``;
    score = the chosen proposal's backend score."""
    if inputs.allowed is None:
        raise StoreError("the point-aware selector needs the point test (SelectorInputs.allowed)")
    index = select_point_aware(
        inputs.scores, inputs.areas, inputs.allowed, inputs.point_rule, inputs.consensus
    )
    return Choice(index, _take(inputs.scores, index))


def select_oracle(gt_iou: np.ndarray) -> Choice:
    """Oracle: ``argmax`` of ``gt_iou (P, M)`` (mask IoU with the GT); score = that IoU."""
    index = np.argmax(gt_iou, axis=1).astype(np.int64)
    return Choice(index, _take(gt_iou, index))


@dataclass(frozen=True)
class SelectorSpec:
    """A registered selector: its function over :class:`SelectorInputs` and what it needs."""

    fn: Callable[[SelectorInputs], Choice]
    needs_selections: bool = False
    needs_gt: bool = False
    training_data: bool = True
    needs_points: bool = False


def _need_sel(inputs: SelectorInputs) -> Selections:
    if inputs.selections is None:
        raise StoreError("this selector needs selections (--selections RUN_DIR)")
    return inputs.selections


def _need_gt(inputs: SelectorInputs) -> np.ndarray:
    if inputs.gt_iou is None:
        raise StoreError("the oracle selector needs the ground truth (--gt)")
    return inputs.gt_iou


SELECTORS: dict[str, SelectorSpec] = {
    "sapnet": SelectorSpec(
        lambda i: select_sapnet(_need_sel(i), i.allowed if i.constrain else None, i.boxes),
        needs_selections=True,
    ),
    "psm": SelectorSpec(
        lambda i: select_psm(_need_sel(i), i.allowed if i.constrain else None),
        needs_selections=True,
    ),
    "top1": SelectorSpec(lambda i: select_top1(i.scores)),
    "largest": SelectorSpec(lambda i: select_largest(i.areas, i.scores)),
    "point-aware": SelectorSpec(select_point_aware_choice, needs_points=True),
    "oracle": SelectorSpec(
        lambda i: select_oracle(_need_gt(i)), needs_gt=True, training_data=False
    ),
}


def choose_proposals(name: str, inputs: SelectorInputs, source: str = "selections") -> Choice:
    """Run selector ``name``; StoreError if it picks an index outside ``[0, M)``."""
    choice = SELECTORS[name].fn(inputs)
    m = inputs.scores.shape[1]
    bad = np.nonzero((choice.index < 0) | (choice.index >= m))[0]
    if len(bad):
        raise StoreError(
            f"{source}: selector {name!r} chose proposal index {int(choice.index[bad[0]])} for object "
            f"#{int(bad[0])}, outside [0, {m}) ({len(bad)} such object(s))"
        )
    return choice


def aux_proposal_indices(prm_scores: np.ndarray, ranks: tuple[int, ...] = (2, 4, 6)) -> np.ndarray:
    """MPS auxiliary proposals: the indices ranked ``ranks`` (1 = best) by PRM score, per object.

    Args:
        prm_scores: ``(P, M)`` PRM selection scores of the store proposals.
        ranks: 1-based ranks; those beyond M are dropped (M = 4 keeps ranks 2 and 4).

    Returns ``(P, R)`` int64 proposal indices (ties broken by the lower index).
    """
    prm_scores = np.asarray(prm_scores)
    m = prm_scores.shape[1]
    keep = [r - 1 for r in ranks if 1 <= r <= m]
    order = np.argsort(-prm_scores, axis=1, kind="stable")
    return order[:, keep].astype(np.int64)
