"""Selector prediction: output ranges, coordinates back in the original image, --no-prm, predict-only,
failed points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.common.boxes import box_iou
from stages.common.errors import TrainingError
from stages.common.selections import load_selections
from stages.propose.store import ProposalStore
from stages.select.run import run_select
from tests.select.synth import tiny_config, tiny_data


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    """A full-method run (PDG, PNPG, PRM, BMS) at HALF the image size (boxes must be mapped back)."""
    out = tmp_path_factory.mktemp("pred") / "run"
    run_select(tiny_config(synth, out, iters=3, short_side=32, max_size=48))
    return out


def test_selections_are_well_formed(synth, trained):
    sel = load_selections(trained)
    store = ProposalStore.open(synth.store)
    boxes = store.boxes()
    p, m = boxes.shape[:2]
    assert np.array_equal(sel.ann_id, store.objects.ann_id)
    assert sel.psm_scores.shape == sel.prm_scores.shape == (p, m)
    assert ((sel.psm_top1 >= 0) & (sel.psm_top1 < m)).all()
    assert ((sel.prm_top1 >= 0) & (sel.prm_top1 < m + 20)).all()
    assert ((sel.final_index >= 0) & (sel.final_index < m)).all()
    # PSM scores: GT-class softmax x softmax over the bag, so each row sums to at most 1
    assert (sel.psm_scores >= 0).all() and (sel.psm_scores.sum(1) <= 1 + 1e-5).all()
    assert np.array_equal(sel.psm_top1, sel.psm_scores.argmax(1))
    assert ((sel.bag_score >= 0) & (sel.bag_score <= 1)).all()
    # the final box is in ORIGINAL image coordinates (the network ran at half size)
    assert (sel.bms_box[:, 0] >= 0).all() and (sel.bms_box[:, 2] <= 96 + 1e-3).all()
    assert (sel.bms_box[:, 3] <= 64 + 1e-3).all()
    # final_index = the proposal with the highest IoU with the final box
    for i in range(p):
        iou = box_iou(sel.bms_box[i : i + 1], boxes[i])[0]
        assert sel.final_index[i] == int(np.argmax(iou))
    assert sel.meta["config"]["use_bms"] and sel.meta["failed_objects"] == []


def test_without_ppg_and_bms_the_box_is_the_picked_proposal(synth, tmp_path):
    out = tmp_path / "run"
    run_select(tiny_config(synth, out, iters=2, short_side=32, max_size=48, use_ppg=False,
                           use_npg=False, use_bms=False))  # fmt: skip
    sel = load_selections(out)
    boxes = ProposalStore.open(synth.store).boxes()
    picked = boxes[np.arange(len(sel)), sel.prm_top1]
    np.testing.assert_allclose(sel.bms_box, picked, atol=1e-3)  # 0.5x and back
    assert np.array_equal(sel.final_index, sel.prm_top1)
    assert np.array_equal(sel.prm_top1, sel.prm_scores.argmax(1))


def test_no_prm_selects_with_the_psm(synth, tmp_path):
    out = tmp_path / "run"
    run_select(tiny_config(synth, out, iters=2, use_prm=False, use_bms=False))
    sel = load_selections(out)
    assert np.array_equal(sel.prm_top1, sel.psm_top1)
    np.testing.assert_array_equal(sel.prm_scores, sel.psm_scores)
    np.testing.assert_allclose(sel.bag_score, sel.psm_scores.sum(1), rtol=1e-5)
    assert np.array_equal(sel.final_index, sel.psm_top1)
    assert not sel.meta["config"]["use_prm"] and not sel.meta["config"]["use_ppg"]


def test_predict_only_reproduces_the_training_run(synth, trained, tmp_path):
    again = tmp_path / "again"
    cfg = tiny_config(synth, again, short_side=32, max_size=48, predict_only=True,
                      checkpoint=str(trained / "selector.pt"))  # fmt: skip
    result = run_select(cfg)
    assert not (again / "metrics.jsonl").exists() and result.iterations == 3
    a, b = load_selections(trained), load_selections(again)
    for name in (
        "psm_top1",
        "prm_top1",
        "final_index",
        "bms_box",
        "psm_scores",
        "prm_scores",
        "bag_score",
    ):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # last.pt works as well
    cfg.checkpoint, cfg.out = str(trained / "checkpoints" / "last.pt"), str(tmp_path / "from_last")
    run_select(cfg)
    np.testing.assert_array_equal(
        load_selections(tmp_path / "from_last").final_index, a.final_index
    )


def test_predict_only_refuses_other_categories(trained, tmp_path):
    other = tiny_data(tmp_path / "other", num_classes=2)
    cfg = tiny_config(
        other, tmp_path / "run", predict_only=True, checkpoint=str(trained / "selector.pt")
    )
    with pytest.raises(TrainingError, match="other categories"):
        run_select(cfg)


def test_failed_points_are_left_out(tmp_path):
    data = tiny_data(tmp_path / "d")
    store = ProposalStore.open(data.store, mode="r+")
    row = int(store.objects.rows[1])
    store.group["proposals/status"][row : row + 1] = np.array([2], np.uint8)
    out = tmp_path / "run"
    result = run_select(tiny_config(data, out, iters=2))
    assert result.num_failed_objects == 1
    sel = load_selections(out)
    assert sel.final_index[1] == -1 and sel.psm_top1[1] == -1 and sel.prm_top1[1] == -1
    assert (sel.bms_box[1] == 0).all() and sel.bag_score[1] == 0
    assert sel.meta["failed_objects"] == [int(data.ann_id[1])]
    others = np.delete(np.arange(len(sel)), 1)
    assert (sel.final_index[others] >= 0).all()


def test_predict_batch_is_deterministic(synth, trained):
    from stages.propose.store import ProposalStore as PS
    from stages.select.data import SelectDataset, collate, load_store_arrays
    from stages.select.forward import MethodOptions
    from stages.select.predict import predict_batch
    from stages.select.run import load_selector

    store = PS.open(synth.store)
    net, _ = load_selector(trained / "selector.pt", store.attrs["categories"])
    net.eval()
    ds = SelectDataset(load_store_arrays(store), synth.images_dir, 32, 48)
    batch = collate([ds[(0, 0)], ds[(0, 3)]])
    a = predict_batch(net, batch, MethodOptions())
    b = predict_batch(net, batch, MethodOptions())
    for k in a:
        assert torch.equal(a[k], b[k])
    objects = torch.cat(batch["objects"]).numpy()
    np.testing.assert_array_equal(
        a["final_index"].numpy(), load_selections(trained).final_index[objects]
    )
