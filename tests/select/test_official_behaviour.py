"""The official code's behaviour (defaults) and the cleaner variants (options), hand-computed cases:
the score-weighted top-1 box before BMS, the PPG base match (strict < 1 px, else proposal 5), the head's
Normal(0, 0.01) init and the stage-0 loss normalised by the non-empty bags."""

from __future__ import annotations

import math

import pytest
import torch

from stages.select.bms import box_mining, proposal_index_for_box, weighted_top1_box
from stages.select.config import SelectConfig
from stages.select.forward import (
    MethodOptions,
    PSMOutput,
    ppg_base,
    top1_box_for_bms,
    valid_bags,
)
from stages.select.mil import psm_loss
from stages.select.model import SelectorNet

PICK = [100.0, 100.0, 200.0, 200.0]
LARGER = [95.0, 95.0, 210.0, 210.0]


def _bms_case(score: float, mode: str) -> tuple[list[float], int]:
    """The issue's case: proposal 0 (the pick) and the larger proposal 1 (IoU 10000 / 13225)."""
    props = torch.tensor([[PICK, LARGER, [0.0, 0.0, 1.0, 1.0]]])
    size = torch.tensor([1000.0])
    start = top1_box_for_bms(props[:, 0], torch.tensor([score]), size, size, mode)
    box = box_mining(start, props)
    return box[0].tolist(), int(proposal_index_for_box(box, props)[0])


def test_weighted_top1_box_high_score_merges_like_the_exact_box() -> None:
    # s = 0.5: 0.5 + 1e-8 rounds to 0.5 in float32, the weight is exactly 1, the pick is not "larger"
    # than itself; proposal 1 merges by rule (i): (g + u b) / (1 + u), u = 10000 / 13225
    u = 10000.0 / 13225.0
    lo, hi = (95.0 + u * 100.0) / (1 + u), (210.0 + u * 200.0) / (1 + u)
    assert lo == pytest.approx(97.15, abs=0.01) and hi == pytest.approx(205.69, abs=0.01)
    for mode in ("weighted", "exact"):
        box, index = _bms_case(0.5, mode)
        assert box == pytest.approx([lo, lo, hi, hi], abs=1e-3)
        assert index == 1


def test_weighted_top1_box_low_score_keeps_the_pick() -> None:
    # s = 0.1: the weight 0.1 / (0.1 + 1e-8) is 1 - 2^-24 in float32, so the box shrinks by an ulp; the
    # pick itself is then a larger candidate with IoU ~1 and merges first, blocking proposal 1
    shrunk = weighted_top1_box(torch.tensor([PICK]), torch.tensor([0.1]))[0]
    assert (shrunk < torch.tensor(PICK)).all()
    assert (torch.tensor(PICK) - shrunk).max() < 1e-4
    box, index = _bms_case(0.1, "weighted")
    assert box == pytest.approx(PICK, abs=1e-4) and index == 0
    # the exact variant merges with proposal 1 whatever the score
    box, index = _bms_case(0.1, "exact")
    assert index == 1 and box[0] == pytest.approx(97.15, abs=0.01)


def _psm(boxes: torch.Tensor, top: int, bms_in: torch.Tensor) -> PSMOutput:
    n, m = boxes.shape[:2]
    z = torch.zeros(n, m)
    return PSMOutput(
        boxes=boxes, image_ids=torch.zeros(n, dtype=torch.long), labels=torch.zeros(n, dtype=torch.long),
        embed=torch.zeros(n, m, 1), cls=z, ins=z, s_dis=torch.arange(m, dtype=torch.float32)[None] / 10,
        factor=None, scores=z, top=torch.full((n,), top), box=boxes[:, top], beta=z.sum(1),
        bms_in=bms_in,
    )  # fmt: skip


