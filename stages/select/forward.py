"""The SAPNet selector forward pass (docs/method.md §4-§8): PSM + PDG, PNPG, PRM, for training and prediction.

Everything runs on a whole batch at once: the N objects of the B images are concatenated (``image_ids (N,)``
says whose they are), the method's math comes from the pure functions of ``pdg``, ``mil``, ``pnpg`` and
``bms``. Boxes and points are in edge coordinates of the resized network input (see ``data.py``).

Training (:class:`SelectorLoss`):

1. stage 0 (PSM): RoI features of the N x M proposals -> ``cls0, ins0 (N, M, C + 1)``; PDG scores
   ``S (N, M)``; loss ``0.25 * BCE(bag0, c)`` with the PDG-scaled logits (code) or the S^d factor (paper);
   selection ``sel0 = softmax_K(cls0)[c] * softmax_M(ins0)[c]`` on the raw logits, ``top0``, ``box_psm`` (the
   top-1 proposal clamped to the image), ``beta = sel0.sum(1)``; the stage-0 loss is averaged over the
   bags with at least one valid (positive-area) proposal (``psm_normalise="valid-bags"``, the code);
2. PNPG: the PRM bag ``[M proposals, 20 PPG boxes]`` around the PPG base: by default (``ppg_base="code"``)
   the stage-0 BMS box (BMS of the score-weighted top-1 box, ``top1_box="weighted"``) matched to the first
   proposal within strictly < 1 px, else proposal 5; ``ppg_base="psm"`` uses ``box_psm`` (docs/method.md §14, §15);
   500 background negatives per image and one part negative per large object;
3. stage 1 (PRM): ``cls1, ins1 (N, M1, C)``, positive loss weighted by beta, negative loss on the
   negatives' class branch, ``L_prm = 0.25 L_pos + 0.75 L_neg``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stages.select.bms import box_mining, weighted_top1_box
from stages.select.config import SelectConfig
from stages.select.data import rois_from_boxes
from stages.select.mil import (
    PRM_ALPHA,
    PSM_LOSS_WEIGHT,
    prm_bag_scores,
    prm_negative_loss,
    prm_positive_loss,
    psm_bag_scores,
    psm_loss,
    selection_scores,
    top1,
)
from stages.select.model import SelectorNet
from stages.select.pdg import apply_pdg, pdg_scores, pdg_weights
from stages.select.pnpg import clip_boxes, npg_background, npg_part_negatives, ppg_boxes

PPG_FALLBACK_INDEX = 5
"""The code's PPG base when no proposal matches the stage-0 box within 1 px (the 6th SAM proposal)."""


def _config_default(name: str) -> Any:
    return SelectConfig.__dataclass_fields__[name].default


@dataclass
class MethodOptions:
    """The method switches and hyper-parameters the forward pass needs (from ``SelectConfig``)."""

    # Defaults are read from SelectConfig, the one place that holds the method's reference values.
    use_pdg: bool = _config_default("use_pdg")
    use_prm: bool = _config_default("use_prm")
    use_ppg: bool = _config_default("use_ppg")
    use_npg: bool = _config_default("use_npg")
    use_bms: bool = _config_default("use_bms")
    pdg_mode: str = _config_default("pdg_mode")
    pdg_power: float = _config_default("pdg_power")
    pdg_distance_power: float = _config_default("pdg_distance_power")
    ppg_base: str = _config_default("ppg_base")
    top1_box: str = _config_default("top1_box")
    psm_normalise: str = _config_default("psm_normalise")
    num_negatives: int = _config_default("num_negatives")
    bms_t1: float = _config_default("bms_t1")
    bms_t2: float = _config_default("bms_t2")

    @classmethod
    def from_config(cls, cfg: Any) -> MethodOptions:
        return cls(**{f: getattr(cfg, f) for f in cls.__dataclass_fields__})


