"""The review signals and their combination, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from stages.review.features import (
    Signals,
    rank_percentile,
    reasons,
    review_score,
    same_class_points_inside,
    size_outlier,
)
from stages.review.review import mask_to_polygons, parse_count


def test_rank_percentile_with_ties():
    assert rank_percentile(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    # ranks 0, 1 tie -> 0.5 each; / (n - 1) = 2
    assert rank_percentile(np.array([1.0, 1.0, 2.0])).tolist() == [0.25, 0.25, 1.0]
    assert rank_percentile(np.array([7.0, 7.0])).tolist() == [0.5, 0.5]
    assert rank_percentile(np.zeros(0)).shape == (0,)


def test_size_outlier_per_class():
    # class 1: four masks of 1 % of the image and one of 100 %; class 2 (2 objects < MIN_CLASS): uses all
    area = np.array([100, 100, 100, 100, 10000, 100, 100], float)
    z = size_outlier(area, np.full(7, 1e4), np.array([1, 1, 1, 1, 1, 2, 2]))
    assert z[:4].tolist() == [0, 0, 0, 0] and z[4] > 1e3
    assert z[5] == 0 and z[6] == 0  # the median of all objects is 1 % too
    # MAD > 0: log areas [0, 0, 1, 2, 3] (e-based) -> median 1, MAD 1 * 1.4826
    area2 = np.exp(np.array([0.0, 0.0, 1.0, 2.0, 3.0]))
    z2 = size_outlier(area2, np.ones(5), np.ones(5, int))
    np.testing.assert_allclose(z2, np.abs(np.array([0, 0, 1, 2, 3]) - 1) / 1.4826)


def test_points_of_same_class_inside():
    masks = np.zeros((3, 10, 10), bool)
    masks[0, :, :6] = True  # covers its own point and object 1's point (x=4, y=5)
    masks[1, 3:5, 8:10] = True  # covers no point
    masks[2, 8:, 8:] = True  # covers its own point only
    points = np.array([[1.0, 1.0], [4.0, 5.0], [9.0, 9.0]])
    assert same_class_points_inside(masks, points, np.array([1, 1, 2])).tolist() == [1, 0, 0]
    # object 1 of another class: a person holding a cup is no error
    assert same_class_points_inside(masks, points, np.array([1, 2, 1])).tolist() == [0, 0, 0]
    masks[2, :, :] = True  # the whole image: both other points
    assert same_class_points_inside(masks, points, np.array([1, 1, 1])).tolist() == [1, 0, 2]


def test_review_score_and_reasons():
    s = Signals(
        low_score=np.array([-0.9, -0.1, -0.5]),
        disagree=np.array([0.0, 0.5, 1.0]),
        foreign_point=np.array([0.0, 0.0, 2.0]),
        size_outlier=np.array([0.1, 0.1, 0.1]),
        low_fill=np.array([-1.0, -0.2, -0.5]),
    )
    np.testing.assert_allclose(review_score(s, {"disagree": 1.0}), [0, 0.5, 1])
    np.testing.assert_allclose(review_score(s, {"low_score": 2.0}), [0, 2, 1])
    total = review_score(s)  # default: every signal with weight 1
    np.testing.assert_allclose(
        total, [0 + 0 + 0.25 + 0.5 + 0, 1 + 0.5 + 0.25 + 0.5 + 1, 0.5 + 1 + 1 + 0.5 + 0.5]
    )
    why = reasons(s)
    assert why[1] == ["low_score", "low_fill"] and why[2] == ["disagree", "foreign_point"]
    assert why[0] == []
    with pytest.raises(ValueError, match="unknown review signal"):
        review_score(s, {"nope": 1.0})


def test_parse_count():
    assert (
        parse_count("5", 100) == 5 and parse_count("10%", 95) == 10 and parse_count("0.1%", 20) == 1
    )
    assert parse_count("500", 20) == 20 and parse_count("0%", 20) == 0
    from stages.common.errors import InputError

    for bad in ("ten", "-1", "150%"):
        with pytest.raises(InputError, match="--count"):
            parse_count(bad, 10)


def test_mask_to_polygons_round_trip():
    from pycocotools import mask as mask_utils

    mask = np.zeros((30, 40), bool)
    mask[5:15, 8:30] = True
    mask[20:25, 2:6] = True
    polys = mask_to_polygons(mask)
    assert len(polys) == 2 and all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
    back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, 30, 40))) > 0
    iou = (back & mask).sum() / (back | mask).sum()
    assert iou > 0.9
    # the rectangle's extent in edge coordinates (marching squares cut the corners by half a pixel)
    big = max(polys, key=lambda p: max(p[0::2]) - min(p[0::2]))
    xs, ys = big[0::2], big[1::2]
    assert (min(xs), max(xs), min(ys), max(ys)) == pytest.approx((8, 30, 5, 15), abs=0.5)
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
