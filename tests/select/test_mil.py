"""MIL bag scores, losses and selection against values written out by hand (docs/method.md §5, §8)."""

from __future__ import annotations

import math
import time

import pytest
import torch

from stages.select.mil import (
    PRM_ALPHA,
    PSM_LOSS_WEIGHT,
    prm_bag_scores,
    prm_loss,
    prm_negative_loss,
    prm_positive_loss,
    psm_bag_scores,
    psm_loss,
    selection_scores,
    top1,
)

LN3 = math.log(3.0)
EPS = 1e-6


def _psm_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """1 bag, 2 proposals, 2 classes.

    softmax over classes: m0 [0.5, 0.5], m1 [0.75, 0.25]
    softmax over proposals: class 0 [0.25, 0.75], class 1 [0.5, 0.5]
    bag = [0.5*0.25 + 0.75*0.75, 0.5*0.5 + 0.25*0.5] = [0.6875, 0.375]
    """
    cls = torch.tensor([[[0.0, 0.0], [LN3, 0.0]]], requires_grad=True)
    ins = torch.tensor([[[0.0, 0.0], [LN3, 0.0]]], requires_grad=True)
    return cls, ins


def test_constants() -> None:
    assert PSM_LOSS_WEIGHT == 0.25 and PRM_ALPHA == 0.25


def test_psm_bag_scores_by_hand() -> None:
    cls, ins = _psm_logits()
    bag, cls_prob, ins_prob = psm_bag_scores(cls, ins)
    assert torch.allclose(bag, torch.tensor([[0.6875, 0.375]]))
    assert torch.allclose(cls_prob, torch.tensor([[[0.5, 0.5], [0.75, 0.25]]]))
    assert torch.allclose(ins_prob, torch.tensor([[[0.25, 0.5], [0.75, 0.5]]]))


def test_psm_bag_scores_valid_mask_renormalises() -> None:
    cls, ins = _psm_logits()
    # a third, invalid proposal with big logits must not change anything
    cls3 = torch.cat([cls, torch.tensor([[[9.0, -9.0]]])], dim=1)
    ins3 = torch.cat([ins, torch.tensor([[[5.0, 5.0]]])], dim=1)
    valid = torch.tensor([[True, True, False]])
    bag, _, ins_prob = psm_bag_scores(cls3, ins3, valid)
    assert torch.allclose(bag, torch.tensor([[0.6875, 0.375]]))
    assert torch.allclose(ins_prob[0, 2], torch.zeros(2))
    assert torch.allclose(ins_prob.sum(dim=1), torch.ones(1, 2))
    # without the mask the third proposal dominates
    bag_all, _, _ = psm_bag_scores(cls3, ins3)
    assert bag_all[0, 0] > 0.9


def test_psm_bag_scores_paper_factor() -> None:
    cls, ins = _psm_logits()
    bag, _, _ = psm_bag_scores(cls, ins, proposal_factor=torch.tensor([[1.0, 0.5]]))
    assert torch.allclose(bag, torch.tensor([[0.125 + 0.5625 * 0.5, 0.25 + 0.125 * 0.5]]))


def test_psm_loss_by_hand_and_gradient() -> None:
    cls, ins = _psm_logits()
    bag, _, _ = psm_bag_scores(cls, ins)
    loss = psm_loss(bag, torch.tensor([0]))
    assert torch.allclose(loss, torch.tensor(-(math.log(0.6875) + math.log(1 - 0.375))))
    loss.backward()
    assert cls.grad is not None and ins.grad is not None
    assert cls.grad.abs().sum() > 0 and ins.grad.abs().sum() > 0
    # two bags: the mean over bags of the sum over classes
    bags = torch.tensor([[0.6875, 0.375, 0.1], [0.2, 0.9, 0.0]])
    expected = (
        -(math.log(0.6875) + math.log(0.625) + math.log(0.9))
        - (math.log(0.8) + math.log(0.9) + math.log(1.0))
    ) / 2
    assert torch.allclose(psm_loss(bags, torch.tensor([0, 1])), torch.tensor(expected))


def test_psm_loss_saturated_bag_is_finite() -> None:
    cls = torch.tensor([[[-200.0, 200.0], [-200.0, 200.0]]], requires_grad=True)
    ins = torch.zeros(1, 2, 2, requires_grad=True)
    bag, _, _ = psm_bag_scores(cls, ins)
    loss = psm_loss(bag, torch.tensor([0]))  # GT bag score 0 and background 1: both logs clamped
    assert torch.allclose(loss, torch.tensor(200.0))
    loss.backward()
    assert torch.isfinite(cls.grad).all() and torch.isfinite(ins.grad).all()


