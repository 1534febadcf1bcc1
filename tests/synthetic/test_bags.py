"""SAM-like bags for the synthetic ablation: large parts, slot layout, rewritten store and truth."""

from __future__ import annotations

import numpy as np
import pytest

from stages.common.boxes import box_iou
from stages.propose.store import ProposalStore
from stages.synthetic.ablation import proposal_gt_iou
from stages.synthetic.bags import large_parts, sam_like_bags
from stages.synthetic.generate import SyntheticConfig, make_synthetic


def test_large_parts_cut_the_box_at_the_fraction():
    masks = np.zeros((3, 6, 12), bool)
    masks[:, 1:5, 1:11] = True  # box x 1..11 (width 10), y 1..5 (height 4)
    boxes = np.tile(np.array([[1, 1, 11, 5]], np.float32), (3, 1))
    parts = large_parts(masks, boxes, 0.7, np.array([0, 1, 2]))
    # left: pixel centres c + 0.5 < 1 + 7 -> columns 1..7; right: c + 0.5 > 11 - 7 -> columns 4..10
    assert np.array_equal(np.nonzero(parts[0].any(0))[0], np.arange(1, 8))
    assert np.array_equal(np.nonzero(parts[1].any(0))[0], np.arange(4, 11))
    # top: r + 0.5 < 1 + 2.8 -> rows 1..3, all columns of the mask
    assert np.array_equal(np.nonzero(parts[2].any(1))[0], np.arange(1, 4))
    assert parts[2].sum() == 3 * 10
    assert not (parts & ~masks).any()


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    cfg = SyntheticConfig(
        num_images=4, height=64, width=96, object_size=(20, 28), objects_per_image=(2, 3),
        num_local=2, distractors=2, group_prob=0.7, seed=3,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("bags")
    before = make_synthetic(root, cfg)
    old_kinds = before.kinds.copy()
    return old_kinds, sam_like_bags(before)


def test_slot_layout_and_truth(bags):
    old_kinds, data = bags
    kinds = data.kinds
    grouped = (old_kinds == "group").any(axis=1)
    assert grouped.any() and (~grouped).any()
    first, last = np.sort(kinds[:, :3], axis=1), np.sort(kinds[:, 3:], axis=1)
    assert (first[grouped] == ["correct", "group", "local"]).all()
    assert (first[~grouped] == ["correct", "local", "local"]).all()
    assert (last == ["local", "offset", "offset"]).all()
    assert np.array_equal(data.correct_index, np.argmax(kinds == "correct", axis=1))
    with np.load(data.root / "truth.npz") as truth:
        assert np.array_equal(truth["kinds"], kinds)
        assert np.array_equal(truth["correct_index"], data.correct_index)


def test_rewritten_store_holds_the_planted_kinds(bags):
    _, data = bags
    store = ProposalStore.open(data.store)
    store.require_complete()
    iou = proposal_gt_iou(data)
    rows = np.arange(len(data.ann_id))
    assert np.allclose(iou[rows, data.correct_index], 1.0)
    boxes = store.boxes()
    # a group is the object plus an equal neighbour (IoU about 1/2); an offset is at most half on it
    assert ((iou[data.kinds == "group"] > 0.4) & (iou[data.kinds == "group"] < 0.65)).all()
    assert (iou[data.kinds == "offset"] < 0.5).all()
    assert ((iou[data.kinds == "local"] > 0.3) & (iou[data.kinds == "local"] < 0.9)).all()
    # large parts (first three slots) overlap the object's box by ~0.7: BMS rule (i) can repair them
    for i in rows:
        correct = boxes[i, data.correct_index[i]][None]
        for slot in range(3):
            if data.kinds[i, slot] == "local":
                assert 0.6 < box_iou(correct, boxes[i, slot][None])[0, 0] < 0.8
        half = 3 + int(np.argmax(data.kinds[i, 3:] == "local"))
        assert box_iou(correct, boxes[i, half][None])[0, 0] < 0.6
    assert (store.areas()[rows, data.correct_index] > 0).all()


def test_needs_both_halves(tmp_path):
    data = make_synthetic(tmp_path, SyntheticConfig(num_images=1, num_local=1))
    with pytest.raises(ValueError, match="num_local"):
        sam_like_bags(data)
