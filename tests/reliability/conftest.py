"""Fixtures of the reliability suite: a finished tiny pipeline to copy and break, the CLI runner, mounts.

``chain`` runs points -> propose (fake backend) -> select (2 iterations) -> export-pseudo once per session,
in-process; each test works on its own copy (``work``). ``run_cli`` calls the real CLI entry point in-process
and returns its exit code and output; ``tmpfs`` / ``readonly_dir`` give a small file system to fill or a
read-only one (skipped, with the reason, where the machine does not allow it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import COCO4, FAKE_BACKEND, REPO

SELECT_ARGS = [
    "--backbone", "resnet18", "--weights", "none", "--iters", "2", "--batch-size", "2",
    "--short-side", "96", "--max-size", "128", "--device", "cpu", "--num-workers", "0",
]  # fmt: skip


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def run_cli(args: list[str], capfd: pytest.CaptureFixture[str]) -> CliResult:
    """Run ``sapnet ARGS`` in this process; returns the exit code and what it printed."""
    from sapnet_cli.app import main

    capfd.readouterr()
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capfd.readouterr()
    return CliResult(code, captured.out, captured.err)


def run_killed(moment: str, args: list[str], cwd: Path, env: dict[str, str] | None = None):
    """Run ``sapnet ARGS`` in a subprocess that SIGKILLs itself at ``moment`` (see killer.py)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    cmd = [sys.executable, "-m", "tests.reliability.killer", moment, "--", *map(str, args)]
    return subprocess.run(
        cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=900, check=False
    )


def tree_hash(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (names containing a ``skip`` part left out)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(s in rel for s in skip):
            continue
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def temp_leftovers(root: Path) -> list[str]:
    """Temporary files or folders of sapnet's writers under ``root``."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob(".*")
        if p.name.endswith((".tmp", ".trash")) or ".tmp-" in p.name or ".trash-" in p.name
    )


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished pipeline on the 4-image fixture (made once per session; copy it before changing it)."""
    from sapnet_cli.app import main

    root = tmp_path_factory.mktemp("chain")
    shutil.copytree(COCO4 / "images", root / "images")
    shutil.copy(COCO4 / "annotations.json", root / "gt.json")
    old = os.getcwd()
    mask = os.umask(0o022)
    os.chdir(root)
    try:
        for args in (
            ["points", "--annotations", "gt.json", "--out", "points.json", "--no-progress"],
            ["propose", "--annotations", "points.json", "--images", "images", "--store",
             "store.zarr", "--backend", FAKE_BACKEND, "--chunk-points", "16", "--no-progress"],
            ["select", "--store", "store.zarr", "--images", "images", "--out", "sel", *SELECT_ARGS],
            ["export-pseudo", "--store", "store.zarr", "--selections", "sel", "--out",
             "pseudo.json", "--selector", "sapnet,top1", "--gt", "gt.json", "--report", "report"],
        ):  # fmt: skip
            with pytest.raises(SystemExit) as exc:
                main(args)
            assert exc.value.code == 0, args
    finally:
        os.chdir(old)
        os.umask(mask)
    return root


@pytest.fixture
def work(chain: Path, tmp_path: Path) -> Path:
    """A private copy of ``chain``; the current directory for the test."""
    dst = tmp_path / "w"
    shutil.copytree(chain, dst, symlinks=True)
    old = os.getcwd()
    os.chdir(dst)
    yield dst
    os.chdir(old)
    # each copy holds the selector's checkpoints (~300 MB): drop it at once, or ~90 tests fill the disk
    shutil.rmtree(dst, ignore_errors=True)


def _mount(args: list[str]) -> str | None:
    """Run mount/umount; the error text, or None on success."""
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return None if res.returncode == 0 else (res.stderr.strip() or f"exit {res.returncode}")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[callable]:
    """``make(size_kb) -> Path``: a fresh tmpfs of that size (skips when mounting is not allowed)."""
    mounts: list[Path] = []

    def make(size_kb: int, name: str = "fs") -> Path:
        point = tmp_path / name
        point.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command: disk-full tests need a small tmpfs")
        err = _mount(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0777", "tmpfs", str(point)]
        )
        if err is not None:
            pytest.skip(f"cannot mount a small tmpfs here ({err}); disk-full tests need root")
        mounts.append(point)
        return point

    yield make
    for point in reversed(mounts):
        if _mount(["umount", str(point)]) is not None:
            _mount(["umount", "-l", str(point)])


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[callable]:
    """``make(source) -> Path``: a read-only copy of folder ``source``.

    As a normal user: a copy with the write bits removed. As root (who ignores mode bits): a read-only bind
    mount of the copy, or a skip with the reason when mounting is not allowed.
    """
    mounts: list[Path] = []
    chmodded: list[Path] = []

    def make(source: Path, name: str = "ro") -> Path:
        copy = tmp_path / f"{name}-src"
        shutil.copytree(source, copy, symlinks=True)
        if os.geteuid() != 0:
            for p in [copy, *copy.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o555)
                    chmodded.append(p)
            return copy
        point = tmp_path / name
        point.mkdir()
        err = _mount(["mount", "--bind", str(copy), str(point)])
        if err is None:
            mounts.append(point)
            err = _mount(["mount", "-o", "remount,ro,bind", str(point)])
        if err is not None:
            pytest.skip(f"running as root, and a read-only bind mount is not allowed here ({err})")
        probe = point / ".probe"
        try:
            probe.write_text("x")
        except OSError:
            return point
        probe.unlink()
        pytest.skip("running as root and the bind mount is still writable")

    yield make
    for point in reversed(mounts):
        if _mount(["umount", str(point)]) is not None:
            _mount(["umount", "-l", str(point)])
    for p in chmodded:
        p.chmod(0o755)
    # the copies behind the read-only views (checkpoints included)
    for copy in tmp_path.glob("*-src"):
        shutil.rmtree(copy, ignore_errors=True)
