"""Box geometry shared by every stage: areas and IoU of ``xyxy`` boxes (one implementation).

Boxes are ``(..., 4)`` ``[x1, y1, x2, y2]`` floats in edge coordinates (pixel column ``c`` spans
``[c, c + 1)``); areas are ``(x2 - x1) * (y2 - y1)`` with no ``+1``. The IoU is the numerically safe form:
widths and heights are clipped at 0 *before* they are multiplied (an inverted box has area 0, not the
product of two negative sides), and a pair whose union is empty has IoU 0, never NaN. Torch tensors and numpy
arrays are both accepted; the result has the input's kind (numpy results are float64).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

ArrayT = TypeVar("ArrayT", Tensor, np.ndarray)


def box_area(boxes: Tensor) -> Tensor:
    """Signed area ``(x2 - x1) * (y2 - y1)`` of ``(..., 4)`` xyxy boxes -> ``(...)`` (no clipping)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _iou(a: Tensor, b: Tensor) -> Tensor:
    wh_a = (a[..., 2:] - a[..., :2]).clamp(min=0)
    wh_b = (b[..., 2:] - b[..., :2]).clamp(min=0)
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(
        min=0
    )
    inter = wh[..., 0] * wh[..., 1]
    union = wh_a[..., 0] * wh_a[..., 1] + wh_b[..., 0] * wh_b[..., 1] - inter
    positive = union > 0
    return torch.where(positive, inter / torch.where(positive, union, torch.ones_like(union)), 0.0)


def box_iou_aligned(a: ArrayT, b: ArrayT) -> ArrayT:
    """Element-wise IoU of broadcastable ``(..., 4)`` xyxy boxes -> ``(...)``."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        ta = torch.as_tensor(np.asarray(a, dtype=np.float64))
        tb = torch.as_tensor(np.asarray(b, dtype=np.float64))
        return _iou(ta, tb).numpy()
    return _iou(a, b)


def box_iou(a: ArrayT, b: ArrayT) -> ArrayT:
    """Pairwise IoU of xyxy boxes ``a (N, 4)`` and ``b (M, 4)`` -> ``(N, M)``."""
    return box_iou_aligned(a[:, None, :], b[None, :, :])
