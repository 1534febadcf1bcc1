"""SOLOv2 inference: from head outputs to per-image masks, scores and labels.

Per image (reference order, docs/method.md §12):

1. sigmoid category maps, point NMS (a cell is kept only if it is the max of its 2x2 window);
2. candidates = (cell, class) with score > ``score_thr``;
3. masks = sigmoid(1x1 dynamic conv of the cell kernel over the mask features), binarised at ``mask_thr``;
   candidates whose binary mask (at stride 4) has area <= the level's stride are dropped;
4. score *= maskness (mean probability inside the binary mask); sort; keep the top ``nms_pre``;
5. Matrix NMS on the binary masks, keep scores >= ``update_thr``, sort, keep ``max_per_img``;
6. soft masks upsampled x4 (bilinear) to the padded input, cropped to the valid ``(h, w)``, binarised at
   ``mask_thr``. Resizing to the original image size is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from stages.seg.solov2.config import SOLOv2Config
from stages.seg.solov2.heads import SOLOv2Outputs
from stages.seg.solov2.matrix_nms import matrix_nms
from stages.seg.solov2.targets import MASK_STRIDE

_CHUNK = 1024  # grid cells whose masks are computed at once before the nms_pre cut


@dataclass
class SOLOv2Prediction:
    """Detections of one image, sorted by descending score.

    masks: ``(k, h, w)`` bool at the (unpadded) input resolution.
    scores: ``(k,)`` float, category score x maskness x Matrix-NMS decay.
    labels: ``(k,)`` long class ids in ``[0, C)``.
    soft_masks: ``(k, h, w)`` float mask probabilities, only when requested (``return_soft=True``),
        e.g. to resize to the original image size before thresholding.
    """

    masks: Tensor
    scores: Tensor
    labels: Tensor
    soft_masks: Tensor | None = None


def point_nms(heat: Tensor, kernel: int = 2) -> Tensor:
    """Zero every cell of ``heat (B, C, S, S)`` that is not the maximum of its ``kernel x kernel`` window.

    The window of cell (r, c) covers rows r-1..r and columns c-1..c (max-pool with padding 1, cropped).
    """
    hmax = F.max_pool2d(heat, kernel, stride=1, padding=1)
    keep = hmax[..., :-1, :-1] == heat
    return heat * keep


def _empty(h: int, w: int, device: torch.device, soft: bool) -> SOLOv2Prediction:
    return SOLOv2Prediction(
        masks=torch.zeros(0, h, w, dtype=torch.bool, device=device),
        scores=torch.zeros(0, device=device),
        labels=torch.zeros(0, dtype=torch.long, device=device),
        soft_masks=torch.zeros(0, h, w, device=device) if soft else None,
    )


def _mask_probs(kernels: Tensor, feats: Tensor) -> Tensor:
    """Sigmoid masks ``(N, H, W)`` of ``kernels (N, E)`` over ``feats (E, H, W)``."""
    e, h, w = feats.shape
    return torch.sigmoid(kernels @ feats.reshape(e, h * w)).view(-1, h, w)


def _single_image(
    cate: Tensor,
    kernels: Tensor,
    strides: Tensor,
    feats: Tensor,
    size: tuple[int, int],
    cfg: SOLOv2Config,
    return_soft: bool,
) -> SOLOv2Prediction:
    """``cate (T, C)`` point-NMSed scores, ``kernels (T, D)``, ``strides (T,)``, ``feats (E, Hf, Wf)``."""
    h, w = size
    cells, labels = (cate > cfg.score_thr).nonzero(as_tuple=True)
    if cells.numel() == 0:
        return _empty(h, w, feats.device, return_soft)
    scores = cate[cells, labels]

    # Masks depend on the cell only: compute area and maskness once per distinct cell, in chunks so
    # that many candidates stay within memory, then share them between the cell's classes.
    ucells, inverse = torch.unique(cells, return_inverse=True)
    areas, mask_sums, probs = [], [], []
    for start in range(0, ucells.numel(), _CHUNK):
        p = _mask_probs(kernels[ucells[start : start + _CHUNK]], feats)
        binary = p > cfg.mask_thr
        areas.append(binary.sum(dim=(1, 2)).to(p.dtype))
        mask_sums.append((p * binary).sum(dim=(1, 2)))
        if ucells.numel() <= _CHUNK:
            probs.append(p)
    area = torch.cat(areas)[inverse]
    maskness = torch.cat(mask_sums)[inverse] / area.clamp(min=1.0)
    keep = area > strides[cells].to(area.dtype)
    if not bool(keep.any()):
        return _empty(h, w, feats.device, return_soft)
    scores = scores[keep] * maskness[keep]
    order = torch.argsort(scores, descending=True)[: cfg.nms_pre]
    kept = keep.nonzero(as_tuple=True)[0][order]
    scores, labels, area = scores[order], labels[kept], area[kept]
    if probs:
        seg = probs[0][inverse[kept]]
    else:
        seg = _mask_probs(kernels[cells[kept]], feats)

    scores = matrix_nms(
        seg > cfg.mask_thr, labels, scores, cfg.nms_kernel, cfg.nms_sigma, mask_area=area
    )
    keep = scores >= cfg.update_thr
    if not bool(keep.any()):
        return _empty(h, w, feats.device, return_soft)
    scores, labels, seg = scores[keep], labels[keep], seg[keep]
    order = torch.argsort(scores, descending=True)[: cfg.max_per_img]
    scores, labels, seg = scores[order], labels[order], seg[order]

    hf, wf = feats.shape[-2:]
    up = F.interpolate(
        seg.unsqueeze(0),
        size=(MASK_STRIDE * hf, MASK_STRIDE * wf),
        mode="bilinear",
        align_corners=False,
    )[0, :, :h, :w]
    return SOLOv2Prediction(
        masks=up > cfg.mask_thr,
        scores=scores,
        labels=labels,
        soft_masks=up if return_soft else None,
    )


@torch.no_grad()
def solov2_inference(
    outputs: SOLOv2Outputs,
    image_sizes: list[tuple[int, int]],
    cfg: SOLOv2Config,
    return_soft: bool = False,
) -> list[SOLOv2Prediction]:
    """Predictions for each image of the batch (steps in the module docstring).

    Args:
        outputs: head outputs for B images.
        image_sizes: B ``(h, w)`` sizes of the valid (unpadded) input images, each at most the padded size.
        cfg: thresholds, ``nms_pre``, ``max_per_img``, Matrix-NMS kernel and sigma.
        return_soft: also return the soft masks (``SOLOv2Prediction.soft_masks``).
    """
    num_images = outputs.mask_feats.shape[0]
    if len(image_sizes) != num_images:
        raise ValueError(
            f"solov2_inference: {len(image_sizes)} image sizes for {num_images} images"
        )
    num_classes = cfg.num_classes
    cate = torch.cat(
        [
            point_nms(torch.sigmoid(p)).permute(0, 2, 3, 1).reshape(num_images, -1, num_classes)
            for p in outputs.cate_preds
        ],
        dim=1,
    )  # (B, T, C)
    kernels = torch.cat(
        [k.permute(0, 2, 3, 1).reshape(num_images, -1, k.shape[1]) for k in outputs.kernel_preds],
        dim=1,
    )  # (B, T, D)
    strides = torch.cat(
        [
            torch.full((s * s,), stride, device=cate.device)
            for s, stride in zip(cfg.num_grids, cfg.instance_strides, strict=True)
        ]
    )
    return [
        _single_image(
            cate[b],
            kernels[b],
            strides,
            outputs.mask_feats[b],
            (int(image_sizes[b][0]), int(image_sizes[b][1])),
            cfg,
            return_soft,
        )
        for b in range(num_images)
    ]
