"""Selector training: outputs, exact resume, NaN / out-of-memory handling, store and image validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import stages.select.forward as forward_mod
import stages.select.train as train_mod
from stages.common.errors import InputError, StoreError, TrainingError
from stages.common.selections import load_selections
from stages.select.run import run_select
from stages.select.train import lr_at
from tests.select.synth import tiny_config


class Interrupt(Exception):
    """Stands for a killed process in the resume tests."""


def _interrupt_at(monkeypatch, iteration: int) -> None:
    """Make the step with 0-based index ``iteration`` die (the previous steps complete)."""
    real = train_mod._step

    def step(*args, **kwargs):
        if args[6] == iteration:
            raise Interrupt(f"killed before iteration {iteration + 1}")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_step", step)


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a, b) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_training_writes_run_directory(synth, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(synth, out, iters=5, lr=0.01)
    result = run_select(cfg)
    assert result.iterations == 5 and result.num_images == 6
    assert (out / "selector.pt").is_file() and (out / "checkpoints" / "last.pt").is_file()
    assert (out / "config.yaml").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in lines] == [1, 2, 3, 4, 5]
    for r in lines:
        assert math.isfinite(r["loss"]) and r["images_per_s"] > 0
        assert r["loss"] == pytest.approx(r["loss_psm"] + r["loss_pos"] + r["loss_neg"], rel=1e-5)
        assert r["lr"] == pytest.approx(lr_at(r["iter"] - 1, 0.01, 5, cfg))
    # 6 images, batch 2: 3 iterations per epoch -> iteration 4 is in epoch 1
    assert [r["epoch"] for r in lines] == [0, 0, 0, 1, 1]
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert (ckpt["iteration"], ckpt["epoch"], ckpt["batch"]) == (5, 1, 2)
    sel = load_selections(out)
    assert len(sel) == len(synth.ann_id) and np.array_equal(sel.ann_id, synth.ann_id)


@pytest.mark.parametrize(
    ("interval", "kill_at"),
    [(0, 4), (2, 5)],  # resume from the epoch-end checkpoint (it 3) / from a mid-epoch one (it 4)
)
def test_resume_is_identical_to_an_uninterrupted_run(
    synth, tmp_path, monkeypatch, interval, kill_at
):
    opts = {"iters": 7, "lr": 0.01, "flip": 0.5, "checkpoint_interval": interval}
    full = tmp_path / "full"
    run_select(tiny_config(synth, full, **opts))

    part = tmp_path / "part"
    with monkeypatch.context() as m:
        _interrupt_at(m, kill_at)
        with pytest.raises(Interrupt):
            run_select(tiny_config(synth, part, **opts))
    saved = torch.load(part / "checkpoints" / "last.pt", weights_only=False)["iteration"]
    assert 0 < saved <= kill_at
    result = run_select(tiny_config(synth, part, resume=True, **opts))
    assert result.resumed_from == saved and result.iterations == 7

    _assert_same_weights(full / "selector.pt", part / "selector.pt")
    a, b = load_selections(full), load_selections(part)
    for name in ("psm_top1", "prm_top1", "final_index", "bms_box", "psm_scores", "prm_scores"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    # the metrics log holds each iteration once, with the same losses
    la = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in lb] == list(range(1, 8))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_resume_with_other_settings_is_refused(synth, tmp_path):
    out = tmp_path / "run"
    run_select(tiny_config(synth, out, iters=3))
    with pytest.raises(TrainingError, match="batch_size"):
        run_select(tiny_config(synth, out, iters=3, batch_size=3, resume=True))


def test_nan_loss_stops_with_the_iteration_and_keeps_the_checkpoint(synth, tmp_path, monkeypatch):
    real = forward_mod.psm_loss
    calls = {"n": 0}

    def poisoned(bag, labels, *args):
        calls["n"] += 1
        loss = real(bag, labels, *args)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(forward_mod, "psm_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="iteration 5") as err:
        run_select(tiny_config(synth, out, iters=8))
    assert "last good checkpoint" in str(err.value)
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["iteration"] == 3  # the end of epoch 0; nothing after the bad step was saved
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (out / "selector.pt").exists()


def test_out_of_memory_suggests_smaller_batch(synth, tmp_path, monkeypatch):
    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(forward_mod.SelectorLoss, "forward", oom)
    with pytest.raises(TrainingError, match="--batch-size"):
        run_select(tiny_config(synth, tmp_path / "run", iters=2))


def test_incomplete_store_lists_the_images(tmp_path):
    from stages.common.annotations import load_points
    from stages.propose.store import ProposalStore
    from tests.select.synth import tiny_data

    data = tiny_data(tmp_path / "d", num_images=3)
    points = load_points(data.annotations)
    store = ProposalStore.create(tmp_path / "empty.zarr", points, {"name": "none"}, 6, ["x"] * 6)
    data.store = store.path
    with pytest.raises(StoreError, match=r"img_0000\.png.*img_0002\.png"):
        run_select(tiny_config(data, tmp_path / "run"))


def test_images_dir_must_match_the_store(synth, tmp_path):
    import shutil

    from PIL import Image

    images = tmp_path / "images"
    shutil.copytree(synth.images_dir, images)
    (images / "img_0002.png").unlink()
    cfg = tiny_config(synth, tmp_path / "run", images=str(images))
    with pytest.raises(InputError, match=r"missing.*img_0002\.png"):
        run_select(cfg)
    Image.new("RGB", (50, 40)).save(images / "img_0002.png")
    with pytest.raises(InputError, match=r"img_0002\.png is 50x40, store says 96x64"):
        run_select(cfg)
    with pytest.raises(InputError, match="not a directory"):
        run_select(tiny_config(synth, tmp_path / "run", images=str(tmp_path / "nope")))
