"""Dice, focal and the SOLOv2 losses against direct formulas; MPS auxiliary masks."""

from __future__ import annotations

import math

import pytest
import torch

from stages.seg.solov2.config import SOLOv2Config
from stages.seg.solov2.heads import SOLOv2Outputs
from stages.seg.solov2.losses import (
    dice_loss,
    dynamic_mask_logits,
    sigmoid_focal_loss,
    solov2_losses,
)
from stages.seg.solov2.targets import DEFAULT_AUX_WEIGHT, InstanceTargets, assign_targets

CFG = SOLOv2Config(
    num_classes=3, num_kernels=4, num_masks=4, num_grids=(8, 6, 4, 3, 2), norm="none"
)


def test_dice_loss_hand_values() -> None:
    pred = torch.tensor([[[0.5, 0.5], [0.5, 0.5]], [[1.0, 0.0], [0.0, 0.0]]])
    target = torch.tensor([[[1, 0], [0, 0]], [[1, 0], [0, 0]]], dtype=torch.bool)
    got = dice_loss(pred, target)
    # image 0: sum(pt) = 0.5, sum(p^2) = 1, sum(t^2) = 1; image 1: perfect match.
    assert got.tolist() == pytest.approx([1 - 1.0 / 2.002, 1 - 2.0 / 2.002], abs=1e-6)
    assert dice_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)).item() == pytest.approx(1.0)


def test_sigmoid_focal_loss_matches_formula() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.3, -4.0]])
    onehot = torch.tensor([[1, 0], [0, 1]])
    want = 0.0
    for x, t in zip(logits.flatten().tolist(), onehot.flatten().tolist(), strict=True):
        p = 1 / (1 + math.exp(-x))
        if t:
            want += -0.25 * (1 - p) ** 2 * math.log(p)
        else:
            want += -0.75 * p**2 * math.log(1 - p)
    got = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_dynamic_mask_logits_is_a_per_image_1x1_conv() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 4, 5, 6, generator=g)
    kernels = torch.randn(4, 4, generator=g)
    image = torch.tensor([2, 0, 2, 1])
    got = dynamic_mask_logits(kernels, feats, image)
    for p in range(4):
        want = torch.nn.functional.conv2d(feats[image[p]][None], kernels[p].view(1, 4, 1, 1))[0, 0]
        assert torch.allclose(got[p], want, atol=1e-5)


def _setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, hf, wf = 2, 16, 16  # padded input 64 x 64
    outputs = SOLOv2Outputs(
        cate_preds=[torch.randn(b, 3, s, s, generator=g) for s in CFG.num_grids],
        kernel_preds=[torch.randn(b, 4, s, s, generator=g) for s in CFG.num_grids],
        mask_feats=torch.randn(b, 4, hf, wf, generator=g),
    )
    m0 = torch.zeros(2, 64, 64, dtype=torch.bool)
    m0[0, 8:40, 4:30] = True
    m0[1, 30:60, 36:60] = True
    m1 = torch.zeros(1, 64, 64, dtype=torch.bool)
    m1[0, 10:50, 10:50] = True
    targets = [
        InstanceTargets(
            m0, torch.tensor([0, 2]), torch.tensor([[4.0, 8, 30, 40], [36, 30, 60, 60]])
        ),
        InstanceTargets(m1, torch.tensor([1]), torch.tensor([[10.0, 10, 50, 50]])),
    ]
    return outputs, targets