def test_empty_batches_give_zero_with_grad() -> None:
    cls = torch.zeros(0, 6, 81, requires_grad=True)
    bag, _, _ = psm_bag_scores(cls, cls)
    loss = psm_loss(bag, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    bag1, _, _ = prm_bag_scores(cls[..., :80], cls[..., :80])
    pos = prm_positive_loss(bag1, torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert pos.item() == 0.0 and pos.requires_grad
    neg_logits = torch.zeros(0, 80, requires_grad=True)
    neg = prm_negative_loss(neg_logits, torch.zeros(0), torch.tensor(0.5), num_bags=0)
    assert neg.item() == 0.0 and neg.requires_grad


def test_prm_bag_scores_use_sigmoid() -> None:
    # sigmoid over classes: m0 [0.5, 0.5], m1 [0.75, 0.75]; proposals as in _psm_logits
    cls = torch.tensor([[[0.0, 0.0], [LN3, LN3]]])
    ins = torch.tensor([[[0.0, 0.0], [LN3, 0.0]]])
    bag, cls_prob, _ = prm_bag_scores(cls, ins)
    assert torch.allclose(cls_prob, torch.tensor([[[0.5, 0.5], [0.75, 0.75]]]))
    assert torch.allclose(bag, torch.tensor([[0.125 + 0.5625, 0.25 + 0.375]]))
    valid = torch.tensor([[False, True]])
    bag_v, _, _ = prm_bag_scores(cls, ins, valid)
    assert torch.allclose(bag_v, torch.tensor([[0.75, 0.75]]))


def test_prm_positive_loss_by_hand_and_gradient() -> None:
    cls = torch.tensor([[[0.0, 0.0], [LN3, LN3]]], requires_grad=True)
    ins = torch.tensor([[[0.0, 0.0], [LN3, 0.0]]], requires_grad=True)
    bag, _, _ = prm_bag_scores(cls, ins)  # [0.6875, 0.625]
    beta = torch.tensor([0.5], requires_grad=True)
    loss = prm_positive_loss(bag, torch.tensor([0]), beta)
    fl = -((1 - 0.6875) ** 2) * math.log(0.6875 + EPS) - (0.625**2) * math.log(1 - 0.625 + EPS)
    assert torch.allclose(loss, torch.tensor(0.5 * fl))
    loss.backward()
    assert cls.grad.abs().sum() > 0 and ins.grad.abs().sum() > 0
    assert beta.grad is None  # beta is a constant
    # mean over bags with per-bag beta
    bags = torch.tensor([[0.6875, 0.625], [0.1, 0.8]])
    fl2 = -(0.1**2) * math.log(1 - 0.1 + EPS) - (0.2**2) * math.log(0.8 + EPS)
    got = prm_positive_loss(bags, torch.tensor([0, 1]), torch.tensor([0.5, 2.0]))
    assert torch.allclose(got, torch.tensor((0.5 * fl + 2.0 * fl2) / 2))


def test_prm_negative_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, LN3], [4.0, 4.0]], requires_grad=True)  # p = [0.5, 0.75]
    weights = torch.tensor([1.0, 0.0])
    per = -(0.25 * math.log(0.5 + EPS) + 0.5625 * math.log(0.25 + EPS))
    bags = prm_negative_loss(logits, weights, torch.tensor(0.8), num_bags=4)
    assert torch.allclose(bags, torch.tensor(per * 0.8 / 4))
    negs = prm_negative_loss(logits, weights, torch.tensor(0.8), 4, normalise="negatives")
    assert torch.allclose(negs, torch.tensor(per * 0.8 / 1))
    bags.backward()
    assert logits.grad[0].abs().sum() > 0
    assert torch.equal(logits.grad[1], torch.zeros(2))  # weight 0: no gradient
    with pytest.raises(ValueError):
        prm_negative_loss(logits, weights, torch.tensor(0.8), 4, normalise="all")


def test_prm_loss_combination() -> None:
    assert torch.allclose(prm_loss(torch.tensor(2.0), torch.tensor(4.0)), torch.tensor(3.5))
    assert torch.allclose(prm_loss(torch.tensor(2.0), torch.tensor(4.0), 0.5), torch.tensor(3.0))


