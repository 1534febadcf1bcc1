"""`propose --devices`: input errors keep their exit code and message, and workers die with their parent.

Issue 10, defects 5 and 6: with ``--devices`` a truncated image, a NaN point or an unavailable device gave exit 1
and a traceback (without ``--devices``: exit 2/5 and one clear line), and after ``kill -9`` of the parent the
spawned workers kept running and finished the store on their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stages.propose.store import ProposalStore
from tests.conftest import FAKE_BACKEND, REPO, edit_json


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _propose(
    points: Path, images: Path, store: Path, *extra: str, env: dict | None = None, bg: bool = False
) -> subprocess.Popen:
    """``sapnet propose`` in a subprocess; ``bg``: as a shell starts a background job (``cmd &``), whose
    SIGINT is ignored (so a SIGINT sent to the workers, torch's own parent-death signal, does nothing)."""
    args = [
        sys.executable, "-m", "sapnet_cli", "propose", "--annotations", str(points),
        "--images", str(images), "--store", str(store), "--backend", FAKE_BACKEND,
        "--chunk-points", "8", "--no-progress", *extra,
    ]  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        args, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_ignore_sigint if bg else None,
    )  # fmt: skip


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def _assert_clean_error(rc: int, text: str, code: int, *needles: str) -> None:
    assert rc == code, text
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text


def _truncate_first_image(coco4: dict[str, Path]) -> str:
    name = sorted(p.name for p in coco4["images"].iterdir())[0]
    path = coco4["images"] / name
    path.write_bytes(path.read_bytes()[:2000])
    return name


def test_truncated_image_same_exit_code_with_and_without_devices(coco4, points4):
    name = _truncate_first_image(coco4)
    for extra in ((), ("--devices", "cpu,cpu")):
        store = coco4["root"] / f"s{len(extra)}.zarr"
        rc, text = _finish(_propose(points4, coco4["images"], store, *extra))
        _assert_clean_error(rc, text, 2, name)


def test_nan_point_same_exit_code_with_and_without_devices(coco4, points4):
    edit_json(points4, lambda doc: doc["annotations"][3].update(point=[float("nan"), 4.0]))
    for extra in ((), ("--devices", "cpu,cpu")):
        store = coco4["root"] / f"s{len(extra)}.zarr"
        rc, text = _finish(_propose(points4, coco4["images"], store, *extra))
        _assert_clean_error(rc, text, 2, str(points4.name))
        assert not store.exists()


@pytest.mark.skipif(
    torch.cuda.device_count() >= 9, reason="needs a machine without cuda:7 and cuda:8"
)
def test_unavailable_devices_same_exit_code_as_device(coco4, points4):
    store = coco4["root"] / "s.zarr"
    rc_one, text_one = _finish(_propose(points4, coco4["images"], store, "--device", "cuda:7"))
    rc_many, text_many = _finish(
        _propose(points4, coco4["images"], store, "--devices", "cuda:7,cuda:8")
    )
    _assert_clean_error(rc_one, text_one, 5, "cuda:7")
    _assert_clean_error(rc_many, text_many, 5, "cuda:7")
    assert not store.exists()


def _children(pid: int) -> set[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    kids = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids |= {int(k) for k in task.read_text().split()}
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_stop_when_the_parent_is_killed(coco4, points4):
    store = coco4["root"] / "s.zarr"
    # 4 images at 1.5 s each over 2 workers: about 3 s of work once the workers run.
    proc = _propose(points4, coco4["images"], store, "--devices", "cpu,cpu",
                    env={"SAPNET_FAKE_SLEEP": "1.5"}, bg=True)  # fmt: skip
    deadline = time.time() + 90
    workers: set[int] = set()
    while time.time() < deadline and not (store / "zarr.json").is_file():
        time.sleep(0.05)
    assert (store / "zarr.json").is_file(), "the workers never created the store"
    workers = {k for k in _children(proc.pid) if "spawn_main" in _cmdline(k)}
    assert len(workers) == 2, workers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone_by = time.time() + 10
    while time.time() < gone_by and any(_alive(w) for w in workers):
        time.sleep(0.1)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:  # never leave them behind, whatever the outcome
        os.kill(w, signal.SIGKILL)
    assert not survivors, "workers outlived the killed parent"
    time.sleep(4)  # more than the work left: a surviving worker would have finished the store
    assert not ProposalStore.open(store).is_complete()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
