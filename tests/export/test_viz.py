"""Overlay helpers against hand-computed values (colours, outlines, top instance)."""

from __future__ import annotations

import numpy as np

from stages.export.viz import instance_colors, mask_outline, top_instance


def test_instance_colors_hand_values():
    colors = instance_colors(3)
    assert colors.dtype == np.uint8 and colors.shape == (3, 3)
    # hue 0: V = 1 -> 255, p = t = 1 - 0.75 = 0.25 -> 64
    assert colors[0].tolist() == [255, 64, 64]
    # hue 0.618: sector 3 (f = 0.708): (p, q, v) with q = 1 - 0.75 * 0.708 = 0.469 -> 120
    assert colors[1].tolist() == [64, 120, 255]
    assert len({tuple(c) for c in instance_colors(20).tolist()}) == 20
    assert instance_colors(0).shape == (0, 3)


def test_mask_outline_width_and_per_mask_erosion():
    masks = np.zeros((2, 7, 7), bool)
    masks[0, 1:6, 1:6] = True  # 5 x 5 square
    masks[1, 3, 3] = True  # a single pixel inside it: its own outline, not eroded by the square
    one = mask_outline(masks, width=1)
    expected = masks[0].copy()
    expected[2:5, 2:5] = False  # the 3 x 3 interior of the square is not on its border
    expected[3, 3] = True  # the single-pixel mask is all border
    assert np.array_equal(one, expected)
    two = mask_outline(masks[:1], width=2)
    assert two[1:6, 1:6].sum() == 24 and not two[3, 3]  # only the centre survives 2 erosions
    assert not mask_outline(np.zeros((0, 4, 4), bool)).any()


def test_top_instance_is_the_last_covering_mask():
    masks = np.zeros((2, 2, 3), bool)
    masks[0, :, :2] = True
    masks[1, :, 1:] = True
    assert top_instance(masks).tolist() == [[0, 1, 1], [0, 1, 1]]
    assert (top_instance(np.zeros((0, 2, 2), bool)) == -1).all()
