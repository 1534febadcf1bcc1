import numpy as np

from stages.common.masks import (
    decode_rle,
    decode_rles,
    encode_masks,
    masks_to_boxes,
    segmentation_to_mask,
)


def test_rle_round_trip_and_known_counts():
    m = np.zeros((2, 4, 5), bool)
    m[0, 1:3, 2:4] = True  # column-major runs: 9 zeros, 2 ones, 2 zeros, 2 ones, 5 zeros
    counts = encode_masks(m)
    assert counts[0] == "92203"
    assert np.array_equal(decode_rles(counts, 4, 5), m)
    assert np.array_equal(decode_rle(counts[0], 4, 5), m[0])


def test_boxes_are_tight_edge_coordinates_and_empty_is_zero():
    m = np.zeros((2, 10, 12), bool)
    m[0, 2:5, 3:9] = True
    boxes = masks_to_boxes(m)
    assert boxes.tolist() == [[3, 2, 9, 5], [0, 0, 0, 0]]
    assert boxes.dtype == np.float32


def test_polygon_and_uncompressed_rle_decode():
    poly = [[1, 1, 5, 1, 5, 5, 1, 5]]
    mask = segmentation_to_mask(poly, 8, 8)
    assert mask[2:5, 2:5].all() and not mask[6:, 6:].any()
    raw = {"size": [4, 5], "counts": [9, 2, 2, 2, 5]}
    assert segmentation_to_mask(raw, 4, 5).sum() == 4