@dataclass
class PSMOutput:
    """Stage-0 results for the N objects of a batch."""

    boxes: Tensor  # (N, M, 4) proposals
    image_ids: Tensor  # (N,)
    labels: Tensor  # (N,)
    embed: Tensor  # (N, M, D) shared-trunk features of the proposals
    cls: Tensor  # (N, M, C + 1)
    ins: Tensor  # (N, M, C + 1)
    s_dis: Tensor  # (N, M) PDG score sigmoid(1 / W) (ones without PDG)
    factor: Tensor | None  # (N, M) S^d in "paper" mode, else None
    scores: Tensor  # (N, M) selection scores of the GT class (detached)
    top: Tensor  # (N,) top-1 proposal index
    box: Tensor  # (N, 4) box_psm: the top-1 proposal clamped to its image
    beta: Tensor  # (N,) PSM bag score of the GT class (detached)
    bms_in: Tensor  # (N, 4) the top-1 box handed to BMS (``top1_box``), clamped to its image


def top1_box_for_bms(
    box: Tensor, score: Tensor, heights: Tensor, widths: Tensor, mode: str
) -> Tensor:
    """The selected box that BMS starts from, ``(N, 4)``: ``"weighted"`` (official) multiplies the top-1
    proposal ``box (N, 4)`` by ``s / (s + 1e-8)`` (``score (N,)``, float32; see
    :func:`stages.select.bms.weighted_top1_box`), ``"exact"`` keeps it; then clamped to the image."""
    if mode == "weighted":
        box = weighted_top1_box(box, score)
    return clip_boxes(box, heights, widths)


def object_image_ids(boxes: list[Tensor]) -> Tensor:
    """``(N,)`` batch index of every object, from the per-image ``(n_b, M, 4)`` boxes."""
    return torch.cat(
        [
            torch.full((b.shape[0],), i, dtype=torch.long, device=b.device)
            for i, b in enumerate(boxes)
        ]
    )