def test_ppg_base_code_matches_strictly_within_one_pixel_else_proposal_5() -> None:
    base = [10.0, 10.0, 50.0, 50.0]
    far = [[200.0 + 10 * k, 0.0, 300.0 + 10 * k, 90.0] for k in range(5)]
    opts = MethodOptions(ppg_base="code", use_bms=False)
    # proposal 2 lies 0.5 px from the stage-0 box on every coordinate: matched
    boxes = torch.tensor([[far[0], far[1], [10.5, 9.5, 50.5, 49.5], far[2], far[3], far[4]]])
    box, s = ppg_base(_psm(boxes, 2, torch.tensor([base])), opts)
    assert box[0].tolist() == [10.5, 9.5, 50.5, 49.5] and s.item() == pytest.approx(0.2)
    # exactly 1 px away: no match (the code's test is |d| < 1), so the fallback proposal 5
    boxes = torch.tensor([[far[0], far[1], [11.0, 10.0, 50.0, 50.0], far[2], far[3], far[4]]])
    box, s = ppg_base(_psm(boxes, 2, torch.tensor([base])), opts)
    assert box[0].tolist() == far[4] and s.item() == pytest.approx(0.5)
    # the "psm" variant uses box_psm, the top-1 proposal, and its S
    box, s = ppg_base(_psm(boxes, 2, torch.tensor([base])), MethodOptions(ppg_base="psm"))
    assert box[0].tolist() == [11.0, 10.0, 50.0, 50.0] and s.item() == pytest.approx(0.2)


def test_ppg_base_code_uses_the_stage0_bms_box() -> None:
    # pick 0 at s = 0.5 merges with proposal 1 (the case): the merged box matches nothing -> 5
    props = torch.tensor([[PICK, LARGER, [0.0, 0.0, 1.0, 1.0], PICK, PICK, [7.0, 7.0, 9.0, 9.0]]])
    size = torch.tensor([1000.0])
    opts = MethodOptions(ppg_base="code", use_bms=True)
    hi = top1_box_for_bms(props[:, 0], torch.tensor([0.5]), size, size, "weighted")
    assert ppg_base(_psm(props, 0, hi), opts)[0][0].tolist() == [7.0, 7.0, 9.0, 9.0]
    # at s = 0.1 the official BMS keeps the pick, which matches proposal 0 itself
    lo = top1_box_for_bms(props[:, 0], torch.tensor([0.1]), size, size, "weighted")
    assert ppg_base(_psm(props, 0, lo), opts)[0][0].tolist() == PICK


def test_defaults_are_the_official_behaviour() -> None:
    cfg = SelectConfig()
    assert (cfg.top1_box, cfg.ppg_base, cfg.head_init, cfg.psm_normalise) == (
        "weighted", "code", "normal", "valid-bags",
    )  # fmt: skip
    opts = MethodOptions()
    assert (opts.top1_box, opts.ppg_base, opts.psm_normalise) == ("weighted", "code", "valid-bags")


def test_head_init_normal_on_every_linear_and_xavier_variant() -> None:
    torch.manual_seed(0)
    net = SelectorNet(3, "resnet18", fpn_channels=32, fc_dim=256, head_init="normal")
    for layer in (net.fc1, net.fc2, net.fc_cls0, net.fc_ins0, net.fc_cls1, net.fc_ins1):
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert net.fc1.bias.abs().max() == 0 and net.fc2.bias.abs().max() == 0
    prior = -math.log(0.99 / 0.01)
    assert torch.allclose(net.fc_cls0.bias, torch.full_like(net.fc_cls0.bias, prior))
    xav = SelectorNet(3, "resnet18", fpn_channels=32, fc_dim=256, head_init="xavier")
    fan_in, fan_out = 32 * 49, 256
    bound = math.sqrt(6.0 / (fan_in + fan_out))  # Xavier uniform: std = bound / sqrt(3)
    assert xav.fc1.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert xav.fc_cls0.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_psm_loss_normalised_by_non_empty_bags() -> None:
    bags = torch.tensor([[0.6875, 0.375, 0.1], [0.2, 0.9, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    first = -(math.log(0.6875) + math.log(0.625) + math.log(0.9))
    second = -(math.log(0.8) + math.log(0.9) + math.log(1.0))
    valid = torch.tensor([True, True, False])
    # official: the empty third bag weighs 0 and the sum is divided by the 2 non-empty bags
    assert psm_loss(bags, labels, valid).item() == pytest.approx((first + second) / 2, rel=1e-5)
    # all-bags: the empty bag's clamped log (100) counts and the sum is divided by 3
    all_bags = psm_loss(bags, labels, valid, normalise="all-bags").item()
    assert all_bags == pytest.approx((first + second + 100.0) / 3, rel=1e-5)
    # no valid bag at all: 0, still connected to the graph
    x = bags.clone().requires_grad_(True)
    zero = psm_loss(x, labels, torch.zeros(3, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad


def test_valid_bags_need_one_proposal_of_positive_area() -> None:
    boxes = torch.tensor(
        [
            [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 4.0, 3.0]],
            [[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 9.0]],  # zero width
        ]
    )
    assert valid_bags(boxes).tolist() == [True, False]
