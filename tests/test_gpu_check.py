"""`make gpu-check SMOKE=1`: the GPU check's CPU smoke mode runs every section (so the check cannot rot), and the
driver isolates a failing or overrunning section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import FAIL_ENV, ORDER, TITLES
from tests.conftest import REPO


def _check(
    out: Path, *args: str, env: dict | None = None
) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--out", str(out), *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    return proc, json.loads((out / "summary.json").read_text())


def _rows(doc: dict, section: str) -> dict[tuple[str, str], object]:
    (sec,) = [s for s in doc["sections"] if s["name"] == section]
    return {(r["case"], r["metric"]): r["value"] for r in sec["rows"]}


@pytest.mark.timeout(1900)
def test_cpu_smoke_runs_every_section(tmp_path):
    # 86 s wall on 2 quiet cores (measured); boxes x1.5 (up to 1680 s) for a busy shared machine.
    proc, doc = _check(tmp_path, "--box-scale", "1.5")
    status = {s["name"]: (s["status"], s["error"][-800:]) for s in doc["sections"]}
    assert [s["name"] for s in doc["sections"]] == list(ORDER)
    bad = {name: st for name, st in status.items() if st[0] != "ok"}
    assert not bad, json.dumps(bad, indent=1)
    assert proc.returncode == 0 and doc["all_ok"] and doc["cpu_smoke"]
    markdown = (tmp_path / "summary.md").read_text()
    for title in TITLES.values():
        assert title in markdown
    tests = _rows(doc, "tests")
    assert tests["all", "failed"] == 0 and tests["all", "skipped"] >= 7  # no CUDA here: all skipped
    assert _rows(doc, "env")["torch", "version"]
    propose = _rows(doc, "propose")
    assert propose["fp32 vs fp32", "mean mask IoU"] == 1.0  # same path twice on CPU
    assert propose["speed-up", "sapnet / original at 4 pts"] > 0
    select = _rows(doc, "select")
    assert (
        0 < select["train, all modules", "images/s"] and select["predict, all modules", "objects/s"]
    )
    seg = _rows(doc, "seg")
    assert (
        seg["AMP vs fp32", "training speed-up"] > 0
        and seg["inference fp32, batch 1", "images/s"] > 0
    )
    chain = _rows(doc, "chain")
    assert [chain[s, "exit code"] for s in ("propose", "select", "export-pseudo", "train-seg")] == [
        0
    ] * 4
    curves = json.loads((tmp_path / "seg_loss_curves.json").read_text())
    assert len(curves["fp32"]) == len(curves["AMP"]) == 1


def test_a_failing_section_is_reported_and_the_next_still_runs(tmp_path):
    proc, doc = _check(tmp_path, "--sections", "tests,env", env={FAIL_ENV: "tests"})
    status = {s["name"]: s["status"] for s in doc["sections"]}
    assert status == {"env": "ok", "tests": "failed"} and proc.returncode == 1
    (failed,) = [s for s in doc["sections"] if s["name"] == "tests"]
    assert "asked section tests to fail" in failed["error"]
    assert "| **failed** | error |" in (tmp_path / "summary.md").read_text()


def test_an_overrunning_section_is_killed_at_its_time_box(tmp_path):
    proc, doc = _check(tmp_path, "--sections", "env", "--box-scale", "0.002")  # a 0.12 s box
    (env,) = doc["sections"]
    assert env["status"] == "timeout" and "killed after" in env["error"] and proc.returncode == 1
