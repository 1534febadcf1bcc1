"""How much selectors disagree about an object: 1 - mean pairwise mask IoU of their picks.

Shared by the HTML report (sorting images by disagreement) and `sapnet review` (one signal of a wrong mask).
Masks stay compressed COCO RLE dicts; one pycocotools call per image and selector pair.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from stages.export.gt import image_groups


def paired_mask_iou(
    a: list[dict[str, Any]], b: list[dict[str, Any]], image_of: np.ndarray
) -> np.ndarray:
    """``(N,)`` IoU of row-paired RLE masks ``a[i]`` and ``b[i]`` (rows of one image share a size).

    Args:
        image_of: ``(N,)`` any per-image key; rows with the same key are computed in one call.
    """
    n = len(a)
    out = np.zeros(n)
    for _, rows in image_groups(np.asarray(image_of)):
        ious = np.asarray(
            mask_utils.iou([a[r] for r in rows], [b[r] for r in rows], [0] * len(rows)),
            dtype=np.float64,
        ).reshape(len(rows), len(rows))
        out[rows] = np.diagonal(ious)
    return out


def pick_disagreement(picks: dict[str, list[dict[str, Any]]], image_of: np.ndarray) -> np.ndarray:
    """``(N,)`` in [0, 1]: 1 - the mean IoU over all pairs of selectors' masks of each object.

    With fewer than two selectors nothing can disagree: all zeros. Identical picks give 0, disjoint ones 1.
    """
    names = list(picks)
    n = len(next(iter(picks.values()))) if picks else 0
    if len(names) < 2:
        return np.zeros(n)
    pairs = list(combinations(names, 2))
    total = np.zeros(n)
    for x, y in pairs:
        total += paired_mask_iou(picks[x], picks[y], image_of)
    return 1.0 - total / len(pairs)
