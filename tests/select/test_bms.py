"""BMS against hand-computed merges (docs/method.md §9)."""

from __future__ import annotations

import random
import time

import pytest
import torch

from stages.select.bms import box_mining, proposal_index_for_box


def _t(*boxes: list[float]) -> torch.Tensor:
    """One box -> (4,), several -> (n, 4), float64."""
    out = torch.tensor(boxes, dtype=torch.float64)
    return out[0] if len(boxes) == 1 else out


def _mine(selected: list[float], *cands: list[float], **kw) -> torch.Tensor:
    sel = torch.tensor([selected], dtype=torch.float64)
    return box_mining(sel, torch.tensor([cands], dtype=torch.float64), **kw)[0]


def test_rule_i_iou_weighted_merge() -> None:
    # area 100 -> 120, IoU 100/120 = 5/6 > 0.6: b = (g + u b) / (1 + u)
    out = _mine([0, 0, 10, 10], [0, 0, 10, 12])
    assert torch.allclose(out, _t([0, 0, 10, 122 / 11]))


def test_rule_ii_containment_merge() -> None:
    # area 100 -> 256, IoU 100/256 = 25/64 in (0.3, 0.6], g contains b: b = (u g + b) / (1 + u)
    out = _mine([10, 10, 20, 20], [9, 9, 25, 25])
    assert torch.allclose(out, _t([865 / 89, 865 / 89, 1905 / 89, 1905 / 89]))


def test_rule_ii_tolerance_of_two_pixels() -> None:
    # g.x1 = 11 > b.x1 = 10, but within the 2 px tolerance; IoU = 90/265
    u = 90 / 265
    out = _mine([10, 10, 20, 20], [11, 9, 26, 26])
    expected = [(u * 11 + 10) / (1 + u), (u * 9 + 10) / (1 + u)]
    expected += [(u * 26 + 20) / (1 + u), (u * 26 + 20) / (1 + u)]
    assert torch.allclose(out, _t(expected))
    # g.x1 - 2 == b.x1 exactly: the containment test is strict -> no merge (IoU 80/190)
    assert torch.equal(_mine([10, 10, 20, 20], [12, 5, 22, 22]), _t([10, 10, 20, 20]))
    # beyond the tolerance (IoU 0.42 > 0.3 but not contained): no merge
    assert torch.equal(_mine([10, 10, 20, 20], [12.1, 5, 22, 22]), _t([10, 10, 20, 20]))
    # a larger tolerance accepts it
    assert not torch.equal(
        _mine([10, 10, 20, 20], [12.1, 5, 22, 22], tolerance=3.0), _t([10, 10, 20, 20])
    )


def test_no_merge_smaller_equal_or_low_iou() -> None:
    b = [0, 0, 10, 10]
    assert torch.equal(_mine(b, [1, 1, 9, 9]), _t(b))  # smaller (IoU 0.64)
    assert torch.equal(_mine(b, [0, 1, 10, 11]), _t(b))  # same area: not larger
    assert torch.equal(_mine(b, [50, 50, 80, 80]), _t(b))  # larger, IoU 0
    assert torch.equal(_mine(b, [0, 0, 40, 40]), _t(b))  # contains, IoU 1/16 < 0.3


def test_sequential_merging_of_two_candidates() -> None:
    # g0 merges by rule (i) (u0 = 5/6), g1 (area 130 > 120) then merges with the UPDATED box;
    # g2 contains the box with IoU in (0.3, 0.6) but u <= best, so it is ignored.
    g0, g1, g2 = [0, 0, 10, 12], [0, 0, 10, 13], [0, 0, 10, 20]
    y1 = 122 / 11
    u1 = (10 * y1) / 130  # b1 inside g1
    assert u1 > 5 / 6
    y2 = (13 + u1 * y1) / (1 + u1)
    out = _mine([0, 0, 10, 10], g0, g1, g2)
    assert torch.allclose(out, _t([0, 0, 10, y2]))
    # the area threshold is the merged proposal's area (130), not the merged box's
    # (about 121.2): a proposal of area 125 that would match well is skipped
    out2 = _mine([0, 0, 10, 10], g0, g1, [0, 0, 10, 12.5])
    assert torch.allclose(out2, _t([0, 0, 10, y2]))
    # order matters: with g1 first, g0 (area 120 < 130) is skipped afterwards
    u = 100 / 130
    out3 = _mine([0, 0, 10, 10], g1, g0)
    assert torch.allclose(out3, _t([0, 0, 10, (13 + u * 10) / (1 + u)]))