def _direct(outputs: SOLOv2Outputs, targets: list[InstanceTargets]):
    """Per-pair Dice ``(P,)``, pair image ids ``(P,)`` and the focal loss, computed cell by cell."""
    a = assign_targets(targets, (16, 16), CFG)
    dice_terms, images, logits, labels = [], [], [], []
    for level, lv in enumerate(a.levels):
        s = CFG.num_grids[level]
        for b, cell, inst in zip(lv.pos_image, lv.pos_cell, lv.pos_instance, strict=True):
            kernel = outputs.kernel_preds[level][b, :, cell // s, cell % s]
            mask = torch.sigmoid(torch.einsum("e,ehw->hw", kernel, outputs.mask_feats[b]))
            dice_terms.append(dice_loss(mask[None], a.masks[b][inst][None])[0])
            images.append(int(b))
        logits.append(outputs.cate_preds[level].permute(0, 2, 3, 1).reshape(-1, 3))
        labels.append(lv.cate_labels.reshape(-1))
    lab = torch.cat(labels)
    onehot = torch.zeros(lab.numel(), 3)
    fg = lab < 3
    onehot[fg, lab[fg]] = 1
    focal = sigmoid_focal_loss(torch.cat(logits), onehot) / (int(fg.sum()) + 1)
    return torch.stack(dice_terms), torch.tensor(images), focal


def test_losses_match_direct_computation() -> None:
    outputs, targets = _setup()
    got = solov2_losses(outputs, targets, CFG)
    dice, _, focal = _direct(outputs, targets)
    assert len(dice) > 0
    assert set(got) == {"loss_ins", "loss_cate"}
    assert got["loss_ins"].item() == pytest.approx(3.0 * dice.mean().item(), rel=1e-5)
    assert got["loss_cate"].item() == pytest.approx(focal.item(), rel=1e-5)


def _with_aux(targets: list[InstanceTargets], slots) -> list[InstanceTargets]:
    out = []
    for t in targets:
        aux = torch.stack([t.masks if s == "main" else torch.zeros_like(t.masks) for s in slots], 1)
        out.append(InstanceTargets(t.masks, t.labels, t.boxes, aux_masks=aux))
    return out


def test_aux_equal_to_main_mask_scales_loss_ins_by_known_factor() -> None:
    outputs, targets = _setup()
    base = solov2_losses(outputs, targets, CFG)
    aux = solov2_losses(outputs, _with_aux(targets, ["main"] * 3), CFG)
    # Each of the 3 aux slots adds w * mean-dice(main) with w = 0.5 / 6: factor 1 + 3 w = 1.25.
    assert DEFAULT_AUX_WEIGHT == pytest.approx(0.5 / 6)
    assert aux["loss_ins"].item() == pytest.approx(1.25 * base["loss_ins"].item(), rel=1e-5)
    assert aux["loss_cate"].item() == pytest.approx(base["loss_cate"].item(), rel=1e-6)
    # An empty aux mask is skipped (SOLO ignores empty masks): 2 valid slots -> 1 + 2 w.
    partial = solov2_losses(outputs, _with_aux(targets, ["main", "empty", "main"]), CFG)
    factor = 1 + 2 * DEFAULT_AUX_WEIGHT
    assert partial["loss_ins"].item() == pytest.approx(factor * base["loss_ins"].item(), rel=1e-5)
    # Explicit weights are used as given.
    weighted = [
        InstanceTargets(
            t.masks, t.labels, t.boxes, t.aux_masks, torch.full((len(t.labels), 3), 0.5)
        )
        for t in _with_aux(targets, ["main"] * 3)
    ]
    got = solov2_losses(outputs, weighted, CFG)
    assert got["loss_ins"].item() == pytest.approx(2.5 * base["loss_ins"].item(), rel=1e-5)


def test_aux_disabled_leaves_loss_unchanged() -> None:
    outputs, targets = _setup()
    base = solov2_losses(outputs, targets, CFG)
    off = SOLOv2Config(**{**CFG.__dict__, "use_aux_masks": False})
    got = solov2_losses(outputs, _with_aux(targets, ["empty", "main", "main"]), off)
    assert got["loss_ins"].item() == pytest.approx(base["loss_ins"].item(), rel=1e-6)


def test_aux_on_only_some_images_of_the_batch() -> None:
    outputs, targets = _setup()
    base = solov2_losses(outputs, targets, CFG)
    mixed = [_with_aux(targets[:1], ["main"] * 3)[0], targets[1]]
    got = solov2_losses(outputs, mixed, CFG)
    # The aux mean runs over the pairs that have a (non-empty) aux mask: image 0's pairs only.
    dice, images, _ = _direct(outputs, targets)
    assert bool((images == 0).any()) and bool((images == 1).any())
    want = 3.0 * (dice.mean() + 3 * DEFAULT_AUX_WEIGHT * dice[images == 0].mean())
    assert got["loss_ins"].item() == pytest.approx(want.item(), rel=1e-5)
    assert base["loss_ins"].item() == pytest.approx(3.0 * dice.mean().item(), rel=1e-5)


def test_no_positives_gives_zero_mask_loss_with_gradients() -> None:
    outputs, _ = _setup()
    for p in outputs.kernel_preds + outputs.cate_preds + [outputs.mask_feats]:
        p.requires_grad_(True)
    empty = InstanceTargets(
        torch.zeros(0, 64, 64, dtype=torch.bool),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, 4),
    )
    got = solov2_losses(outputs, [empty, empty], CFG)
    assert got["loss_ins"].item() == 0.0
    (got["loss_ins"] + got["loss_cate"]).backward()
    assert outputs.kernel_preds[0].grad is not None
    assert outputs.mask_feats.grad is not None


def test_dynamic_mask_logits_with_mixed_dtypes_under_autocast() -> None:
    # Under CUDA autocast GroupNorm keeps float32 mask features while conv kernels are half
    # precision; emulated on CPU with bfloat16.
    feats = torch.randn(2, 4, 3, 3)
    kernels = torch.randn(3, 4).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dynamic_mask_logits(kernels, feats, torch.tensor([1, 0, 1]))
    want = torch.einsum("pe,pehw->phw", kernels.float(), feats[torch.tensor([1, 0, 1])])
    assert got.shape == (3, 3, 3)
    assert torch.allclose(got.float(), want, atol=0.1, rtol=0.05)
