"""Target assignment on hand-made cases and against a per-instance loop of the reference algorithm."""

from __future__ import annotations

import math

import pytest
import torch

from stages.seg.solov2.config import SOLOv2Config
from stages.seg.solov2.targets import (
    DEFAULT_AUX_WEIGHT,
    InstanceTargets,
    assign_targets,
    center_of_mass,
    downsample_masks,
)

FEAT = (64, 64)  # padded input 256 x 256
C = 80


def _box_of(mask: torch.Tensor) -> list[float]:
    rows = mask.any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).nonzero().flatten()
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _targets(masks: list[torch.Tensor], labels: list[int], **kw) -> InstanceTargets:
    m = torch.stack(masks) if masks else torch.zeros(0, 256, 256, dtype=torch.bool)
    boxes = torch.tensor([_box_of(x) if x.any() else [0.0] * 4 for x in masks]).reshape(-1, 4)
    return InstanceTargets(
        masks=m, labels=torch.tensor(labels, dtype=torch.long), boxes=boxes, **kw
    )


def _cells(assigned, level: int) -> set[tuple[int, int, int, int]]:
    """{(image, row, col, instance)} of the positive pairs of a level."""
    lv = assigned.levels[level]
    s = lv.cate_labels.shape[-1]
    return {
        (int(b), int(c) // s, int(c) % s, int(i))
        for b, c, i in zip(lv.pos_image, lv.pos_cell, lv.pos_instance, strict=True)
    }


def _rect(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(256, 256, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_one_object_on_two_overlapping_scale_ranges() -> None:
    # 60 x 40 box: sqrt(2400) = 49 is in (1, 96) and (48, 192) -> levels 0 and 1 only.
    # Centre (89.5, 119.5); region +- (6, 4) px.
    # Level 0 (S=40): rows floor(115.5*40/256)=18 .. floor(123.5*40/256)=19; cols 13 .. 14.
    # Level 1 (S=36): rows 16 .. 17; cols floor(83.5*36/256)=11 .. floor(95.5*36/256)=13.
    cfg = SOLOv2Config()
    a = assign_targets([_targets([_rect(100, 140, 60, 120)], [7])], FEAT, cfg)
    assert _cells(a, 0) == {(0, r, c, 0) for r in (18, 19) for c in (13, 14)}
    assert _cells(a, 1) == {(0, r, c, 0) for r in (16, 17) for c in (11, 12, 13)}
    for level in (2, 3, 4):
        assert _cells(a, level) == set()
    assert a.levels[0].pos_labels.tolist() == [7] * 4
    cate0 = a.levels[0].cate_labels
    assert cate0.shape == (1, 40, 40) and cate0.dtype == torch.long
    assert int((cate0 == 7).sum()) == 4 and int((cate0 == C).sum()) == 40 * 40 - 4
    assert a.num_pos_cells == 4 + 6


def test_centre_of_mass_not_box_centre_and_3x3_clamp() -> None:
    # An L shape: a vertical bar (rows 64..191, cols 64..79) and a bottom bar (rows 176..191,
    # cols 64..191). Box [64, 64, 192, 192] (centre 128, 128; scale 128 -> levels 1 and 2).
    # Centre of mass: cx = (2048 * 71.5 + 1792 * 135.5) / 3840 = 101.37,
    #                 cy = (2048 * 127.5 + 1792 * 183.5) / 3840 = 153.63.
    mask = _rect(64, 192, 64, 80) | _rect(176, 192, 64, 192)
    com = center_of_mass(mask[None])[0]
    assert com.tolist() == pytest.approx([101.3667, 153.6333], abs=1e-3)
    a = assign_targets([_targets([mask], [2])], FEAT, SOLOv2Config())
    # Level 1 (S=36): centre cell (21, 14) (box centre would be (18, 18)); the region
    # rows floor(140.83*36/256)=19 .. floor(166.43*36/256)=23 and cols 12 .. 16 is clamped to 3x3.
    assert _cells(a, 1) == {(0, r, c, 0) for r in (20, 21, 22) for c in (13, 14, 15)}
    assert a.levels[1].cate_labels[0, 18, 18] == C
    # Level 2 (S=24): centre (14, 9); rows floor(140.83*24/256)=13 .. 15, cols 8 .. 10.
    assert _cells(a, 2) == {(0, r, c, 0) for r in (13, 14, 15) for c in (8, 9, 10)}


def test_overlapping_regions_last_instance_labels_the_cell_and_both_keep_masks() -> None:
    big = _rect(96, 160, 96, 160)  # 64 x 64, centre (127.5, 127.5)
    small = _rect(112, 144, 112, 144)  # 32 x 32, same centre
    a = assign_targets([_targets([big, small], [1, 2])], FEAT, SOLOv2Config())
    cells = _cells(a, 0)
    # Level 0 (S=40): big: rows/cols floor((127.5 -+ 6.4) * 40/256) = 18 .. 20 (centre 19);
    # small: +- 3.2 px -> 19 .. 20.
    assert {(r, c) for _, r, c, i in cells if i == 0} == {
        (r, c) for r in (18, 19, 20) for c in (18, 19, 20)
    }
    assert {(r, c) for _, r, c, i in cells if i == 1} == {
        (r, c) for r in (19, 20) for c in (19, 20)
    }
    cate = a.levels[0].cate_labels[0]
    assert cate[19, 19] == 2 and cate[18, 18] == 1
    assert int((cate != C).sum()) == 9  # distinct cells
    assert a.levels[0].pos_cell.numel() == 9 + 4  # pairs


def test_batch_empty_masks_and_images_without_objects() -> None:
    cfg = SOLOv2Config()
    empty = torch.zeros(256, 256, dtype=torch.bool)
    t0 = InstanceTargets(
        masks=empty[None], labels=torch.tensor([3]), boxes=torch.tensor([[10.0, 10, 50, 50]])
    )
    t1 = _targets([], [])
    t2 = _targets([_rect(100, 140, 60, 120)], [4])
    a = assign_targets([t0, t1, t2], FEAT, cfg)
    assert _cells(a, 0) == {(2, r, c, 0) for r in (18, 19) for c in (13, 14)}
    assert all(int((lv.cate_labels[:2] != C).sum()) == 0 for lv in a.levels)
    assert [m.shape for m in a.masks] == [(1, 64, 64), (0, 64, 64), (1, 64, 64)]


def test_downsample_masks_is_block_exact_and_pads() -> None:
    m = torch.zeros(1, 250, 250, dtype=torch.bool)  # unpadded: zero-padded to 256
    m[0, 100:140, 60:120] = True
    small = downsample_masks(m, FEAT)
    assert small.shape == (1, 64, 64) and small.dtype == torch.bool
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[25:35, 15:30] = True
    assert torch.equal(small[0], expected)


def test_aux_masks_are_downsampled_with_default_weights_and_validity() -> None:
    main = _rect(100, 140, 60, 120)
    aux = torch.stack([main, torch.zeros_like(main), _rect(0, 8, 0, 8)])[None]
    t = _targets([main], [0], aux_masks=aux)
    a = assign_targets([t], FEAT, SOLOv2Config())
    assert a.aux_masks[0].shape == (1, 3, 64, 64)
    assert torch.equal(a.aux_masks[0][0, 0], a.masks[0][0])
    assert a.aux_valid[0].tolist() == [[True, False, True]]
    assert a.aux_weights[0][0].tolist() == pytest.approx([DEFAULT_AUX_WEIGHT] * 3)


def _reference_pairs(targets: list[InstanceTargets], cfg: SOLOv2Config, feat=FEAT):
    """Per-instance loops over levels and cells, as in the reference implementations."""
    h, w = 4 * feat[0], 4 * feat[1]
    pairs, labels = set(), {}
    for b, t in enumerate(targets):
        for i in range(t.labels.shape[0]):
            m = t.masks[i]
            if not m.any():
                continue
            ys, xs = m.nonzero(as_tuple=True)
            cy, cx = ys.double().mean().item(), xs.double().mean().item()
            x1, y1, x2, y2 = t.boxes[i].tolist()
            scale = math.sqrt((x2 - x1) * (y2 - y1))
            hw, hh = 0.5 * (x2 - x1) * cfg.sigma, 0.5 * (y2 - y1) * cfg.sigma
            for level, (s, (lo, hi)) in enumerate(
                zip(cfg.num_grids, cfg.scale_ranges, strict=True)
            ):
                if not lo <= scale <= hi:
                    continue
                row, col = math.floor(cy / h * s), math.floor(cx / w * s)
                top = max(max(0, math.floor((cy - hh) / h * s)), row - 1)
                down = min(min(s - 1, math.floor((cy + hh) / h * s)), row + 1)
                left = max(max(0, math.floor((cx - hw) / w * s)), col - 1)
                right = min(min(s - 1, math.floor((cx + hw) / w * s)), col + 1)
                for r in range(top, down + 1):
                    for c in range(left, right + 1):
                        pairs.add((level, b, r, c, i))
                        labels[(level, b, r, c)] = int(t.labels[i])  # later instances overwrite
    return pairs, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_loops_on_random_instances(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    cfg = SOLOv2Config(num_classes=5)
    batch = []
    for _ in range(2):
        masks, labels = [], []
        for _ in range(6):
            y0, x0 = torch.randint(0, 200, (2,), generator=g).tolist()
            hh, ww = torch.randint(2, 200, (2,), generator=g).tolist()
            m = _rect(y0, y0 + hh, x0, x0 + ww)
            m &= torch.rand(256, 256, generator=g) > 0.3  # ragged, centre of mass != box centre
            masks.append(m)
            labels.append(int(torch.randint(0, 5, (1,), generator=g)))
        batch.append(_targets(masks, labels))
    a = assign_targets(batch, FEAT, cfg)
    want_pairs, want_labels = _reference_pairs(batch, cfg)
    got = {(level, *p) for level in range(5) for p in _cells(a, level)}
    assert got == want_pairs
    for level, lv in enumerate(a.levels):
        fg = (lv.cate_labels != 5).nonzero().tolist()
        assert {(level, b, r, c) for b, r, c in fg} == {k for k in want_labels if k[0] == level}
        for b, r, c in fg:
            assert int(lv.cate_labels[b, r, c]) == want_labels[(level, b, r, c)]


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        InstanceTargets(
            masks=torch.zeros(2, 8, 8, dtype=torch.bool),
            labels=torch.zeros(1, dtype=torch.long),
            boxes=torch.zeros(2, 4),
        )
    with pytest.raises(ValueError):
        assign_targets([], FEAT, SOLOv2Config())
