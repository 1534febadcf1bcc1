"""PNPG: positive (PPG) and negative (NPG) proposal generation for the PRM stage, plus box helpers.

docs/method.md §7. All boxes are ``xyxy`` floats in edge coordinates of the resized training image
(pixel column ``c`` spans ``[c, c+1)``); areas are ``(x2 - x1) * (y2 - y1)`` with no ``+1``.
Everything is vectorised over objects and proposals; nothing needs gradients.

- :func:`ppg_boxes`: the positive bag ``B+`` = the ``M`` SAM proposals + 20 centre-preserving
  rescalings of a base box (15 enlargements + 5 boxes that grow or shrink depending on the PDG
  score ``S_dis``).
- :func:`npg_background`: 500 random background boxes per image, weight 1 iff their IoU with
  every SAM proposal box of the image is below ``T_neg1 = 0.3``.
- :func:`npg_part_negatives`: one central half-size "part" box per object whose base box is
  large enough.

Box areas and IoU come from :mod:`stages.common.boxes`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stages.common.boxes import box_area, box_iou, box_iou_aligned  # noqa: F401 - re-exported

# PPG (docs/method.md §7.1, code values).
PPG_NUM_GROW = 15
"""Number of plain enlargements ``s = 1 + PPG_GROW_STEP * n``, ``n = 1..15``."""
PPG_GROW_STEP = 0.01
PPG_NUM_EXTRA = 5
"""Number of extra boxes whose scale depends on ``S_dis``."""
PPG_EXTRA_STEP = 0.005
"""Extra boxes: ``s = 1 + 0.005 n`` (``n = 16..20``) if ``S_dis == 1``,
else ``s = 1 - 0.005 n / S_dis`` (``n = 1..5``)."""
PPG_NUM_GENERATED = PPG_NUM_GROW + PPG_NUM_EXTRA

# NPG (docs/method.md §7.2).
NPG_NUM_BACKGROUND = 500
NPG_BACKGROUND_IOU = 0.3
"""T_neg1: a background box is a valid negative iff IoU < this with every SAM proposal."""
NPG_OUTSIDE_FRACTION = 0.2
"""Background boxes may extend this fraction of the image size outside the image on each side."""
NPG_PART_MIN_SIZE = 64.0
"""A part negative is made only for base boxes with area > NPG_PART_MIN_SIZE ** 2."""
NPG_PART_IOU = 0.5
"""T_neg2: a part negative is kept iff its IoU with its parent is below this (always: 0.25)."""


def clip_boxes(boxes: Tensor, heights: Tensor | float, widths: Tensor | float) -> Tensor:
    """Clamp ``(N, 4)`` xyxy boxes to ``[0, w] x [0, h]``.

    ``heights``/``widths`` are per object ``(N,)`` or scalars. Used on the selected top-1 box of
    each stage (the code clamps ``box_psm``/``box_select`` to the image).
    """
    h = torch.as_tensor(heights, dtype=boxes.dtype, device=boxes.device)
    w = torch.as_tensor(widths, dtype=boxes.dtype, device=boxes.device)
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    x1 = torch.minimum(torch.maximum(boxes[..., 0], zero), w)
    y1 = torch.minimum(torch.maximum(boxes[..., 1], zero), h)
    x2 = torch.minimum(torch.maximum(boxes[..., 2], zero), w)
    y2 = torch.minimum(torch.maximum(boxes[..., 3], zero), h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def ppg_scales(s_dis: Tensor) -> Tensor:
    """The 20 PPG scale factors per object, ``(N,)`` -> ``(N, 20)`` (dtype/device of ``s_dis``).

    Columns 0..14: ``1 + 0.01 n`` (n = 1..15). Columns 15..19: ``1 + 0.005 n`` (n = 16..20)
    where ``s_dis == 1`` exactly (no same-class point inside the base proposal), else
    ``1 - 0.005 n / s_dis`` (n = 1..5, a 0.5-1 % shrink per step as ``s_dis`` is in (0.5, 1)).
    """
    s_dis = s_dis.detach()
    n_grow = torch.arange(1, PPG_NUM_GROW + 1, dtype=s_dis.dtype, device=s_dis.device)
    grow = (1.0 + PPG_GROW_STEP * n_grow).expand(s_dis.shape[0], -1)
    n_big = torch.arange(16, 16 + PPG_NUM_EXTRA, dtype=s_dis.dtype, device=s_dis.device)
    n_small = torch.arange(1, 1 + PPG_NUM_EXTRA, dtype=s_dis.dtype, device=s_dis.device)
    extra_grow = (1.0 + PPG_EXTRA_STEP * n_big).expand(s_dis.shape[0], -1)
    extra_shrink = 1.0 - PPG_EXTRA_STEP * n_small[None, :] / s_dis[:, None]
    extra = torch.where((s_dis == 1)[:, None], extra_grow, extra_shrink)
    return torch.cat([grow, extra], dim=1)


def rescale_boxes(boxes: Tensor, scales: Tensor) -> Tensor:
    """Centre-preserving rescaling of ``(N, 4)`` boxes by ``(N, S)`` factors -> ``(N, S, 4)``."""
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    half_w = ((boxes[:, 2] - boxes[:, 0]) * 0.5)[:, None] * scales
    half_h = ((boxes[:, 3] - boxes[:, 1]) * 0.5)[:, None] * scales
    return torch.stack(
        [cx[:, None] - half_w, cy[:, None] - half_h, cx[:, None] + half_w, cy[:, None] + half_h],
        dim=-1,
    )


def ppg_boxes(base_boxes: Tensor, s_dis: Tensor, proposals: Tensor) -> Tensor:
    """Positive bag ``B+`` of every object (PPG, docs/method.md §7.1, code behaviour).

    Args:
        base_boxes: ``(N, 4)`` xyxy base box per object. The recommended default is
            ``box_psm`` = the top-1 PSM proposal before BMS (the code's +-1 px match that usually
            falls back to proposal 5 is the caller's "bug-compatible" option).
        s_dis: ``(N,)`` PDG score ``sigmoid(1 / W)`` of the base proposal (before the 1/64
            power), in (0.5, 1]; exactly 1 means "no same-class point inside" (grow branch).
        proposals: ``(N, M, 4)`` the object's SAM proposal boxes.

    Returns:
        ``(N, M + 20, 4)``: ``[M proposals, 15 enlargements (1.01..1.15), 5 extra boxes]`` (see
        :func:`ppg_scales`), centre-preserving on w and h; every coordinate is clamped at >= 0
        (as the code clamps the whole bag), with no upper clip.
    """
    generated = rescale_boxes(base_boxes, ppg_scales(s_dis).to(base_boxes.dtype))
    return torch.cat([proposals, generated], dim=1).clamp(min=0)


def npg_background(
    image_size: tuple[int, int],
    proposal_boxes: Tensor,
    num: int = NPG_NUM_BACKGROUND,
    iou_threshold: float = NPG_BACKGROUND_IOU,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random background negatives of ONE image (NPG, docs/method.md §7.2).

    Args:
        image_size: ``(h, w)`` of the resized, un-padded image (edge coordinates).
        proposal_boxes: ``(P, 4)`` all SAM proposal boxes of the image's objects (6N of them).
        num: number of boxes drawn (code 500).
        iou_threshold: T_neg1 (0.3).
        generator: a ``torch.Generator``; the draws happen on its device (CPU default) and the
            result is moved to ``proposal_boxes.device``. The same generator state gives the
            same boxes.

    Returns:
        ``boxes (num, 4)``: ``x1 ~ U(-0.2w, w)``, ``y1 ~ U(-0.2h, h)``,
        ``x2 = x1 + U(0,1) (1.2w - x1)``, ``y2 = y1 + U(0,1) (1.2h - y1)`` (so boxes lie in
        ``[-0.2w, 1.2w] x [-0.2h, 1.2h]``);
        ``weights (num,)`` float (dtype of the boxes): 1 iff the IoU with every proposal box is
        ``< iou_threshold``, else 0. Invalid boxes are kept with weight 0 (as the code does).
    """
    h, w = float(image_size[0]), float(image_size[1])
    dtype = proposal_boxes.dtype if proposal_boxes.is_floating_point() else torch.float32
    draw_device = generator.device if generator is not None else proposal_boxes.device
    u = torch.rand((4, num), generator=generator, device=draw_device, dtype=torch.float32)
    u = u.to(device=proposal_boxes.device, dtype=dtype)
    f = NPG_OUTSIDE_FRACTION
    x1 = -f * w + u[0] * ((1.0 + f) * w)
    y1 = -f * h + u[1] * ((1.0 + f) * h)
    x2 = x1 + u[2] * ((1.0 + f) * w - x1)
    y2 = y1 + u[3] * ((1.0 + f) * h - y1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    if proposal_boxes.shape[0] == 0:
        return boxes, torch.ones(num, dtype=dtype, device=boxes.device)
    iou = box_iou(boxes, proposal_boxes.to(dtype))
    weights = (iou < iou_threshold).all(dim=1).to(dtype)
    return boxes, weights


def npg_part_negatives(
    base_boxes: Tensor,
    min_size: float = NPG_PART_MIN_SIZE,
    iou_threshold: float = NPG_PART_IOU,
) -> tuple[Tensor, Tensor]:
    """Part negatives (NPG, docs/method.md §7.2): the central half-width, half-height box of each box.

    Args:
        base_boxes: ``(N, 4)`` xyxy, the SAM proposal with the highest stage-0 score of each object
            (``box_psm`` before BMS), in resized-image pixels.
        min_size: a part negative exists only if the base area ``> min_size ** 2`` (64 px).
        iou_threshold: T_neg2 (0.5); the part box has IoU 0.25 with its parent, so this never
            removes one.

    Returns:
        ``boxes (N, 4)`` (centre kept, w/2 x h/2) and ``valid (N,) bool``; the caller keeps
        ``boxes[valid]`` as weight-1 negatives.
    """
    part = rescale_boxes(base_boxes, base_boxes.new_full((base_boxes.shape[0], 1), 0.5))[:, 0]
    valid = box_area(base_boxes) > float(min_size) ** 2
    valid = valid & (box_iou_aligned(part, base_boxes) < iou_threshold)
    return part, valid
