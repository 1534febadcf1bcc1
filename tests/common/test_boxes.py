"""The one box-IoU implementation, against hand-computed values (numpy and torch, pairwise and aligned)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou as tv_box_iou

from stages.common.boxes import box_area, box_iou, box_iou_aligned


def test_hand_values_numpy_and_torch():
    a = np.array([[0, 0, 2, 2]], float)
    b = np.array([[1, 0, 3, 2], [5, 5, 6, 6]], float)
    out = box_iou(a, b)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, [[2 / 6, 0.0]])
    t = box_iou(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    assert torch.allclose(t, torch.tensor([[2 / 6, 0.0]]))
    np.testing.assert_allclose(box_iou_aligned(a, b[:1]), [2 / 6])


def test_degenerate_boxes_give_zero_not_nan():
    empty = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    inverted = torch.tensor([[4.0, 4.0, 0.0, 0.0]])  # both sides negative: area 0, not 16
    assert box_iou(empty, empty).item() == 0.0
    assert box_iou(inverted, torch.tensor([[0.0, 0.0, 4.0, 4.0]])).item() == 0.0
    assert box_area(torch.tensor([[0.0, 0.0, 2.0, 3.0]])).item() == 6.0


def test_matches_torchvision_on_valid_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 50
    wh = torch.rand(20, 2, generator=g) * 30 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    assert torch.allclose(
        box_iou(boxes[:8], boxes[8:]), tv_box_iou(boxes[:8], boxes[8:]), atol=1e-6
    )
    assert torch.allclose(
        box_iou_aligned(boxes[:10], boxes[10:]),
        tv_box_iou(boxes[:10], boxes[10:]).diagonal(),
        atol=1e-6,
    )