def test_selection_scores_and_top1() -> None:
    cls, ins = _psm_logits()
    s0 = selection_scores(cls, ins, torch.tensor([0]))
    assert torch.allclose(s0, torch.tensor([[0.125, 0.5625]]))
    assert not s0.requires_grad
    s1 = selection_scores(cls, ins, torch.tensor([1]))
    assert torch.allclose(s1, torch.tensor([[0.25, 0.125]]))
    # the row sum is beta = the PSM bag score of the GT class
    bag, _, _ = psm_bag_scores(cls, ins)
    assert torch.allclose(s0.sum(1), bag[:, 0]) and torch.allclose(s1.sum(1), bag[:, 1])
    # softmax over classes in the PRM stage too: logits [ln3, ln3] give 0.5, not sigmoid's 0.75
    s_prm = selection_scores(torch.tensor([[[0.0, 0.0], [LN3, LN3]]]), ins, torch.tensor([0]))
    assert torch.allclose(s_prm, torch.tensor([[0.125, 0.375]]))
    assert top1(torch.cat([s0, s1])).tolist() == [1, 0]
    valid = torch.tensor([[True, False]])
    sv = selection_scores(cls, ins, torch.tensor([0]), valid)
    assert torch.allclose(sv, torch.tensor([[0.5, 0.0]]))
    sf = selection_scores(cls, ins, torch.tensor([0]), proposal_factor=torch.tensor([[1.0, 0.1]]))
    assert torch.allclose(sf, torch.tensor([[0.125, 0.05625]]))


def test_top1_ties_lowest_index() -> None:
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 2.0, 3.0]])
    assert top1(scores).tolist() == [0, 1, 0]
    assert top1(scores).dtype == torch.long


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_mil_dtypes(dtype: torch.dtype) -> None:
    cls, ins = _psm_logits()
    cls, ins = cls.detach().to(dtype), ins.detach().to(dtype)
    bag, _, _ = psm_bag_scores(cls, ins)
    loss = psm_loss(bag, torch.tensor([0]))
    assert loss.dtype == dtype
    ref = -(math.log(0.6875) + math.log(0.625))
    assert abs(loss.item() - ref) < 2e-2
    bag1, _, _ = prm_bag_scores(cls, ins)
    assert prm_positive_loss(bag1, torch.tensor([0]), torch.ones(1, dtype=dtype)).dtype == dtype
    assert selection_scores(cls, ins, torch.tensor([0])).dtype == dtype


def test_mil_5000_bags_fast() -> None:
    g = torch.Generator().manual_seed(0)
    n = 5000
    cls = torch.randn(n, 26, 80, generator=g, requires_grad=True)
    ins = torch.randn(n, 26, 80, generator=g, requires_grad=True)
    labels = torch.randint(0, 80, (n,), generator=g)
    neg = torch.randn(2000, 80, generator=g, requires_grad=True)
    elapsed = []
    for _ in range(3):  # best of 3: the test machine is shared
        start = time.perf_counter()
        beta = selection_scores(cls, ins, labels).sum(1)
        bag, _, _ = prm_bag_scores(cls, ins)
        loss = prm_loss(
            prm_positive_loss(bag, labels, beta),
            prm_negative_loss(neg, torch.ones(2000), beta.mean(), n),
        )
        idx = top1(selection_scores(cls, ins, labels))
        elapsed.append(time.perf_counter() - start)
    assert idx.shape == (n,) and torch.isfinite(loss)
    assert min(elapsed) < 1.0, elapsed


@pytest.mark.cuda
def test_mil_cuda_matches_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    cls, ins = torch.randn(7, 6, 81, generator=g), torch.randn(7, 6, 81, generator=g)
    labels = torch.randint(0, 80, (7,), generator=g)
    valid = torch.rand(7, 6, generator=g) > 0.2
    bag, _, _ = psm_bag_scores(cls, ins, valid)
    bag_c, _, _ = psm_bag_scores(cls.cuda(), ins.cuda(), valid.cuda())
    assert torch.allclose(bag_c.cpu(), bag, atol=1e-6)
    assert torch.allclose(psm_loss(bag_c, labels.cuda()).cpu(), psm_loss(bag, labels), atol=1e-5)
    b1, _, _ = prm_bag_scores(cls[..., :80], ins[..., :80])
    b1c, _, _ = prm_bag_scores(cls[..., :80].cuda(), ins[..., :80].cuda())
    beta = torch.rand(7, generator=g)
    pos = prm_positive_loss(b1c, labels.cuda(), beta.cuda()).cpu()
    assert torch.allclose(pos, prm_positive_loss(b1, labels, beta), atol=1e-5)
    neg = prm_negative_loss(cls[0, :, :80].cuda(), torch.ones(6).cuda(), beta.mean().cuda(), 7)
    assert torch.allclose(
        neg.cpu(), prm_negative_loss(cls[0, :, :80], torch.ones(6), beta.mean(), 7)
    )
    s = selection_scores(cls, ins, labels, valid)
    s_c = selection_scores(cls.cuda(), ins.cuda(), labels.cuda(), valid.cuda())
    assert torch.allclose(s_c.cpu(), s, atol=1e-6)
    assert torch.equal(top1(s_c).cpu(), top1(s))