def _naive(selected, cands, t1=0.6, t2=0.3, tol=2.0):
    def area(x):
        return (x[2] - x[0]) * (x[3] - x[1])

    def iou(a, c):
        iw = max(0.0, min(a[2], c[2]) - max(a[0], c[0]))
        ih = max(0.0, min(a[3], c[3]) - max(a[1], c[1]))
        inter = iw * ih
        return inter / max(area(a) + area(c) - inter, 1e-6)

    b = list(selected)
    a_ref, best = area(b), 0.0
    for g in cands:
        if not area(g) > a_ref:
            continue
        u = iou(b, g)
        inside = g[0] - tol < b[0] and g[1] - tol < b[1] and g[2] + tol > b[2] and g[3] + tol > b[3]
        if u > t1 and u > best:
            b = [(gi + u * bi) / (1 + u) for gi, bi in zip(g, b, strict=True)]
        elif u > t2 and inside and u > best:
            b = [(u * gi + bi) / (1 + u) for gi, bi in zip(g, b, strict=True)]
        else:
            continue
        best, a_ref = u, area(g)
    return b


def _random_scene(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = random.Random(seed)
    sel, cands = [], []
    for _ in range(n):
        x, y = rng.uniform(0, 100), rng.uniform(0, 100)
        w, h = rng.uniform(5, 60), rng.uniform(5, 60)
        sel.append([x, y, x + w, y + h])
        obj = []
        for _ in range(3):
            grow = [rng.uniform(-0.4, 0.15) * w, rng.uniform(-0.4, 0.15) * h]
            grow += [rng.uniform(-0.15, 0.4) * w, rng.uniform(-0.15, 0.4) * h]
            obj.append([x + grow[0], y + grow[1], x + w + grow[2], y + h + grow[3]])
        cands.append(obj)
    return _t(*sel), torch.tensor(cands, dtype=torch.float64)


def test_vectorised_batch_equals_per_object_and_naive() -> None:
    sel, cands = _random_scene(300, seed=0)
    out = box_mining(sel, cands)
    changed = (out != sel).any(dim=1)
    assert 30 < int(changed.sum()) < 300  # the scene exercises merges and non-merges
    for i in range(0, 300, 7):
        assert torch.allclose(out[i], box_mining(sel[i : i + 1], cands[i : i + 1])[0])
    for i in range(300):
        expected = _naive(sel[i].tolist(), cands[i].tolist())
        assert torch.allclose(out[i], _t(expected)), i
    # inputs untouched
    sel2, cands2 = _random_scene(300, seed=0)
    assert torch.equal(sel, sel2) and torch.equal(cands, cands2)


def test_box_mining_float32_and_5000_objects_fast() -> None:
    sel, cands = _random_scene(5000, seed=1)
    sel, cands = sel.float(), cands.float()
    elapsed = []
    for _ in range(3):
        start = time.perf_counter()
        out = box_mining(sel, cands)
        idx = proposal_index_for_box(out, cands)
        elapsed.append(time.perf_counter() - start)
    assert out.dtype == torch.float32 and idx.shape == (5000,)
    assert min(elapsed) < 0.5, elapsed


def test_proposal_index_for_box() -> None:
    box = _t([0, 0, 10, 10], [0, 0, 10, 10], [100, 100, 110, 110], [0, 0, 4, 4])
    proposals = torch.stack(
        [
            _t([0, 0, 5, 5], [0, 0, 10, 10], [0, 0, 10, 10]),  # IoU 0.25, 1, 1 -> 1 (tie)
            _t([0, 0, 10, 12], [0, 0, 10, 9], [1, 1, 11, 11]),  # 100/120, 0.9, 81/119 -> 1
            _t([0, 0, 5, 5], [1, 1, 5, 5], [2, 2, 5, 5]),  # all 0 -> 0
            _t([0, 0, 8, 8], [0, 0, 4, 4], [0, 0, 4, 4]),  # 0.25, 1, 1 -> 1
        ]
    )
    idx = proposal_index_for_box(box, proposals)
    assert idx.tolist() == [1, 1, 0, 1] and idx.dtype == torch.long


@pytest.mark.cuda
def test_bms_cuda_matches_cpu() -> None:
    sel, cands = _random_scene(200, seed=2)
    out = box_mining(sel.cuda(), cands.cuda())
    assert out.is_cuda and torch.allclose(out.cpu(), box_mining(sel, cands))
    idx = proposal_index_for_box(out, cands.cuda())
    assert torch.equal(idx.cpu(), proposal_index_for_box(box_mining(sel, cands), cands))
