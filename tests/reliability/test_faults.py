"""``kill -9`` at chosen moments (killer.py), then the same command again: the rerun must give the result of
an uninterrupted run, and no moment may leave a half-written or mixed output, or a temporary file behind.

The default run kills points, propose and export-pseudo (cheap); select and train-seg trials train, so they
are marked slow (`make test-slow`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.propose.store import ProposalStore
from tests.conftest import FAKE_BACKEND
from tests.reliability.conftest import (
    SELECT_ARGS,
    run_cli,
    run_killed,
    temp_leftovers,
)

KILLED = -9

PROPOSE = ["propose", "--annotations", "points.json", "--images", "images", "--store", "new.zarr",
           "--backend", FAKE_BACKEND, "--chunk-points", "16", "--no-progress"]  # fmt: skip
EXPORT = ["export-pseudo", "--store", "store.zarr", "--selections", "sel", "--out", "pseudo.json",
          "--selector", "sapnet,top1"]  # fmt: skip


def _annotations(path: Path) -> list[dict]:
    return json.loads(path.read_text())["annotations"]


def _same_store(a: Path, b: Path) -> None:
    sa, sb = ProposalStore.open(a), ProposalStore.open(b)
    assert sa.is_complete() and sb.is_complete()
    np.testing.assert_array_equal(sa.rle(), sb.rle())
    np.testing.assert_array_equal(sa.boxes(), sb.boxes())
    np.testing.assert_array_equal(sa.scores(), sb.scores())
    np.testing.assert_array_equal(sa.group["images/status"][:], sb.group["images/status"][:])


# --------------------------------------------------------------------------- points
@pytest.mark.parametrize("moment", ["create:pts.json", "rename:pts.json"])
def test_points_killed_while_writing(work: Path, capfd, moment: str):
    args = ["points", "--annotations", "gt.json", "--out", "pts.json", "--no-progress"]
    proc = run_killed(moment, args, work)
    assert proc.returncode == KILLED, proc.stderr
    assert not Path("pts.json").exists()  # never a partial file
    res = run_cli(args, capfd)
    assert res.code == 0, res.text
    assert _annotations(Path("pts.json")) == _annotations(Path("points.json"))
    assert temp_leftovers(work) == []  # the killed writer's temporary is gone


# --------------------------------------------------------------------------- propose
@pytest.mark.parametrize(
    "moment",
    [
        "create:.new.zarr.",  # while the empty store is being built
        "create:units/done/c/:1",  # marking the first unit done
        "create:proposals/rle/c/:2",  # writing the second unit's masks
    ],
)
def test_propose_killed_then_rerun_gives_the_serial_store(work: Path, capfd, moment: str):
    proc = run_killed(moment, PROPOSE, work)
    assert proc.returncode == KILLED, proc.stderr
    res = run_cli(PROPOSE, capfd)
    assert res.code == 0, res.text
    _same_store(work / "new.zarr", work / "store.zarr")
    assert temp_leftovers(work) == []


# --------------------------------------------------------------------------- export-pseudo
@pytest.mark.parametrize(
    "moment",
    [
        "rename:pseudo.json",  # the first file is complete, not yet renamed
        "create:pseudo.top1.json",  # the first file is written, the second just created
        "rename:pseudo.top1.json",  # between the two renames (a window of microseconds)
    ],
)
def test_export_killed_leaves_the_old_set_then_rerun_matches(work: Path, capfd, moment: str):
    """Defect 16 under kill -9: the pseudo-label files are old together or new together, never mixed."""
    expected = {n: _annotations(work / n) for n in ("pseudo.json", "pseudo.top1.json")}
    for name in expected:
        (work / name).write_text('{"annotations": "old"}')
    proc = run_killed(moment, EXPORT, work)
    assert proc.returncode == KILLED, proc.stderr
    old = {n: json.loads((work / n).read_text())["annotations"] == "old" for n in expected}
    if moment != "rename:pseudo.top1.json":  # every temporary is written before the first rename
        assert old == {n: True for n in expected}, old
    # (a kill between the renames themselves can leave a mix; the rerun below repairs it)
    res = run_cli(EXPORT, capfd)
    assert res.code == 0, res.text
    assert {n: _annotations(work / n) for n in expected} == expected
    assert temp_leftovers(work) == []


# --------------------------------------------------------------------------- select (slow)
def _select(out: str, *extra: str) -> list[str]:
    return ["select", "--store", "store.zarr", "--images", "images", "--out", out,
            *SELECT_ARGS[:5], "4", *SELECT_ARGS[6:], *extra]  # fmt: skip


def _same_selections(a: Path, b: Path) -> None:
    from stages.common.selections import ARRAYS, load_selections

    sa, sb = load_selections(a), load_selections(b)
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(sa, name), getattr(sb, name), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment",
    [
        "rename:last.pt:2",  # the second checkpoint complete but not committed (the first is)
        "create:last.pt:2",  # the second checkpoint just created (0 bytes)
        "create:selections.npz",  # training done, writing the selections
    ],
)
def test_select_killed_then_resume_matches_the_uninterrupted_run(work: Path, capfd, moment: str):
    assert run_cli(_select("ref"), capfd).code == 0
    proc = run_killed(moment, _select("run"), work)
    assert proc.returncode == KILLED, proc.stderr
    res = run_cli([*_select("run"), "--resume"], capfd)
    assert res.code == 0, res.text
    _same_selections(work / "ref", work / "run")
    assert temp_leftovers(work) == []


# --------------------------------------------------------------------------- train-seg (slow)
SEG = ["train-seg", "--train", "pseudo.json", "--images", "images", "--out", "seg", "--iters", "4",
       "--ims-per-batch", "1", "--min-size", "64", "--max-size", "96", "--device", "cpu"]  # fmt: skip
SEG_OPTS = ["--opts", "SOLVER.CHECKPOINT_PERIOD", "2"]  # last: --opts takes every word after it


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment",
    [
        "create:model_final.pth",  # defect 1: the moment the final model file is created
        "rename:model_final.pth",  # the final model complete, not committed
        "rename:last_checkpoint:1",  # the first periodic checkpoint written, its tag not yet
    ],
)
def test_train_seg_killed_then_resume_finishes_with_a_valid_model(work: Path, capfd, moment: str):
    import torch

    proc = run_killed(moment, [*SEG, *SEG_OPTS], work)
    assert proc.returncode == KILLED, proc.stderr
    res = run_cli([*SEG, "--resume", *SEG_OPTS], capfd)
    assert res.code == 0, res.text
    assert "iterations 4/4" in res.text, res.text
    final = torch.load(work / "seg" / "model_final.pth", map_location="cpu", weights_only=False)
    assert "model" in final and final["iteration"] == 3  # detectron2 saves 0-based max_iter - 1
    assert temp_leftovers(work) == []
    shutil.rmtree(work / "seg")
