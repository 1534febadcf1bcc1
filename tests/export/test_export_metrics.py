"""Pure metric and selector functions on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest

from stages.common.errors import StoreError
from stages.common.masks import encode_masks
from stages.common.selections import Selections
from stages.export.config import ErrorThresholds, output_paths
from stages.export.gt import pairwise_intersections, rle_area, xywh_to_xyxy
from stages.export.report import (
    classify_errors,
    fill_ratio,
    gap_metric,
    mean_by_size,
    overlap_stats,
    paired_box_iou,
    size_bins,
)
from stages.export.selectors import (
    SelectorInputs,
    aux_proposal_indices,
    choose_proposals,
    select_largest,
    select_oracle,
    select_top1,
)


def test_paired_box_iou_hand_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0], [0, 0, 4, 4]], float)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [0, 0, 0, 0], [10, 10, 12, 12]], float)
    # 50 / 150, identical, both empty, disjoint
    np.testing.assert_allclose(paired_box_iou(a, b), [1 / 3, 1.0, 0.0, 0.0])


def test_xywh_to_xyxy():
    np.testing.assert_array_equal(xywh_to_xyxy([[1, 2, 3, 4]]), [[1, 2, 4, 6]])


def test_size_bins_coco_thresholds():
    np.testing.assert_array_equal(
        size_bins(np.array([0, 1023.9, 1024, 9215, 9216, 1e6])), [0, 0, 1, 1, 2, 2]
    )


def test_mean_by_size_groups_and_empty():
    out = mean_by_size(np.array([1.0, 0.5, 0.0]), np.array([0, 0, 2]))
    assert out == {"all": 0.5, "small": 0.75, "medium": None, "large": 0.0}


def test_overlap_stats_and_error_classes_hand_case():
    # GT of one image: g0 cat (100 px), g1 cat (50 px), g2 dog (80 px)
    area_gt = np.array([100.0, 50.0, 80.0])
    gt_cls = np.array([1, 1, 2])
    inter = np.array(
        [
            [100, 30, 0],  # p0 own g0, 120 px: IoU 100/120, covers 60% of g1 -> group
            [0, 20, 0],  # p1 own g1, 20 px: IoU 0.4, all inside -> local
            [100, 0, 80],  # p2 own g2 (dog), 200 px: covers the cat fully, but another class
            [45, 15, 0],  # p3 own g0, 60 px: IoU 45/115, 75% inside (< 80%), covers 30% of g1
        ],
        float,
    )
    area_pred = np.array([120.0, 20.0, 200.0, 60.0])
    own = np.array([0, 1, 2, 0])
    pred_cls = np.array([1, 1, 2, 1])
    other_ok = pred_cls[:, None] == gt_cls[None, :]
    iou, inside, cover = overlap_stats(inter, area_pred, area_gt, own, other_ok)
    np.testing.assert_allclose(iou, [100 / 120, 0.4, 0.4, 45 / 115])
    np.testing.assert_allclose(inside, [100 / 120, 1.0, 0.4, 0.75])
    np.testing.assert_allclose(cover, [0.6, 0.0, 0.0, 0.3])
    group, local = classify_errors(iou, inside, cover, ErrorThresholds())
    np.testing.assert_array_equal(group, [True, False, False, False])
    np.testing.assert_array_equal(local, [False, True, False, False])
    # stricter thresholds move the boundary cases
    group, local = classify_errors(iou, inside, cover, ErrorThresholds(0.25, 0.5, 0.7))
    np.testing.assert_array_equal(group, [True, False, False, True])
    np.testing.assert_array_equal(local, [False, True, False, True])


def test_pairwise_intersections_match_numpy():
    rng = np.random.default_rng(1)
    a = rng.random((3, 9, 7)) > 0.5
    b = rng.random((4, 9, 7)) > 0.4
    a[2] = False  # an empty mask
    ra = [{"size": [9, 7], "counts": c} for c in encode_masks(a)]
    rb = [{"size": [9, 7], "counts": c} for c in encode_masks(b)]
    expect = (a[:, None] & b[None]).sum(axis=(2, 3))
    np.testing.assert_array_equal(pairwise_intersections(ra, rb), expect)


def test_fill_ratio_and_gap_hand_case():
    np.testing.assert_allclose(
        fill_ratio(np.array([50.0, 10.0]), np.array([[0, 0, 10, 10], [0, 0, 0, 5]])), [0.5, 0.0]
    )
    rv_bag = np.array([[1.0, 0.5], [0.4, 0.2], [0.9, 0.1]])  # R_vmax 1.0, 0.4, 0.9 -> T_rv 2.3/3
    rv_sel = np.array([0.6, 0.4, 0.9])
    rv_gt = np.array([0.8, 0.3, 0.6])
    out = gap_metric(rv_bag, rv_sel, rv_gt)  # objects 0 and 2: diffs -0.2, +0.3
    assert out["t_rv"] == pytest.approx(2.3 / 3)
    assert out["num_instances"] == 2
    assert out["gap"] == pytest.approx(0.05)
    assert out["gap_abs"] == pytest.approx(0.25)
    assert gap_metric(np.ones((2, 3)), np.ones(2), np.ones(2))["gap"] is None


def test_baseline_selectors():
    scores = np.array([[0.1, 0.9, 0.3], [0.7, 0.7, 0.2]], np.float32)
    areas = np.array([[5, 1, 9], [3, 8, 8]])
    top1 = select_top1(scores)
    np.testing.assert_array_equal(top1.index, [1, 0])  # ties -> lowest index
    np.testing.assert_allclose(top1.score, [0.9, 0.7])
    largest = select_largest(areas, scores)
    np.testing.assert_array_equal(largest.index, [2, 1])
    np.testing.assert_allclose(largest.score, [0.3, 0.7])
    oracle = select_oracle(np.array([[0.2, 0.8, 0.5], [0.9, 0.1, 0.0]]))
    np.testing.assert_array_equal(oracle.index, [1, 0])
    np.testing.assert_allclose(oracle.score, [0.8, 0.9])


def _sel(final_index: list[int], psm_top1: list[int]) -> Selections:
    p = len(final_index)
    return Selections(
        ann_id=np.arange(p),
        psm_top1=np.array(psm_top1),
        prm_top1=np.zeros(p, np.int64),
        bms_box=np.zeros((p, 4), np.float32),
        final_index=np.array(final_index),
        psm_scores=np.array([[0.1, 0.2, 0.3], [0.6, 0.5, 0.4]], np.float32),
        prm_scores=np.zeros((p, 3), np.float32),
        bag_score=np.array([0.25, 0.75], np.float32),
    )


def test_selection_based_selectors_and_range_check():
    inputs = SelectorInputs(np.zeros((2, 3)), np.zeros((2, 3)), _sel([2, 0], [1, 2]))
    sap = choose_proposals("sapnet", inputs)
    np.testing.assert_array_equal(sap.index, [2, 0])
    np.testing.assert_allclose(sap.score, [0.25, 0.75])
    psm = choose_proposals("psm", inputs)
    np.testing.assert_array_equal(psm.index, [1, 2])
    np.testing.assert_allclose(psm.score, [0.2, 0.4])
    bad = SelectorInputs(np.zeros((2, 3)), np.zeros((2, 3)), _sel([3, 0], [0, 0]))
    with pytest.raises(StoreError, match="outside \\[0, 3\\)"):
        choose_proposals("sapnet", bad)


def test_aux_indices_are_prm_ranks_2_4_6():
    prm = np.array(
        [
            [0.1, 0.6, 0.3, 0.5, 0.2, 0.4],  # order 1, 3, 5, 2, 4, 0
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # order 0..5
            [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],  # ties -> index order
        ]
    )
    np.testing.assert_array_equal(aux_proposal_indices(prm), [[3, 2, 0], [1, 3, 5], [1, 3, 5]])
    # fewer proposals than rank 6: the missing rank is dropped
    np.testing.assert_array_equal(aux_proposal_indices(prm[:, :4]), [[3, 0], [1, 3], [1, 3]])


def test_output_paths_first_selector_gets_out(tmp_path):
    paths = output_paths(tmp_path / "pseudo.json", ("top1", "sapnet"))
    assert paths == {"top1": tmp_path / "pseudo.json", "sapnet": tmp_path / "pseudo.sapnet.json"}


def test_rle_area_beyond_255_masks():
    masks = np.zeros((300, 5, 4), bool)
    for k in range(300):
        masks[k].flat[: k % 20] = True
    rles = [{"size": [5, 4], "counts": c} for c in encode_masks(masks)]
    np.testing.assert_array_equal(rle_area(rles), [k % 20 for k in range(300)])
