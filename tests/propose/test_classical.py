"""The weight-free ``classical`` proposal backend: contract (shapes, order, points inside, nesting,
determinism, fingerprint, errors), recovery of flat rectangles, and hand-computed helper values."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from stages.common.errors import InputError
from stages.propose.backends import _pointcrf as crf
from stages.propose.backends import classical
from stages.propose.backends.base import ProposalBackend, get_backend
from stages.propose.backends.classical import (
    ClassicalBackend,
    ClassicalParams,
    greedy_nms,
    leaf_boxes,
    pairwise_iou,
)

H, W = 96, 128
# Two flat rectangles (rows y0:y1, cols x0:x1) on a flat background.
RECT_A = (20, 60, 15, 55)
RECT_B = (40, 85, 75, 118)


def two_rectangles(noise: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.empty((H, W, 3), dtype=np.float64)
    img[:] = (120, 140, 90)
    img[RECT_A[0] : RECT_A[1], RECT_A[2] : RECT_A[3]] = (220, 40, 40)
    img[RECT_B[0] : RECT_B[1], RECT_B[2] : RECT_B[3]] = (30, 60, 200)
    img += rng.normal(0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def rect_mask(r: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[r[0] : r[1], r[2] : r[3]] = True
    return m


# Rectangle centres, an off-centre point, and points on the image borders / corners (edge of the valid range).
POINTS = np.array(
    [[34.6, 39.2], [96.0, 62.5], [20.0, 25.0], [-0.5, -0.5], [W - 0.5, H - 0.5], [64.0, 0.0]],
    dtype=np.float32,
)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return two_rectangles()


@pytest.fixture(scope="module")
def result(image: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    backend = ClassicalBackend(num_proposals=6, batch_points=4)
    batches = list(backend.propose(image, POINTS))
    masks = np.concatenate([b.masks for b in batches])
    scores = np.concatenate([b.scores for b in batches])
    return batches, masks, scores


def test_protocol_and_order_description() -> None:
    backend = get_backend(
        "classical", num_proposals=6, device="cuda", model="vit_h", checkpoint="x"
    )
    assert isinstance(backend, ProposalBackend)
    assert backend.name == "classical" and backend.num_proposals == 6
    assert len(backend.proposal_order) == 6
    assert len(ClassicalBackend(num_proposals=3).proposal_order) == 3


def test_shapes_dtypes_and_batches(result) -> None:
    batches, masks, scores = result
    assert [b.start for b in batches] == [0, 4]
    assert [len(b.masks) for b in batches] == [4, 2]
    for b in batches:
        assert b.masks.dtype == np.bool_ and b.masks.shape[1:] == (6, H, W)
        assert b.scores.dtype == np.float32 and b.scores.shape == (len(b.masks), 6)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_every_mask_contains_its_point_and_is_non_empty(result) -> None:
    _, masks, _ = result
    cols = np.clip(np.floor(POINTS[:, 0] + 0.5).astype(int), 0, W - 1)
    rows = np.clip(np.floor(POINTS[:, 1] + 0.5).astype(int), 0, H - 1)
    for k in range(len(POINTS)):
        assert masks[k, :, rows[k], cols[k]].all(), k
    assert masks.reshape(len(POINTS), 6, -1).any(-1).all()


def test_proposals_0_to_2_are_nested(result) -> None:
    _, masks, _ = result
    assert not (masks[:, 0] & ~masks[:, 1]).any()
    assert not (masks[:, 1] & ~masks[:, 2]).any()


def test_best_proposal_recovers_each_rectangle(result) -> None:
    _, masks, _ = result
    for k, rect in ((0, RECT_A), (1, RECT_B)):
        gt = rect_mask(rect)
        inter = (masks[k] & gt).sum((1, 2))
        union = (masks[k] | gt).sum((1, 2))
        assert (inter / union).max() > 0.9, (k, inter / union)


def test_deterministic(image: np.ndarray, result) -> None:
    _, masks, scores = result
    again = list(ClassicalBackend(num_proposals=6, batch_points=64).propose(image, POINTS))
    assert len(again) == 1
    np.testing.assert_array_equal(again[0].masks, masks)
    np.testing.assert_array_equal(again[0].scores, scores)


def test_three_proposals_are_the_first_three_of_six(image: np.ndarray, result) -> None:
    _, masks, _ = result
    (batch,) = ClassicalBackend(num_proposals=3).propose(image, POINTS[:2])
    assert batch.masks.shape == (2, 3, H, W)
    np.testing.assert_array_equal(batch.masks, masks[:2, :3])


def test_uniform_image_gives_the_whole_image_with_stability_one() -> None:
    img = np.full((20, 30, 3), 77, dtype=np.uint8)
    (batch,) = ClassicalBackend().propose(img, np.array([[5.0, 5.0]]))
    assert batch.masks.all()
    np.testing.assert_array_equal(batch.scores, np.ones((1, 6), dtype=np.float32))


def test_no_points_no_batches(image: np.ndarray) -> None:
    assert list(ClassicalBackend().propose(image, np.zeros((0, 2), np.float32))) == []


def test_fingerprint_stable_json_and_sensitive() -> None:
    fp = ClassicalBackend().fingerprint()
    assert fp == ClassicalBackend(batch_points=3).fingerprint()
    assert json.loads(json.dumps(fp)) == fp  # survives the store's JSON attributes unchanged
    assert fp["name"] == "classical" and fp["version"] and fp["num_proposals"] == 6
    assert fp["params"]["radii"][0] == 4.0 and len(fp["params"]["radii"]) == 13
    assert ClassicalBackend(params=ClassicalParams(lam=2.0)).fingerprint() != fp
    assert ClassicalBackend(num_proposals=3).fingerprint() != fp


@pytest.mark.parametrize(
    ("img", "pts"),
    [
        (np.zeros((10, 10), np.uint8), [[1.0, 1.0]]),  # grey
        (np.zeros((10, 10, 3), np.float32), [[1.0, 1.0]]),  # not uint8
        (np.zeros((10, 10, 3), np.uint8), [[10.0, 1.0]]),  # x > W - 0.5
        (np.zeros((10, 10, 3), np.uint8), [[1.0, -0.6]]),  # y < -0.5
        (np.zeros((10, 10, 3), np.uint8), [[np.nan, 1.0]]),
        (np.zeros((10, 10, 3), np.uint8), [1.0, 2.0, 3.0]),  # not (K, 2)
    ],
)
def test_bad_inputs_raise_input_error(img: np.ndarray, pts: list) -> None:
    with pytest.raises(InputError):
        list(ClassicalBackend().propose(img, np.array(pts)))


@pytest.mark.parametrize("m", [0, 4, 9])
def test_unsupported_num_proposals(m: int) -> None:
    with pytest.raises(InputError, match="3 or 6"):
        get_backend("classical", num_proposals=m)


def test_region_adjacency_hand_computed() -> None:
    labels = np.array([[0, 0, 1], [0, 2, 1], [2, 2, 1]])
    edge = np.arange(9, dtype=np.float64).reshape(3, 3)
    i, j, length, esum = crf.region_adjacency(labels, edge)
    # pairs: 0-1 (0,1)-(0,2); 0-2 (1,0)-(2,0) vertical, (1,0)-(1,1), (0,1)-(1,1); 1-2 (1,1)-(1,2), (2,1)-(2,2)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 2)]
    np.testing.assert_array_equal(length, [1, 3, 2])
    # edge of a pair = max of its two pixels: 0-1: max(1,2)=2; 0-2: 6 + 4 + 4; 1-2: 5 + 8
    np.testing.assert_array_equal(esum, [2, 14, 13])


def test_leaf_boxes_and_distances_hand_computed() -> None:
    labels = np.array([[0, 0, 1], [0, 2, 1], [2, 2, 1]])
    np.testing.assert_array_equal(leaf_boxes(labels, 3), [[0, 0, 2, 2], [2, 0, 3, 3], [0, 1, 2, 3]])
    g = crf.LeafGraph(
        leaf_map=labels,
        count=np.array([3.0, 3.0, 3.0]),
        centroid=np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]),
        second=np.zeros((3, 3)),
        hist=np.zeros((3, 1), np.float32),
        affinity=None,
        boundary_length=None,
        boundary_edge=None,
    )
    d = crf.disc_distance(g, np.array([[0.0, 0.0]]), np.array([1.0, 2.0]))
    np.testing.assert_allclose(d, [[[0, 3, 4], [0, 1.5, 2]]])
    # Uniform ellipse with semi-axes (6, 8) has variances (9, 16) minus the 0.25 regulariser.
    cov = np.diag([9.0 - 0.25, 16.0 - 0.25])[None]
    e = crf.ellipse_distance(g, np.array([[0.0, 0.0]]), cov)
    np.testing.assert_allclose(e, [[0, 0.5, 0.5]])


def test_pairwise_iou_and_greedy_nms_hand_computed() -> None:
    sel = np.array([[[1, 1, 0], [1, 0, 0], [0, 0, 1]]], dtype=bool)  # (B=1, C=3, n=3)
    count = np.array([1.0, 3.0, 4.0])
    iou = pairwise_iou(sel, count)
    np.testing.assert_allclose(iou[0], [[1, 0.25, 0], [0.25, 1, 0], [0, 0, 1]])
    prior = np.array([[0.9, 0.8, 0.1], [0.1, 0.8, 0.9]])
    iou2 = np.repeat(iou, 2, 0)
    iou2[1, 0, 1] = iou2[1, 1, 0] = 0.9  # second point: candidates 0 and 1 overlap strongly
    groups = np.array([0, 0, 1])
    # Point 0: 0 then 1 (IoU 0.25 <= 0.5); group 1 has only 2. Point 1: 1 first, 0 suppressed but
    # taken as the fall-back because group 0 has nothing else left.
    chosen = greedy_nms(prior, iou2, groups, [0, 0, 1], 0.5)
    np.testing.assert_array_equal(chosen, [[0, 1, 2], [1, 0, 2]])


def test_greedy_nms_fallback_prefers_the_least_overlapping() -> None:
    # One point, group 0 = candidates 0..2; 0 is taken first and overlaps 1 (0.95) more than 2 (0.8); both are
    # suppressed at 0.5, so the fall-back takes 2 although 1 has the better prior.
    prior = np.array([[0.9, 0.8, 0.1]])
    iou = np.array([[[1.0, 0.95, 0.8], [0.95, 1.0, 0.9], [0.8, 0.9, 1.0]]])
    chosen = greedy_nms(prior, iou, np.array([0, 0, 0]), [0, 0, 0], 0.5)
    np.testing.assert_array_equal(chosen, [[0, 2, 1]])


@pytest.mark.parametrize(
    "kw",
    [
        {"radii": (4.0, 8.0)},
        {"ring": (3.0, 1.5)},
        {"nms_iou": 0.0},
        {"prior_weights": {"log_area": 1.0}},
    ],
)
def test_bad_params_raise(kw: dict) -> None:
    with pytest.raises(ValueError):
        ClassicalParams(**kw)


def test_prior_score_features_hand_computed() -> None:
    # Leaves 0 | 1 | 2 in a row, 2x2 pixels each (image 2x6); boundaries 0-1 and 1-2 are 2 pixel pairs long,
    # with summed edge strength 10 and 4.
    labels = np.repeat(np.repeat(np.arange(3)[None], 2, 0), 2, 1)
    length = crf.sparse.csr_matrix(np.array([[0, 2, 0], [2, 0, 2], [0, 2, 0]], dtype=float))
    edge = crf.sparse.csr_matrix(np.array([[0, 10, 0], [10, 0, 4], [0, 4, 0]], dtype=float))
    g = crf.LeafGraph(
        leaf_map=labels,
        count=np.array([4.0, 4.0, 4.0]),
        centroid=np.array([[0.5, 0.5], [2.5, 0.5], [4.5, 0.5]]),
        second=np.zeros((3, 3)),
        hist=np.zeros((3, 1), np.float32),
        affinity=None,
        boundary_length=length,
        boundary_edge=edge,
    )
    sel = np.array([[[True, True, False]]])  # one point, one candidate: leaves 0 and 1
    point = np.array([[1.5, 0.5]])
    args = (g, leaf_boxes(labels, 3), sel, point, np.array([2.0]), np.array([1]))

    def feature(name: str) -> float:
        weights = {k: float(k == name) for k in classical.PRIOR_WEIGHTS}
        return float(classical.prior_scores(*args, weights)[0, 0])

    assert feature("boundary_edge") == pytest.approx(4 / 2)  # only the 1-2 boundary is cut
    assert feature("boundary_length_ratio") == pytest.approx(2 / np.sqrt(8))
    assert feature("second_pass") == 1.0
    # box [0, 0, 4, 2], point + 0.5 = (2, 1) is its centre; centroid (1.5, 0.5) is the point
    assert feature("box_offset") == 0.0 and feature("centroid_offset") == 0.0
    assert feature("log_area") == pytest.approx(np.log(8))
    assert feature("log_area_vs_prior") == pytest.approx(np.log(8 / (np.pi * 4)))


def test_compact_histograms_give_the_full_histogram_posteriors(image: np.ndarray) -> None:
    # build_leaf_graph keeps only the colour bins present in the image; padding the absent bins back must not
    # change the posteriors (the +0.5 smoothing of the absent bins is accounted for by empty_bins).
    g = crf.build_leaf_graph(image)
    assert (
        0 < g.hist.shape[1] < crf.LAB_BINS**3 and g.hist.shape[1] + g.empty_bins == crf.LAB_BINS**3
    )
    pad = np.zeros((g.num_leaves, g.empty_bins), np.float32)
    full = dataclasses.replace(g, hist=np.concatenate([g.hist, pad], 1), empty_bins=0)
    dist = crf.disc_distance(g, POINTS[:2].astype(np.float64), np.array([8.0, 30.0])).reshape(4, -1)
    seeds = np.repeat(g.leaf_at(POINTS[:2]), 2)
    sel_a, q_a = crf.figure_ground(g, dist, seeds)
    sel_b, q_b = crf.figure_ground(full, dist, seeds)
    np.testing.assert_allclose(q_a, q_b, atol=1e-5)
    np.testing.assert_array_equal(sel_a, sel_b)
