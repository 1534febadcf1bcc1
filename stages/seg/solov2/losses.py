"""SOLOv2 losses: Dice mask loss on dynamic-conv masks of the positive cells, sigmoid focal category loss.

With P positive (cell, instance) pairs (``targets.assign_targets``), ``m_p = sigmoid(K_p * F_b)`` the mask
of pair p (``K_p`` the D-dim kernel of its cell, ``F_b`` the ``(E, H/4, W/4)`` mask features of its image,
``*`` a 1x1 convolution) and ``T_p`` its instance's mask at stride 4:

    loss_ins  = dice_weight * [ mean_p dice(m_p, T_p)
                                + sum_a ( sum_{p valid for a} w_pa * dice(m_p, T_pa) / #{p valid for a} ) ]
    loss_cate = focal_weight * sum_{cells, classes} focal(logit, onehot) / (num_pos_cells + 1)

``dice(p, t) = 1 - 2 sum(p t) / (sum(p^2) + eps + sum(t^2) + eps)`` (V-Net, eps = 1e-3). The auxiliary term is
SAPNet's multi-mask proposal supervision (docs/method.md §10): ``T_pa`` is the a-th auxiliary mask of the
pair's instance, supervising the same kernel as the main mask (Dice only, no effect on the focal loss),
``w_pa`` its weight (the exporter writes 0.5/6 for the 2nd, 4th and 6th PRM-ranked masks) and a pair is
"valid for a" when that auxiliary mask is non-empty (SOLO skips empty masks). With constant weights ``w`` and
all auxiliary masks present this is ``w * mean_p dice(m_p, T_pa)`` per auxiliary slot; when
``cfg.use_aux_masks`` is False or no auxiliary masks are given the term is 0. ``num_pos_cells`` counts distinct
positive grid cells over the batch and levels; the Dice mean runs over all pairs (a cell shared by two
instances gives two pairs), as in the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from stages.seg.solov2.config import SOLOv2Config
from stages.seg.solov2.heads import SOLOv2Outputs
from stages.seg.solov2.targets import (
    AssignedTargets,
    InstanceTargets,
    assign_targets,
    gather_per_image,
)


def dice_loss(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """V-Net Dice loss per mask: ``pred (P, H, W)`` sigmoid probabilities, ``target (P, H, W)`` {0, 1}.

    Returns ``(P,)``: ``1 - 2 sum(p t) / (sum(p^2) + eps + sum(t^2) + eps)``, computed in float32
    (sums over a mask overflow float16 under mixed precision).
    """
    p = pred.flatten(1).float()
    t = target.flatten(1).float()
    inter = (p * t).sum(dim=1)
    return 1.0 - 2.0 * inter / ((p * p).sum(dim=1) + eps + (t * t).sum(dim=1) + eps)


def sigmoid_focal_loss(
    logits: Tensor, targets_onehot: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Summed sigmoid focal loss (Lin et al. 2017) over all elements of ``logits`` (any shape), in float32.

    ``alpha_t * (1 - p_t)^gamma * BCE(logit, t)`` with ``p_t = p if t else 1 - p``, ``alpha_t = alpha if t
    else 1 - alpha`` (no alpha weighting when ``alpha < 0``); ``targets_onehot`` has the shape of ``logits``
    with values in {0, 1}. This is ``torchvision.ops.sigmoid_focal_loss`` on float32 inputs (the sums
    overflow float16 under mixed precision).
    """
    return tv_sigmoid_focal_loss(
        logits.float(), targets_onehot.float(), alpha=alpha, gamma=gamma, reduction="sum"
    )


def dynamic_mask_logits(kernels: Tensor, mask_feats: Tensor, image: Tensor) -> Tensor:
    """1x1 dynamic convolution: ``kernels (P, E)`` over ``mask_feats (B, E, H, W)`` of image ``image (P,)``.

    Returns mask logits ``(P, H, W)`` in the order of the pairs; one matmul per image (no gather of
    ``mask_feats`` per pair).
    """
    num_pairs = kernels.shape[0]
    _, e, h, w = mask_feats.shape
    if num_pairs == 0:
        return mask_feats.new_zeros(0, h, w)
    order = torch.argsort(image, stable=True)
    counts = torch.bincount(image, minlength=mask_feats.shape[0]).tolist()
    chunks = []
    for b, chunk in enumerate(torch.split(kernels[order], counts)):
        if chunk.shape[0]:
            chunks.append(chunk @ mask_feats[b].reshape(e, h * w))
    position = torch.empty_like(order)
    position[order] = torch.arange(num_pairs, device=order.device)
    logits = torch.cat(chunks)[position]  # back to pair order
    return logits.view(num_pairs, h, w)