def object_sizes(sizes: list[tuple[int, int]], image_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-object ``(heights (N,), widths (N,))`` of the resized, un-padded image."""
    hw = torch.tensor(sizes, dtype=torch.float32, device=image_ids.device).reshape(-1, 2)
    return hw[image_ids, 0], hw[image_ids, 1]


def run_psm(
    net: SelectorNet,
    feats: list[Tensor],
    boxes: list[Tensor],
    points: list[Tensor],
    labels: list[Tensor],
    sizes: list[tuple[int, int]],
    opts: MethodOptions,
) -> PSMOutput:
    """Stage 0 on a batch: PSM logits, PDG scores, GT-class selection and ``box_psm``."""
    image_ids = object_image_ids(boxes)
    all_boxes = torch.cat(boxes)
    lab = torch.cat(labels)
    n, m = all_boxes.shape[:2]
    embed = net.roi_embed(feats, rois_from_boxes(boxes)).view(n, m, -1)
    cls, ins = net.psm_head(embed)
    if opts.use_pdg:
        w = pdg_weights(all_boxes, torch.cat(points), lab, image_ids, opts.pdg_distance_power)
        s_dis = pdg_scores(w)
    else:
        s_dis = torch.ones((n, m), dtype=all_boxes.dtype, device=all_boxes.device)
    factor = None
    if opts.use_pdg and opts.pdg_mode == "paper":
        factor = apply_pdg(cls, s_dis, opts.pdg_power, mode="paper")
    scores = selection_scores(cls, ins, lab, proposal_factor=factor)
    top = top1(scores)
    heights, widths = object_sizes(sizes, image_ids)
    rows = torch.arange(n, device=top.device)
    raw = all_boxes[rows, top]
    box = clip_boxes(raw, heights, widths)
    bms_in = top1_box_for_bms(raw, scores[rows, top], heights, widths, opts.top1_box)
    return PSMOutput(
        all_boxes, image_ids, lab, embed, cls, ins, s_dis, factor, scores, top, box, scores.sum(1),
        bms_in,
    )  # fmt: skip


def valid_bags(boxes: Tensor) -> Tensor:
    """``(N,)`` bool: the bag ``boxes (N, M, 4)`` holds at least one proposal of positive width and
    height (the code's proposal validity; an empty mask has the box ``[0, 0, 0, 0]``)."""
    wh = boxes[..., 2:] - boxes[..., :2]
    return (wh > 0).all(dim=-1).any(dim=1)


def ppg_base(psm: PSMOutput, opts: MethodOptions) -> tuple[Tensor, Tensor]:
    """PPG base box ``(N, 4)`` and its PDG score ``(N,)``.

    ``"psm"``: box_psm and the S of the top-1 proposal. ``"code"`` (official): the top-1 box handed to
    BMS (``psm.bms_in``, score-weighted by default) refined by stage-0 BMS (when BMS is on), then the
    first proposal whose 4 coordinates all lie STRICTLY within 1 px of it (``|d| < 1``), else proposal 5.
    """
    n = psm.boxes.shape[0]
    rows = torch.arange(n, device=psm.boxes.device)
    if opts.ppg_base == "psm":
        return psm.box, psm.s_dis[rows, psm.top]
    box = psm.bms_in
    if opts.use_bms:
        box = box_mining(box, psm.boxes[:, :3], opts.bms_t1, opts.bms_t2)
    close = ((psm.boxes - box[:, None, :]).abs() < 1.0).all(dim=-1)  # (N, M)
    m = psm.boxes.shape[1]
    first = torch.where(close, torch.arange(m, device=close.device), m).min(dim=1).values
    fallback = min(PPG_FALLBACK_INDEX, m - 1)
    index = torch.where(first < m, first, torch.full_like(first, fallback))
    return psm.boxes[rows, index], psm.s_dis[rows, index]


def prm_bag(psm: PSMOutput, opts: MethodOptions) -> Tensor:
    """The PRM bag ``(N, M1, 4)``: ``[M proposals, 20 PPG boxes]`` with PPG, else the M proposals."""
    if not opts.use_ppg:
        return psm.boxes
    base, s_dis = ppg_base(psm, opts)
    return ppg_boxes(base, s_dis, psm.boxes)


def prm_embeddings(
    net: SelectorNet,
    feats: list[Tensor],
    psm: PSMOutput,
    bag: Tensor,
    extra_boxes: Tensor | None = None,
    extra_images: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """RoI embeddings of the PRM bag ``(N, M1, D)`` and of ``extra_boxes (K, 4)`` (the negatives) ``(K, D)``.

    The M proposals reuse the stage-0 embeddings (same boxes, same trunk); the PPG boxes ``bag[:, M:]`` and
    the extra boxes (of images ``extra_images (K,)``) go through one RoI pass, PPG first in object order.
    Training and prediction both embed the PRM bag here.
    """
    n, m = psm.boxes.shape[:2]
    m1 = bag.shape[1]
    dim = psm.embed.shape[-1]
    boxes = [bag[:, m:].reshape(-1, 4)]
    images = [psm.image_ids.repeat_interleave(m1 - m)]
    if extra_boxes is not None and extra_images is not None:
        boxes.append(extra_boxes)
        images.append(extra_images)
    rois = torch.cat([torch.cat(images)[:, None].to(bag.dtype), torch.cat(boxes)], dim=1)
    embed = net.roi_embed(feats, rois) if rois.shape[0] else psm.embed.new_zeros((0, dim))
    k = n * (m1 - m)
    return torch.cat([psm.embed, embed[:k].reshape(n, m1 - m, dim)], dim=1), embed[k:]


def negatives(
    psm: PSMOutput, sizes: list[tuple[int, int]], opts: MethodOptions, generator: torch.Generator
) -> tuple[list[Tensor], list[Tensor]]:
    """NPG per image: ``boxes (k_b, 4)`` and ``weights (k_b,)`` (background, then part negatives)."""
    part, valid = npg_part_negatives(psm.box)
    out_boxes, out_weights = [], []
    for b, size in enumerate(sizes):
        mine = psm.image_ids == b
        bg, w = npg_background(
            size, psm.boxes[mine].reshape(-1, 4), opts.num_negatives, generator=generator
        )
        parts = part[mine & valid]
        out_boxes.append(torch.cat([bg, parts]))
        out_weights.append(
            torch.cat([w, torch.ones(parts.shape[0], dtype=w.dtype, device=w.device)])
        )
    return out_boxes, out_weights


def iteration_generator(seed: int, iteration: int, rank: int) -> torch.Generator:
    """The CPU generator of one training step's random negatives (a function of seed, step and rank)."""
    state = np.random.SeedSequence([seed, iteration, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class SelectorLoss(nn.Module):
    """The selector's training loss as a module: forward returns the weighted losses (the thing DDP wraps)."""

    def __init__(self, net: SelectorNet, opts: MethodOptions):
        super().__init__()
        self.net = net
        self.opts = opts

    def forward(
        self,
        images: Tensor,
        boxes: list[Tensor],
        points: list[Tensor],
        labels: list[Tensor],
        sizes: list[tuple[int, int]],
        generator: torch.Generator,
    ) -> dict[str, Tensor]:
        """Losses ``loss_psm``, ``loss_pos``, ``loss_neg`` (already weighted) and their sum ``loss``."""
        opts = self.opts
        feats = self.net.features(images)
        psm = run_psm(self.net, feats, boxes, points, labels, sizes, opts)
        cls_for_loss = psm.cls
        if opts.use_pdg and opts.pdg_mode == "logits":
            cls_for_loss = apply_pdg(psm.cls, psm.s_dis, opts.pdg_power, mode="logits")
        bag0, _, _ = psm_bag_scores(cls_for_loss, psm.ins, proposal_factor=psm.factor)
        loss0 = psm_loss(bag0, psm.labels, valid_bags(psm.boxes), opts.psm_normalise)
        losses = {"loss_psm": PSM_LOSS_WEIGHT * loss0}
        zero = losses["loss_psm"].new_zeros(())
        losses["loss_pos"], losses["loss_neg"] = zero, zero
        if opts.use_prm:
            losses.update(self._prm_losses(feats, psm, sizes, generator))
        losses["loss"] = losses["loss_psm"] + losses["loss_pos"] + losses["loss_neg"]
        losses["beta"] = psm.beta.mean()
        return losses

    def _prm_losses(
        self,
        feats: list[Tensor],
        psm: PSMOutput,
        sizes: list[tuple[int, int]],
        generator: torch.Generator,
    ) -> dict[str, Tensor]:
        opts = self.opts
        n = psm.boxes.shape[0]
        bag = prm_bag(psm, opts)
        neg_weights = neg_boxes_kept = neg_images = None
        if opts.use_npg:
            neg_boxes, neg_w = negatives(psm, sizes, opts, generator)
            neg_weights = torch.cat(neg_w)
            neg_images = torch.cat(
                [torch.full((b.shape[0],), i, device=b.device) for i, b in enumerate(neg_boxes)]
            )
            # Weight-0 background boxes (IoU >= 0.3 with a proposal) add nothing to the loss or its
            # gradient (it is normalised by the number of bags, or by the weight > 0 count), so they
            # are not embedded at all.
            keep = neg_weights > 0
            neg_boxes_kept = torch.cat(neg_boxes)[keep]
            neg_weights, neg_images = neg_weights[keep], neg_images[keep]
        bag_embed, neg_embed = prm_embeddings(self.net, feats, psm, bag, neg_boxes_kept, neg_images)
        cls1, ins1 = self.net.prm_head(bag_embed)
        bag1, _, _ = prm_bag_scores(cls1, ins1)
        pos = prm_positive_loss(bag1, psm.labels, psm.beta)
        out = {"loss_pos": PRM_ALPHA * pos}
        if neg_weights is not None:
            neg_cls = self.net.fc_cls1(neg_embed)
            neg = prm_negative_loss(neg_cls, neg_weights, psm.beta.mean(), n)
            out["loss_neg"] = (1.0 - PRM_ALPHA) * neg
        return out
