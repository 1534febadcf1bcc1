"""Point-aware selection and the point constraint: hand-computed cases, then end to end on the tiny store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from export_tinydata import OBJECTS, write_selections

from stages.common.boxes import box_iou_aligned
from stages.common.errors import InputError
from stages.common.masks import encode_masks
from stages.export.config import AUX_WEIGHT, ExportConfig
from stages.export.point_aware import (
    PointAwareOptions,
    allowed,
    constrain_aux,
    constrain_pick,
    neighbour_counts,
    penalty,
    proposal_consensus,
    select_point_aware,
)
from stages.export.run import run_export

H = W = 8


def _rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


def _scene() -> dict:
    """One 8x8 image: A (class 1, point (1, 1)), B (class 1, point (5, 5)), C (class 2, point (1, 5)).

    A's proposals: 0 = rows/cols 0-6 (holds B and C), 1 = rows/cols 0-2 (holds nothing), 2 = an L (rows
    0-1 and cols 0-1, up to row/col 6): its BOX holds B, its mask only C. B and C: small squares.
    """
    ell = _rect(0, 1, 0, 6) | _rect(0, 6, 0, 1)
    masks = [
        [_rect(0, 6, 0, 6), _rect(0, 2, 0, 2), ell],
        [_rect(4, 6, 4, 6)] * 3,
        [_rect(4, 6, 0, 2)] * 3,
    ]
    counts = np.array([encode_masks(np.stack(m)) for m in masks], dtype=object)
    boxes = np.array(
        [[[0, 0, 7, 7], [0, 0, 3, 3], [0, 0, 7, 7]], [[4, 4, 7, 7]] * 3, [[0, 4, 3, 7]] * 3],
        dtype=np.float32,
    )
    return {
        "image_index": np.zeros(3, np.int64),
        "category_id": np.array([1, 1, 2]),
        "xy": np.array([[1.0, 1.0], [5.0, 5.0], [1.0, 5.0]]),
        "heights": np.full(3, H),
        "widths": np.full(3, W),
        "counts": counts,
        "boxes": boxes,
    }


def test_neighbour_counts_mask_and_box_tests_by_hand() -> None:
    s = _scene()
    same, other = neighbour_counts(**s, test="mask")
    assert same[0].tolist() == [1, 0, 0] and other[0].tolist() == [2, 0, 1]
    assert same[1:].sum() == 0 and other[1:].sum() == 0  # own points never count
    same, other = neighbour_counts(**s, test="box")
    assert same[0].tolist() == [1, 0, 1] and other[0].tolist() == [2, 0, 2]
    with pytest.raises(InputError):
        neighbour_counts(**s, test="bbox")


def test_points_of_other_images_never_count() -> None:
    s = _scene()
    s["image_index"] = np.array([0, 1, 2])
    same, other = neighbour_counts(**s, test="mask")
    assert same.sum() == 0 and other.sum() == 0


def test_penalty_scopes_and_fallback() -> None:
    same = np.array([[1, 0, 0], [1, 2, 1]])
    other = np.array([[2, 0, 1], [1, 2, 3]])
    # scope same: only the same-class count
    assert allowed(penalty(same, other, "same")).tolist() == [
        [False, True, True],
        [True, False, True],
    ]
    # scope any: same class first, then any class (bound 3 + 1 = 4): [4+2, 0, 1] and [5, 10, 7]
    assert penalty(same, other, "any").tolist() == [[6, 0, 1], [5, 10, 7]]
    # no clean proposal in row 2: the least bad one stays allowed (never empty)
    assert allowed(penalty(same, other, "any")).tolist() == [
        [False, True, False],
        [True, False, False],
    ]


def test_select_point_aware_rules_by_hand() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.99]])
    areas = np.array([[10, 30, 20, 40]])
    ok = np.array([[True, True, True, False]])
    cons = np.array([[0.2, 0.3, 0.6, 0.9]])
    pick = {r: int(select_point_aware(scores, areas, ok, r, cons)[0]) for r in
            ("consensus", "score", "largest", "smallest", "median-area")}  # fmt: skip
    # allowed by area: 10 (0), 20 (2), 30 (1); the median of 3 is position 1 -> proposal 2
    assert pick == {"consensus": 2, "score": 1, "largest": 1, "smallest": 0, "median-area": 2}
    # an even count takes the lower median
    assert select_point_aware(scores, areas, np.ones((1, 4), bool), "median-area")[0] == 2
    with pytest.raises(ValueError):
        select_point_aware(scores, areas, ok, "consensus")


def test_proposal_consensus_by_hand() -> None:
    a, b = _rect(0, 3, 0, 3), _rect(0, 3, 0, 1)  # b is half of a: IoU 0.5
    far = _rect(6, 7, 6, 7)
    counts = np.array([encode_masks(np.stack([a, b, far]))], dtype=object)
    got = proposal_consensus(counts, np.array([H]), np.array([W]), np.zeros(1, np.int64))
    assert got[0] == pytest.approx([1.5 / 3, 1.5 / 3, 1 / 3])


def test_constrain_pick_and_aux() -> None:
    ok = np.array([[False, True, True, False], [True, True, False, True]])
    pref = np.array([[0.9, 0.1, 0.5, 0.2], [0.0, 0.3, 0.9, 0.1]])
    index, changed = constrain_pick(np.array([0, 1]), ok, pref)
    assert index.tolist() == [2, 1] and changed.tolist() == [True, False]
    # aux: the allowed ones by score first (row 0: 2, 1; then 0, 3), ranks 2 and 4; not allowed -> weight 0
    index, keep = constrain_aux(np.zeros((2, 2), np.int64), ok, pref, (2, 4))
    assert index.tolist() == [[1, 3], [3, 2]] and keep.tolist() == [[True, False], [True, False]]


def test_bms_box_iou_with_the_bag_by_hand() -> (
    None
):  # the preference of the constrained sapnet pick
    box = np.array([[0.0, 0.0, 10.0, 10.0]])
    boxes = np.array([[[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    assert box_iou_aligned(box[:, None, :], boxes)[0] == pytest.approx([1.0, 50 / 150, 0.0])


def test_options_validate() -> None:
    PointAwareOptions().validate()
    with pytest.raises(InputError, match="rule"):
        PointAwareOptions(rule="best").validate()


# ------------------------------------------------------------------ end to end on the tiny store
def _anns(path: Path) -> dict[int, dict]:
    return {a["id"]: a for a in json.loads(path.read_text())["annotations"]}


def test_point_aware_selector_end_to_end(tiny, tmp_path):
    # cat 11: the group (2) holds cat 12's point and the whole image (4) every point; among the rest,
    # the GT (0) agrees best with the bag (mean IoU 0.43 against 0.39 for the shifted copy)
    cfg = ExportConfig(
        tiny.store_path, tmp_path / "p.json", selectors=("point-aware", "top1"), gt=tiny.gt_path,
        report=tmp_path / "report",
    )  # fmt: skip
    res = run_export(cfg)
    anns = _anns(res.outputs["point-aware"])
    assert {a: anns[a]["proposal_index"] for a in OBJECTS} == {11: 0, 12: 0, 13: 0, 21: 0}
    info = json.loads(res.outputs["point-aware"].read_text())["info"]
    assert info["point_aware"]["rule"] == "consensus" and info["training_data"]
    names = [r["name"] for r in res.report["selectors"]]
    assert names == ["point-aware", "top1"]
    assert res.report_paths is not None
    md = res.report_paths[0].read_text()
    assert "point-aware rule: consensus" in md and "0 object(s) have no proposal free" in md


def test_constraint_moves_learned_picks_and_aux_weights(tiny, tmp_path):
    # sapnet picks the group (2) for cat 11 and the whole image (4) for cat 12; psm picks 4 everywhere
    prm = np.tile(np.array([0.1, 0.6, 0.3, 0.5, 0.9, 0.4], np.float32), (4, 1))
    sel = write_selections(
        tiny.store_path, tmp_path / "sel", [2, 4, 0, 0], prm_scores=prm, psm_top1=[4, 4, 4, 4]
    )
    base = {"selections": sel, "selectors": ("sapnet", "psm")}
    on = run_export(ExportConfig(tiny.store_path, tmp_path / "on.json", **base))
    off = run_export(
        ExportConfig(tiny.store_path, tmp_path / "off.json", point_constraint=False, **base)
    )
    s_on, s_off = _anns(on.outputs["sapnet"]), _anns(off.outputs["sapnet"])
    assert [s_off[a]["proposal_index"] for a in (11, 12, 13, 21)] == [2, 4, 0, 0]
    # the group box [5, 5, 40, 15] has IoU 150/350 with both the GT and the shifted copy: the PRM score
    # breaks the tie (0.5 > 0.1); likewise for 12's whole-image box (IoU 0.075 with both)
    assert [s_on[a]["proposal_index"] for a in (11, 12, 13, 21)] == [3, 3, 0, 0]
    psm = _anns(on.outputs["psm"])
    # 4 holds other points in image 1 (moves), but dog 21 is alone in image 2 (kept)
    assert [psm[a]["proposal_index"] == 4 for a in (11, 12, 13, 21)] == [False] * 3 + [True]
    # aux masks of cat 11 by PRM score among the allowed (1, 3, 5, 0), then 4, 2: ranks 2, 4, 6
    ann = s_on[11]
    assert ann["aux_proposal_indices"] == [3, 0, 2]
    assert ann["aux_weights"] == [AUX_WEIGHT, AUX_WEIGHT, 0.0]
    assert s_off[11]["aux_proposal_indices"] == [1, 5, 0]
    assert s_off[11]["aux_weights"] == [AUX_WEIGHT] * 3
    info = json.loads(on.outputs["sapnet"].read_text())["info"]["point_aware"]
    assert info["constraint"] and info["objects_without_clean_proposal"] == 0