def _pair_aux(assigned: AssignedTargets, image: Tensor, instance: Tensor):
    """Auxiliary masks ``(P, A, H, W)``, weights ``(P, A)`` and validity ``(P, A)`` of the pairs.

    Images without auxiliary masks contribute zero-weight, invalid slots. Returns None when no image of
    the batch has auxiliary masks.
    """
    present = [m for m in assigned.aux_masks if m is not None]
    if not present:
        return None
    num_aux = max(m.shape[1] for m in present)
    h, w = assigned.masks[0].shape[-2:]
    masks, weights, valid = [], [], []
    for b, base in enumerate(assigned.masks):
        n = base.shape[0]
        am, aw, av = assigned.aux_masks[b], assigned.aux_weights[b], assigned.aux_valid[b]
        if am is None:
            am = base.new_zeros(n, num_aux, h, w)
            aw = torch.zeros(n, num_aux, device=base.device)
            av = torch.zeros(n, num_aux, dtype=torch.bool, device=base.device)
        masks.append(_pad_slots(am, num_aux))
        weights.append(_pad_slots(aw, num_aux))
        valid.append(_pad_slots(av, num_aux))
    return (
        gather_per_image(masks, image, instance),
        gather_per_image(weights, image, instance),
        gather_per_image(valid, image, instance),
    )


def _pad_slots(x: Tensor, num: int) -> Tensor:
    """Zero-pad dimension 1 of ``x (n, A, ...)`` to ``num`` slots."""
    if x.shape[1] == num:
        return x
    out = x.new_zeros(x.shape[0], num, *x.shape[2:])
    out[:, : x.shape[1]] = x
    return out


def solov2_losses(
    outputs: SOLOv2Outputs,
    targets: list[InstanceTargets],
    cfg: SOLOv2Config,
    assigned: AssignedTargets | None = None,
) -> dict[str, Tensor]:
    """``{"loss_ins": ..., "loss_cate": ...}`` for a batch (formulas in the module docstring).

    Args:
        outputs: head outputs for B images.
        targets: B ``InstanceTargets`` (moved to the outputs' device).
        cfg: loss weights, focal parameters, ``use_aux_masks``.
        assigned: precomputed ``assign_targets`` result (optional; computed here when None).
    """
    mask_feats = outputs.mask_feats
    device = mask_feats.device
    if assigned is None:
        targets = [t.to(device) for t in targets]
        assigned = assign_targets(targets, tuple(mask_feats.shape[-2:]), cfg)

    # Mask branch: kernels of the positive pairs of every level, dynamic conv, Dice.
    kernels, images, instances = [], [], []
    for level, lv in enumerate(assigned.levels):
        flat = outputs.kernel_preds[level].flatten(2)  # (B, D, S*S)
        kernels.append(flat[lv.pos_image, :, lv.pos_cell])  # (P_l, D)
        images.append(lv.pos_image)
        instances.append(lv.pos_instance)
    kernel = torch.cat(kernels)
    image = torch.cat(images)
    instance = torch.cat(instances)
    if kernel.shape[0] == 0:
        # Keep every head parameter in the graph (DDP) with a zero loss.
        zero = sum(k.sum() for k in outputs.kernel_preds) * 0.0 + mask_feats.sum() * 0.0
        loss_ins = zero
    else:
        probs = torch.sigmoid(dynamic_mask_logits(kernel, mask_feats, image))
        target = gather_per_image(assigned.masks, image, instance)
        loss_mask = dice_loss(probs, target).mean()
        aux = _pair_aux(assigned, image, instance) if cfg.use_aux_masks else None
        if aux is not None:
            aux_masks, aux_weights, aux_valid = aux
            num_pairs, num_aux = aux_weights.shape
            dice_aux = dice_loss(
                probs.unsqueeze(1).expand(-1, num_aux, -1, -1).reshape(-1, *probs.shape[-2:]),
                aux_masks.reshape(-1, *probs.shape[-2:]),
            ).view(num_pairs, num_aux)
            weighted = (aux_weights * dice_aux * aux_valid).sum(dim=0)  # (A,)
            loss_mask = loss_mask + (weighted / aux_valid.sum(dim=0).clamp(min=1)).sum()
        loss_ins = cfg.dice_weight * loss_mask

    # Category branch: focal loss over every cell and class, normalised by positive cells + 1.
    num_classes = cfg.num_classes
    logits = torch.cat([p.permute(0, 2, 3, 1).reshape(-1, num_classes) for p in outputs.cate_preds])
    labels = torch.cat([lv.cate_labels.reshape(-1) for lv in assigned.levels])
    onehot = F.one_hot(labels, num_classes + 1)[:, :num_classes]
    num_pos = int((labels != num_classes).sum())
    focal = sigmoid_focal_loss(logits, onehot, cfg.focal_alpha, cfg.focal_gamma)
    loss_cate = cfg.focal_weight * focal / (num_pos + 1)
    return {"loss_ins": loss_ins, "loss_cate": loss_cate}
