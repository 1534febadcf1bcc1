"""`sapnet propose` end to end with a fast fake backend: resume, sharding, refusal, bad input."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sapnet_cli.app import main
from stages.common.errors import InputError
from stages.propose.run import ProposeConfig, run_propose
from stages.propose.store import ProposalStore
from tests.conftest import FAKE_BACKEND, REPO, edit_json


def _cfg(points, images, store, **kw) -> ProposeConfig:
    base = dict(backend=FAKE_BACKEND, chunk_points=8, progress=False)
    base.update(kw)
    return ProposeConfig(annotations=points, images=images, store=store, **base)


def _snapshot(path: Path) -> dict[str, np.ndarray]:
    store = ProposalStore.open(path)
    return {
        "ann_id": store.objects.ann_id,
        "boxes": store.boxes(),
        "scores": store.scores(),
        "rle": store.rle().astype(str),
        "status": store.point_status(),
    }


def _assert_same(a: dict, b: dict) -> None:
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def _cli(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "sapnet_cli", "propose", *args],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _args(points, images, store, *extra) -> list[str]:
    return [
        "--annotations", str(points), "--images", str(images), "--store", str(store),
        "--backend", FAKE_BACKEND, "--chunk-points", "8", "--no-progress", *extra,
    ]  # fmt: skip


def test_single_run_then_rerun_does_nothing(coco4, points4, caplog):
    caplog.set_level(logging.INFO)
    store = coco4["root"] / "s.zarr"
    summary = run_propose(_cfg(points4, coco4["images"], store))
    assert summary.complete and summary.images_done == 4 and summary.points == 44
    snap = _snapshot(store)
    assert (snap["status"] == 1).all()
    again = run_propose(_cfg(points4, coco4["images"], store))
    assert again.images_done == 0 and again.images_skipped == 4 and again.complete
    assert "nothing to do" in caplog.text
    _assert_same(snap, _snapshot(store))


def test_complete_store_is_recognised_without_parsing_the_points(coco4, points4, monkeypatch):
    """The resume of a complete store reads a checksum and units/done, not the (COCO-sized) JSON."""
    import stages.propose.run as propose_run

    store = coco4["root"] / "s.zarr"
    run_propose(_cfg(points4, coco4["images"], store))
    snap = _snapshot(store)
    parsed: list[Path] = []
    real_load = propose_run.load_points

    def counting_load(path, **kw):
        parsed.append(Path(path))
        return real_load(path, **kw)

    monkeypatch.setattr(propose_run, "load_points", counting_load)
    again = run_propose(_cfg(points4, coco4["images"], store))
    assert (again.images_done, again.images_skipped, again.complete) == (0, 4, True)
    assert parsed == []
    _assert_same(snap, _snapshot(store))
    # any other input takes the full path (and is refused there as before)
    with pytest.raises(Exception, match="other inputs"):
        run_propose(_cfg(points4, coco4["images"], store, proposals_per_point=3))
    assert parsed == [points4]
    edit_json(points4, lambda d: d["annotations"].pop())
    with pytest.raises(Exception, match="other inputs"):
        run_propose(_cfg(points4, coco4["images"], store))
    assert len(parsed) == 2


def test_resume_after_sigkill_matches_uninterrupted_run(coco4, points4):
    reference = coco4["root"] / "ref.zarr"
    run_propose(_cfg(points4, coco4["images"], reference))
    store = coco4["root"] / "killed.zarr"
    proc = _cli(_args(points4, coco4["images"], store), env={"SAPNET_FAKE_SLEEP": "0.6"})
    deadline = time.time() + 60
    # Kill once at least one unit is done but not all.
    while time.time() < deadline:
        done_dir = store / "units" / "done" / "c"
        if done_dir.exists() and len(os.listdir(done_dir)) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = ProposalStore.open(store)
    assert 0 < partial.units_done().sum() < partial.num_units
    proc = _cli(_args(points4, coco4["images"], store))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "store complete" in out
    _assert_same(_snapshot(reference), _snapshot(store))


def test_two_concurrent_shards_equal_a_single_process(coco4, points4):
    reference = coco4["root"] / "ref.zarr"
    run_propose(_cfg(points4, coco4["images"], reference))
    store = coco4["root"] / "sharded.zarr"
    env = {"SAPNET_FAKE_SLEEP": "0.2"}
    procs = [_cli(_args(points4, coco4["images"], store, "--shard", f"{i}/2"), env) for i in (0, 1)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    _assert_same(_snapshot(reference), _snapshot(store))
    assert ProposalStore.open(store).is_complete()


def test_devices_start_one_worker_per_device(coco4, points4):
    reference = coco4["root"] / "ref.zarr"
    run_propose(_cfg(points4, coco4["images"], reference))
    store = coco4["root"] / "multi.zarr"
    summary = run_propose(_cfg(points4, coco4["images"], store, devices=["cpu", "cpu"]))
    assert summary.complete and summary.images_done == 4
    _assert_same(_snapshot(reference), _snapshot(store))


def test_devices_and_shard_together_are_refused(coco4, points4):
    store = coco4["root"] / "s.zarr"
    with pytest.raises(InputError, match="--devices cpu,cpu and --shard 0/2 contradict"):
        run_propose(_cfg(points4, coco4["images"], store, devices="cpu,cpu", shard="0/2"))
    assert not store.exists()


def test_store_from_other_inputs_is_refused_unless_overwrite(coco4, points4):
    store = coco4["root"] / "s.zarr"
    run_propose(_cfg(points4, coco4["images"], store))
    code = _main(_args(points4, coco4["images"], store, "--proposals-per-point", "3"))
    assert code == 3
    assert ProposalStore.open(store).num_proposals == 6  # untouched
    code = _main(
        _args(points4, coco4["images"], store, "--proposals-per-point", "3", "--overwrite")
    )
    assert code == 0
    assert ProposalStore.open(store).num_proposals == 3


def test_missing_image_fails_before_any_work_or_is_recorded_with_skip(coco4, points4, capsys):
    store = coco4["root"] / "s.zarr"
    victim = sorted(coco4["images"].iterdir())[0]
    victim.unlink()
    assert _main(_args(points4, coco4["images"], store)) == 2
    assert victim.name in capsys.readouterr().err
    assert not store.exists()
    assert _main(_args(points4, coco4["images"], store, "--on-error", "skip")) == 0
    s = ProposalStore.open(store)
    assert s.is_complete()
    errors = s.errors()
    assert errors and all(victim.name in msg for _, msg in errors)
    assert (s.image_status() == 2).sum() == 1


def test_undecodable_image_stops_but_keeps_finished_units(coco4, points4, capsys):
    doc = json.loads(points4.read_text())
    last = doc["images"][-1]["file_name"]
    (coco4["images"] / last).write_bytes(b"not an image")
    store = coco4["root"] / "s.zarr"
    assert _main(_args(points4, coco4["images"], store)) == 2
    assert "cannot be decoded" in capsys.readouterr().err
    s = ProposalStore.open(store)
    assert 0 < s.units_done().sum() < s.num_units  # earlier results intact
    assert s.pending_images() == [last]


def test_image_size_mismatch_is_an_input_error(coco4, points4, capsys):
    edit_json(points4, lambda d: d["images"][0].update(width=d["images"][0]["width"] + 1))
    store = coco4["root"] / "s.zarr"
    assert _main(_args(points4, coco4["images"], store)) == 2
    assert "but the annotations say" in capsys.readouterr().err


def test_unknown_backend_and_bad_shard(coco4, points4, capsys):
    store = coco4["root"] / "s.zarr"
    args = _args(points4, coco4["images"], store)
    args[args.index(FAKE_BACKEND)] = "nope"
    assert _main(args) == 2
    assert "unknown proposal backend" in capsys.readouterr().err
    assert _main(_args(points4, coco4["images"], store, "--shard", "2/2")) == 2


def _main(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(["propose", *args])
    return int(exc.value.code)
