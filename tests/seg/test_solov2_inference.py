"""Inference on hand-built head outputs: point NMS, thresholds, area filter, Matrix NMS, shapes."""

from __future__ import annotations

import math

import pytest
import torch

from stages.seg.solov2.config import SOLOv2Config
from stages.seg.solov2.heads import SOLOv2Outputs
from stages.seg.solov2.inference import point_nms, solov2_inference

BASE = dict(num_classes=2, num_kernels=3, num_masks=3, num_grids=(4, 3, 2, 2, 1), norm="none")


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _outputs() -> SOLOv2Outputs:
    """Mask features (3, 8, 8): channel 0 = region A (rows/cols 0..3), 1 = region B (rows/cols
    4..7), 2 = a single pixel (7, 0); +10 inside, -10 outside."""
    feats = torch.full((1, 3, 8, 8), -10.0)
    feats[0, 0, :4, :4] = 10.0
    feats[0, 1, 4:, 4:] = 10.0
    feats[0, 2, 7, 0] = 10.0
    cate = [torch.full((1, 2, s, s), -10.0) for s in BASE["num_grids"]]
    kern = [torch.zeros(1, 3, s, s) for s in BASE["num_grids"]]

    def put(level: int, r: int, c: int, cls: int, p: float, channel: int) -> None:
        cate[level][0, cls, r, c] = _logit(p)
        kern[level][0, channel, r, c] = 1.0

    put(0, 0, 0, 0, 0.9, 0)  # A, class 0
    put(0, 0, 1, 0, 0.8, 0)  # next to a higher peak of its class: removed by point NMS
    put(0, 2, 2, 1, 0.6, 1)  # B, class 1
    put(0, 3, 3, 0, 0.7, 2)  # 1-pixel mask: area 1 <= stride 8, dropped
    put(1, 2, 2, 1, 0.3, 1)  # duplicate of B: decay exp(-2) -> 0.04 < update_thr
    put(1, 0, 0, 1, 0.09, 1)  # below score_thr
    return SOLOv2Outputs(cate_preds=cate, kernel_preds=kern, mask_feats=feats)


def test_point_nms_keeps_local_maxima_of_2x2_windows() -> None:
    heat = torch.tensor([[[[0.9, 0.8, 0.1], [0.2, 0.95, 0.7], [0.1, 0.0, 0.75]]]])
    got = point_nms(heat)
    # The window of (r, c) is rows r-1..r, cols c-1..c: (0, 0) only sees itself and survives
    # next to the higher (1, 1); (2, 2) = 0.75 sees (1, 1) = 0.95 and is removed; (1, 2) = 0.7
    # sees 0.8 and 0.95; everything else is below a neighbour up or left.
    want = torch.tensor([[[[0.9, 0.0, 0.0], [0.0, 0.95, 0.0], [0.0, 0.0, 0.0]]]])
    assert torch.equal(got, want)


def test_pipeline_on_hand_built_outputs() -> None:
    cfg = SOLOv2Config(**BASE)
    (pred,) = solov2_inference(_outputs(), [(30, 28)], cfg)
    maskness = torch.sigmoid(torch.tensor(10.0)).item()
    assert pred.labels.tolist() == [0, 1]
    assert pred.scores.tolist() == pytest.approx([0.9 * maskness, 0.6 * maskness], rel=1e-5)
    assert pred.masks.shape == (2, 30, 28) and pred.masks.dtype == torch.bool
    want_a = torch.zeros(30, 28, dtype=torch.bool)
    # x4 bilinear upsample of a 4x4 block of ~1 probabilities: edge pixels get 0.625, the corner
    # pixel 0.625^2 = 0.39 < mask_thr.
    want_a[:16, :16] = True
    want_a[15, 15] = False
    want_b = torch.zeros(30, 28, dtype=torch.bool)
    want_b[16:, 16:] = True
    want_b[16, 16] = False
    assert torch.equal(pred.masks[0], want_a)
    assert torch.equal(pred.masks[1], want_b)
    assert pred.soft_masks is None


def test_thresholds_and_limits() -> None:
    # Keep the duplicate by lowering update_thr: its score is decayed by exp(-2 * 1^2).
    cfg = SOLOv2Config(**BASE, update_thr=0.01)
    (pred,) = solov2_inference(_outputs(), [(32, 32)], cfg, return_soft=True)
    maskness = torch.sigmoid(torch.tensor(10.0)).item()
    assert pred.labels.tolist() == [0, 1, 1]
    assert pred.scores[2].item() == pytest.approx(0.3 * maskness * math.exp(-2.0), rel=1e-4)
    assert pred.soft_masks is not None and pred.soft_masks.shape == (3, 32, 32)
    (top1,) = solov2_inference(_outputs(), [(32, 32)], SOLOv2Config(**BASE, max_per_img=1))
    assert top1.labels.tolist() == [0]
    (none,) = solov2_inference(_outputs(), [(20, 24)], SOLOv2Config(**BASE, score_thr=0.95))
    assert none.masks.shape == (0, 20, 24) and none.scores.shape == (0,)
    assert none.labels.dtype == torch.long
    # A higher mask threshold than every probability empties every mask -> area filter drops all.
    (empty,) = solov2_inference(_outputs(), [(32, 32)], SOLOv2Config(**BASE, mask_thr=0.99999))
    assert empty.masks.shape[0] == 0


def test_batch_of_two_and_size_mismatch() -> None:
    out = _outputs()
    two = SOLOv2Outputs(
        cate_preds=[torch.cat([c, torch.full_like(c, -10.0)]) for c in out.cate_preds],
        kernel_preds=[torch.cat([k, k]) for k in out.kernel_preds],
        mask_feats=torch.cat([out.mask_feats, out.mask_feats]),
    )
    preds = solov2_inference(two, [(32, 32), (16, 8)], SOLOv2Config(**BASE))
    assert [p.masks.shape for p in preds] == [(2, 32, 32), (0, 16, 8)]
    with pytest.raises(ValueError):
        solov2_inference(two, [(32, 32)], SOLOv2Config(**BASE))


def test_chunked_mask_computation_gives_the_same_predictions(monkeypatch) -> None:
    import stages.seg.solov2.inference as inference

    g = torch.Generator().manual_seed(0)
    cfg = SOLOv2Config(**{**BASE, "num_classes": 3, "num_grids": (6, 5, 4, 3, 2)})
    out = SOLOv2Outputs(
        cate_preds=[torch.randn(1, 3, s, s, generator=g) for s in cfg.num_grids],
        kernel_preds=[torch.randn(1, 3, s, s, generator=g) * 3 for s in cfg.num_grids],
        mask_feats=torch.randn(1, 3, 8, 8, generator=g),
    )
    (whole,) = solov2_inference(out, [(32, 32)], cfg)
    monkeypatch.setattr(inference, "_CHUNK", 4)
    (chunked,) = solov2_inference(out, [(32, 32)], cfg)
    assert whole.scores.numel() > 3
    assert torch.equal(whole.labels, chunked.labels)
    assert torch.allclose(whole.scores, chunked.scores)
    assert torch.equal(whole.masks, chunked.masks)
