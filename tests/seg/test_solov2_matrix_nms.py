"""Matrix NMS against a direct double-loop implementation of its definition, and hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from stages.seg.solov2.matrix_nms import mask_iou_matrix, matrix_nms


def _reference(
    masks: torch.Tensor, labels: list[int], scores: list[float], kernel: str, sigma: float
):
    """Straightforward Matrix NMS: explicit loops over (i, j) pairs, Python floats."""
    n = len(scores)
    flat = [m.flatten().bool() for m in masks]

    def iou(a: int, b: int) -> float:
        inter = float((flat[a] & flat[b]).sum())
        union = float((flat[a] | flat[b]).sum())
        return inter / union if union > 0 else 0.0

    def f(x: float) -> float:
        return math.exp(-sigma * x * x) if kernel == "gaussian" else 1.0 - x

    def pair(i: int, j: int) -> float:  # suppression IoU of j by a higher-scored i
        return iou(i, j) if i < j and labels[i] == labels[j] else 0.0

    comp = [max([pair(k, i) for k in range(n)]) for i in range(n)]
    out = []
    for j in range(n):
        ratios = []
        for i in range(n):
            den = f(comp[i])
            ratios.append(f(pair(i, j)) / den if den > 0 else math.inf)
        out.append(scores[j] * min(ratios))
    return out


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_double_loop_on_random_masks(kernel: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 12
    # Random rectangles so that overlaps are frequent and IoUs spread over (0, 1).
    masks = torch.zeros(n, 24, 24, dtype=torch.bool)
    for k in range(n):
        y0, x0 = torch.randint(0, 12, (2,), generator=g).tolist()
        h, w = torch.randint(4, 12, (2,), generator=g).tolist()
        masks[k, y0 : y0 + h, x0 : x0 + w] = True
    labels = torch.randint(0, 3, (n,), generator=g)
    scores = torch.sort(torch.rand(n, generator=g), descending=True).values
    got = matrix_nms(masks, labels, scores, kernel=kernel, sigma=2.0)
    want = _reference(masks, labels.tolist(), scores.tolist(), kernel, 2.0)
    assert torch.allclose(got, torch.tensor(want, dtype=got.dtype), atol=1e-5)
    assert bool((got <= scores + 1e-7).all())
    assert got[0] == scores[0]  # the top mask is never decayed


def test_hand_computed_gaussian_and_class_awareness() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :, :2] = True  # 8 px
    masks[1, :, :] = True  # 16 px, IoU with mask 0 = 8 / 16 = 0.5
    masks[2, :, :2] = True  # duplicate of mask 0 but another class
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 0, 1])
    got = matrix_nms(masks, labels, scores, kernel="gaussian", sigma=2.0)
    expected_1 = 0.8 * math.exp(-2.0 * 0.25)
    assert got.tolist() == pytest.approx([0.9, expected_1, 0.7], abs=1e-6)
    got_lin = matrix_nms(masks, labels, scores, kernel="linear")
    assert got_lin.tolist() == pytest.approx([0.9, 0.4, 0.7], abs=1e-6)


def test_compensation_of_an_already_suppressed_mask() -> None:
    # 0 and 1 overlap (IoU 1/3); 1 and 2 overlap (IoU 1/3); 0 and 2 are disjoint. Mask 1 is itself
    # suppressed by 0, so its effect on 2 is compensated: decay_2 = f(1/3) / f(1/3) = 1.
    masks = torch.zeros(3, 1, 6, dtype=torch.bool)
    masks[0, 0, 0:2] = True
    masks[1, 0, 1:3] = True
    masks[2, 0, 2:4] = True
    iou = mask_iou_matrix(masks)
    assert iou[0, 1].item() == pytest.approx(1 / 3)
    assert iou[0, 2].item() == 0.0
    scores = torch.tensor([1.0, 0.9, 0.8])
    got = matrix_nms(masks, torch.zeros(3, dtype=torch.long), scores, sigma=2.0)
    assert got[1].item() == pytest.approx(0.9 * math.exp(-2.0 / 9))
    assert got[2].item() == pytest.approx(0.8)


def test_empty_input_and_float_masks() -> None:
    assert matrix_nms(torch.zeros(0, 4, 4), torch.zeros(0), torch.zeros(0)).shape == (0,)
    masks = torch.ones(2, 3, 3)
    got = matrix_nms(masks, torch.tensor([0, 0]), torch.tensor([0.5, 0.4]), kernel="linear")
    assert got.tolist() == pytest.approx([0.5, 0.0])
    with pytest.raises(ValueError):
        matrix_nms(masks, torch.tensor([0, 0]), torch.tensor([0.5, 0.4]), kernel="hard")
