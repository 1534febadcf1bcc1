"""SOLOv2 target assignment ("centre sampling"), vectorised over instances, levels and grid cells.

For every image and level l (grid S_l, scale range [lo_l, hi_l]) an instance with a non-empty mask
and ``lo_l <= sqrt(w * h) <= hi_l`` (w, h of its xyxy box) is positive on the grid cells of its
centre region:

* centre ``(cx, cy)`` = centre of mass of the mask in pixel-index coordinates (pixel (r, c) has
  centre (c, r)), as in the reference implementations;
* with ``H, W = 4 * feat_size`` (the padded input size), the centre cell is ``(floor(cy / H * S),
  floor(cx / W * S))``; the region ``cy +- sigma * h / 2``, ``cx +- sigma * w / 2`` is converted to
  cells the same way, clipped to the grid and then to the 3x3 cells around the centre cell.

Every (positive cell, instance) pair supervises the cell's kernel with the instance's mask,
down-sampled x1/4 with bilinear ``F.interpolate`` (``align_corners=False``) and binarised at 0.5
(what ``mmcv.imrescale`` does to a 0/1 uint8 mask). When the regions of two instances overlap on a
level, the cell's category label is the one of the later instance (reference "last write wins")
while both pairs keep their mask loss, as in AdelaiDet and mmdetection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from stages.seg.solov2.config import SOLOv2Config

MASK_STRIDE = 4
DEFAULT_AUX_WEIGHT = 0.5 / 6  # SAPNet MPS weight of each auxiliary mask (docs/method.md §10)


@dataclass
class InstanceTargets:
    """Ground truth of one image.

    masks: ``(n, Hp, Wp)`` bool at the padded input resolution (smaller masks are zero-padded at the
        bottom / right, i.e. masks at the unpadded image size are fine).
    labels: ``(n,)`` long in ``[0, C)``.
    boxes: ``(n, 4)`` float xyxy in edge coordinates; used for the scale ranges and the
        centre-region size.
    aux_masks: optional ``(n, A, Hp, Wp)`` bool auxiliary masks (SAPNet MPS), Dice-only targets.
    aux_weights: optional ``(n, A)`` float weights of the auxiliary masks (default ``0.5 / 6``
        each).
    """

    masks: Tensor
    labels: Tensor
    boxes: Tensor
    aux_masks: Tensor | None = None
    aux_weights: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.masks.shape[0]
        if self.masks.dim() != 3:
            raise ValueError(
                f"InstanceTargets.masks must be (n, H, W), got {tuple(self.masks.shape)}"
            )
        if self.labels.shape != (n,) or self.boxes.shape != (n, 4):
            raise ValueError(
                f"InstanceTargets: {n} masks but labels {tuple(self.labels.shape)} and boxes "
                f"{tuple(self.boxes.shape)} (expected ({n},) and ({n}, 4))"
            )
        if self.aux_masks is not None:
            if self.aux_masks.dim() != 4 or self.aux_masks.shape[0] != n:
                raise ValueError(
                    f"InstanceTargets.aux_masks must be ({n}, A, H, W), got "
                    f"{tuple(self.aux_masks.shape)}"
                )
            if self.aux_weights is not None and self.aux_weights.shape != self.aux_masks.shape[:2]:
                raise ValueError(
                    f"InstanceTargets.aux_weights must be {tuple(self.aux_masks.shape[:2])}, got "
                    f"{tuple(self.aux_weights.shape)}"
                )

    def to(self, device: torch.device | str) -> InstanceTargets:
        """A copy with every tensor on ``device``."""
        return replace(
            self,
            masks=self.masks.to(device),
            labels=self.labels.to(device),
            boxes=self.boxes.to(device),
            aux_masks=None if self.aux_masks is None else self.aux_masks.to(device),
            aux_weights=None if self.aux_weights is None else self.aux_weights.to(device),
        )


@dataclass
class LevelTargets:
    """Targets of one grid level for a batch of B images; P = positive (cell, instance) pairs.

    cate_labels: ``(B, S, S)`` long, the class of each cell, ``C`` (num_classes) for background.
    pos_image: ``(P,)`` long image index of each pair.
    pos_cell: ``(P,)`` long flat cell index ``row * S + col``.
    pos_instance: ``(P,)`` long index of the supervising instance in its image's
        ``InstanceTargets``.
    pos_labels: ``(P,)`` long class of that instance.
    """

    cate_labels: Tensor
    pos_image: Tensor
    pos_cell: Tensor
    pos_instance: Tensor
    pos_labels: Tensor


@dataclass
class AssignedTargets:
    """Output of ``assign_targets``.

    levels: one ``LevelTargets`` per level.
    masks: per image ``(n, Hf, Wf)`` bool masks down-sampled x1/4 to the mask-feature size.
    aux_masks: per image ``(n, A, Hf, Wf)`` bool, or None when the image has no auxiliary masks.
    aux_weights: per image ``(n, A)`` float, or None.
    aux_valid: per image ``(n, A)`` bool, True where the auxiliary mask is non-empty, or None.
    num_classes: C, the background label of ``cate_labels``.
    """

    levels: list[LevelTargets]
    masks: list[Tensor]
    aux_masks: list[Tensor | None]
    aux_weights: list[Tensor | None]
    aux_valid: list[Tensor | None]
    num_classes: int

    @property
    def num_pos_cells(self) -> int:
        """Distinct positive grid cells over the batch and levels (the focal-loss normaliser)."""
        return int(sum(int((lv.cate_labels != self.num_classes).sum()) for lv in self.levels))

    def pair_masks(self, level: int) -> Tensor:
        """Target masks ``(P, Hf, Wf)`` bool of the positive pairs of ``level``."""
        lv = self.levels[level]
        return gather_per_image(self.masks, lv.pos_image, lv.pos_instance)


def gather_per_image(per_image: list[Tensor], image: Tensor, instance: Tensor) -> Tensor:
    """Rows ``per_image[image[p]][instance[p]]`` for every pair p, as one tensor.

    ``per_image``: B tensors ``(n_b, ...)`` with equal trailing shapes; ``image``, ``instance``: ``(P,)``.
    """
    offsets = torch.tensor([0] + [len(t) for t in per_image], device=image.device).cumsum(0)
    return torch.cat(per_image)[offsets[image] + instance]


def center_of_mass(masks: Tensor) -> Tensor:
    """Centres of mass ``(n, 2)`` float64 ``(cx, cy)`` of ``(n, H, W)`` masks, in pixel-index
    coordinates.

    Empty masks give ``(0, 0)`` (they are never assigned).
    """
    m = masks.to(torch.float64)
    h, w = m.shape[-2:]
    total = m.sum(dim=(1, 2)).clamp(min=1.0)
    cols = torch.arange(w, device=m.device, dtype=torch.float64)
    rows = torch.arange(h, device=m.device, dtype=torch.float64)
    cx = (m.sum(dim=1) * cols).sum(dim=1) / total
    cy = (m.sum(dim=2) * rows).sum(dim=1) / total
    return torch.stack([cx, cy], dim=1)


def downsample_masks(masks: Tensor, feat_size: tuple[int, int]) -> Tensor:
    """``(..., Hp, Wp)`` masks -> ``(..., Hf, Wf)`` bool at stride 4.

    The masks are zero-padded (or cropped) to ``4 * feat_size`` first, then resized with bilinear
    ``F.interpolate`` (``align_corners=False``) and thresholded at 0.5.
    """
    hf, wf = feat_size
    lead = masks.shape[:-2]
    m = masks.reshape(-1, 1, *masks.shape[-2:]).to(torch.float32)
    full_h, full_w = MASK_STRIDE * hf, MASK_STRIDE * wf
    m = m[..., :full_h, :full_w]
    m = F.pad(m, (0, full_w - m.shape[-1], 0, full_h - m.shape[-2]))
    if m.shape[0] == 0:
        return torch.zeros(*lead, hf, wf, dtype=torch.bool, device=masks.device)
    small = F.interpolate(m, size=(hf, wf), mode="bilinear", align_corners=False)
    return (small >= 0.5).reshape(*lead, hf, wf)


def assign_targets(
    targets: list[InstanceTargets], feat_size: tuple[int, int], cfg: SOLOv2Config
) -> AssignedTargets:
    """Assign the instances of a batch to grid cells of every level (see the module docstring).

    Args:
        targets: one ``InstanceTargets`` per image, all on the same device.
        feat_size: ``(Hf, Wf)`` of the mask features; the padded input is ``(4 Hf, 4 Wf)``.
        cfg: grids, scale ranges and sigma.
    """
    if len(targets) == 0:
        raise ValueError("assign_targets: empty batch")
    device = targets[0].masks.device
    num_images = len(targets)
    hf, wf = int(feat_size[0]), int(feat_size[1])
    full_h, full_w = float(MASK_STRIDE * hf), float(MASK_STRIDE * wf)

    counts = [int(t.labels.shape[0]) for t in targets]
    image_of = torch.repeat_interleave(
        torch.arange(num_images, device=device), torch.tensor(counts, device=device)
    )
    local_of = torch.cat([torch.arange(n, device=device) for n in counts])
    labels = torch.cat([t.labels.to(device=device, dtype=torch.long) for t in targets])
    boxes = torch.cat([t.boxes.to(device=device, dtype=torch.float64) for t in targets])
    centres = torch.cat([center_of_mass(t.masks) for t in targets])
    nonempty = torch.cat([t.masks.flatten(1).any(dim=1) for t in targets])

    # (N, L) geometry, float64 so that the cell arithmetic does not depend on float32 rounding.
    grids = torch.tensor(cfg.num_grids, device=device, dtype=torch.float64)
    grid_l = grids.long()
    ranges = torch.tensor(cfg.scale_ranges, device=device, dtype=torch.float64)
    box_w = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    box_h = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    scale = torch.sqrt(box_w * box_h)[:, None]
    hit = nonempty[:, None] & (scale >= ranges[:, 0]) & (scale <= ranges[:, 1])
    half_w = (0.5 * cfg.sigma * box_w)[:, None]
    half_h = (0.5 * cfg.sigma * box_h)[:, None]
    cx, cy = centres[:, :1], centres[:, 1:]

    def to_cell(v: Tensor, size: float) -> Tensor:
        return torch.floor(v / size * grids).long()

    last = grid_l - 1
    row = torch.minimum(to_cell(cy, full_h).clamp(min=0), last)
    col = torch.minimum(to_cell(cx, full_w).clamp(min=0), last)
    top = torch.maximum(to_cell(cy - half_h, full_h).clamp(min=0), row - 1)
    down = torch.minimum(torch.minimum(to_cell(cy + half_h, full_h), last), row + 1)
    left = torch.maximum(to_cell(cx - half_w, full_w).clamp(min=0), col - 1)
    right = torch.minimum(torch.minimum(to_cell(cx + half_w, full_w), last), col + 1)

    # Candidate 3x3 neighbourhood (N, L, 3, 3), kept where inside the clipped centre region.
    step = torch.arange(-1, 2, device=device)
    rows = row[..., None, None] + step[:, None]
    cols = col[..., None, None] + step[None, :]
    inside = (
        hit[..., None, None]
        & (rows >= top[..., None, None])
        & (rows <= down[..., None, None])
        & (cols >= left[..., None, None])
        & (cols <= right[..., None, None])
    )
    inst, lvl, dy, dx = inside.nonzero(as_tuple=True)  # instance-major, then level, row, col
    cell_r = row[inst, lvl] + dy - 1
    cell_c = col[inst, lvl] + dx - 1
    cell = cell_r * grid_l[lvl] + cell_c

    # Category labels: "last instance wins" on shared cells, via a max over instance order.
    level_sizes = [s * s for s in cfg.num_grids]
    level_start = torch.tensor([0] + level_sizes[:-1], device=device).cumsum(0)
    cells_per_image = sum(level_sizes)
    flat = image_of[inst] * cells_per_image + level_start[lvl] + cell
    winner = torch.full((num_images * cells_per_image,), -1, dtype=torch.long, device=device)
    winner.scatter_reduce_(0, flat, inst, reduce="amax")
    # Index -1 (no instance) picks the appended background label C.
    labels_bg = torch.cat([labels, labels.new_tensor([cfg.num_classes])])
    cate_flat = labels_bg[winner].view(num_images, cells_per_image)

    levels: list[LevelTargets] = []
    for level, (grid, start) in enumerate(zip(cfg.num_grids, level_start.tolist(), strict=True)):
        sel = lvl == level
        pos_inst = inst[sel]
        levels.append(
            LevelTargets(
                cate_labels=cate_flat[:, start : start + grid * grid].reshape(
                    num_images, grid, grid
                ),
                pos_image=image_of[pos_inst],
                pos_cell=cell[sel],
                pos_instance=local_of[pos_inst],
                pos_labels=labels[pos_inst],
            )
        )

    masks = [downsample_masks(t.masks, (hf, wf)) for t in targets]
    aux_masks: list[Tensor | None] = []
    aux_weights: list[Tensor | None] = []
    aux_valid: list[Tensor | None] = []
    for t in targets:
        if t.aux_masks is None:
            aux_masks.append(None)
            aux_weights.append(None)
            aux_valid.append(None)
            continue
        aux_masks.append(downsample_masks(t.aux_masks, (hf, wf)))
        aux_valid.append(t.aux_masks.flatten(2).any(dim=2))
        if t.aux_weights is None:
            aux_weights.append(torch.full(t.aux_masks.shape[:2], DEFAULT_AUX_WEIGHT, device=device))
        else:
            aux_weights.append(t.aux_weights.to(device=device, dtype=torch.float32))
    return AssignedTargets(
        levels=levels,
        masks=masks,
        aux_masks=aux_masks,
        aux_weights=aux_weights,
        aux_valid=aux_valid,
        num_classes=cfg.num_classes,
    )
