"""Run every ``benchmarks/bench_*.py`` and collect their results into one summary (`make bench`).

    .venv/bin/python benchmarks/run_all.py --out runs/bench
    .venv/bin/python benchmarks/run_all.py --out runs/bench --only propose --only select
    .venv/bin/python benchmarks/run_all.py --bench-args propose="--device cuda --model vit_h"

Each benchmark runs as its own subprocess (``python bench_NAME.py --out OUT/NAME.json [extra args]``) in its own
process group, with a wall-clock ``--timeout``; its console output goes to ``OUT/NAME.log``. The runner then
writes

* ``OUT/summary.json``: per benchmark its status (``ok`` / ``failed`` with the reason: timeout, exit code and
  the last log line, missing or unreadable JSON), wall time, peak RSS of the process tree's largest process, the
  log and JSON paths, and its numbers normalised to rows ``{section, case, metric, value, unit, notes}``;
* ``OUT/summary.md``: a status table, a "key numbers" table (throughput, memory, ratios) and every benchmark's
  full table.

Benchmarks are free in their JSON layout; the runner understands a ``rows`` list (the layout of
``bench_propose.py``: one ``{section, case, metric, value, unit, notes}`` per number, or dicts with several
numeric fields) and otherwise flattens every numeric leaf (``a.b.c``), skipping ``env`` and ``args``.
Exit status: 0 when every selected benchmark succeeded, 1 otherwise (the summary is written either way).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("section", "case", "metric", "value", "unit", "notes")
SKIP_KEYS = ("env", "args", "config", "meta")
KEY_WORDS = ("/s", "per_s", "throughput", "speedup", "ratio", "rss", "memory", "mem", "peak")


# --------------------------------------------------------------------------- discovery and running
def discover(bench_dir: Path, only: list[str] | None = None) -> list[tuple[str, Path]]:
    """``[(name, path)]`` of ``bench_*.py`` in ``bench_dir`` sorted by name; ``only`` filters by name.

    Names are the file stem without ``bench_``; ``only`` accepts either form. Unknown names raise SystemExit.
    """
    found = {p.stem.removeprefix("bench_"): p for p in sorted(bench_dir.glob("bench_*.py"))}
    if not only:
        return sorted(found.items())
    wanted = [o.removeprefix("bench_").removesuffix(".py") for o in only]
    missing = [w for w in wanted if w not in found]
    if missing:
        raise SystemExit(
            f"unknown benchmark(s): {', '.join(missing)}; available: {', '.join(sorted(found)) or 'none'}"
        )
    return [(w, found[w]) for w in dict.fromkeys(wanted)]


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def run_one(
    name: str, script: Path, out_dir: Path, extra: list[str], timeout: float
) -> dict[str, Any]:
    """Run one benchmark; returns its summary record (without the normalised rows)."""
    json_path = out_dir / f"{name}.json"
    log_path = out_dir / f"{name}.log"
    json_path.unlink(missing_ok=True)  # a stale file must not pass for this run's result
    cmd = [sys.executable, str(script), "--out", str(json_path), *extra]
    rec: dict[str, Any] = {
        "name": name,
        "command": " ".join(shlex.quote(c) for c in cmd),
        "json": str(json_path),
        "log": str(log_path),
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    timed_out = False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the benchmark's own process group only
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    rec["peak_rss_mb"] = round(usage.ru_maxrss / 1024.0, 1)  # Linux: KiB
    rec["returncode"] = proc.returncode
    if timed_out:
        return {**rec, "status": "failed", "reason": f"timeout after {timeout:g} s"}
    if proc.returncode != 0:
        why = _last_line(log_path)
        return {
            **rec,
            "status": "failed",
            "reason": f"exit code {proc.returncode}" + (f": {why}" if why else ""),
        }
    if not json_path.is_file():
        return {**rec, "status": "failed", "reason": f"finished but wrote no {json_path.name}"}
    try:
        rec["result"] = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return {**rec, "status": "failed", "reason": f"unreadable {json_path.name}: {err}"}
    return {**rec, "status": "ok", "reason": ""}


# --------------------------------------------------------------------------- normalising results
def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Numeric leaves of nested dicts/lists as ``(dotted.path, value)``."""
    if _is_number(obj):
        return [(prefix, obj)]
    items: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, list):
        items = [(str(i), v) for i, v in enumerate(obj)]
    out: list[tuple[str, float]] = []
    for key, value in items:
        out += _flatten(value, f"{prefix}.{key}" if prefix else key)
    return out


def normalise_rows(result: Any) -> list[dict[str, Any]]:
    """A benchmark's JSON as rows ``{section, case, metric, value, unit, notes}`` (see the module docstring)."""
    if not isinstance(result, dict):
        return [
            {"section": "", "case": "", "metric": m, "value": v, "unit": "", "notes": ""}
            for m, v in _flatten(result)
        ]
    rows: list[dict[str, Any]] = []
    raw_rows = result.get("rows")
    if isinstance(raw_rows, list):
        for r in raw_rows:
            if not isinstance(r, dict):
                continue
            if "metric" in r and "value" in r:
                rows.append({c: r.get(c, "") for c in COLUMNS})
                continue
            # a row with several numeric fields: one normalised row per field
            labels = {k: v for k, v in r.items() if not _is_number(v) and not isinstance(v, dict)}
            case = " ".join(str(v) for k, v in labels.items() if k not in ("section", "notes"))
            for metric, value in _flatten({k: v for k, v in r.items() if k not in labels}):
                rows.append(
                    {
                        "section": str(r.get("section", "")),
                        "case": case,
                        "metric": metric,
                        "value": value,
                        "unit": "",
                        "notes": str(r.get("notes", "")),
                    }
                )
    rest = {k: v for k, v in result.items() if k not in (*SKIP_KEYS, "rows")}
    for metric, value in _flatten(rest):
        rows.append(
            {"section": "", "case": "", "metric": metric, "value": value, "unit": "", "notes": ""}
        )
    return rows


def is_key_row(row: dict[str, Any]) -> bool:
    """Throughput, memory and ratio numbers (shown in the key-numbers table)."""
    text = f"{row.get('metric', '')} {row.get('unit', '')}".lower()
    return any(w in text for w in KEY_WORDS) or str(row.get("unit", "")).strip() == "x"


# --------------------------------------------------------------------------- rendering
def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if _is_number(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict[str, Any]], with_bench: bool = False) -> list[str]:
    cols = (("benchmark",) if with_bench else ()) + COLUMNS
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return lines


def render_markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: status table, key numbers, then every benchmark's rows."""
    env = summary["env"]
    lines = [
        "# sapnet benchmarks",
        "",
        f"Host {env['host']} ({env['machine']}, {env['cpu_count']} CPUs), Python {env['python']}; "
        f"run at {env['started']}, {env['wall_s']:.0f} s in all.",
        "",
        "| benchmark | status | wall s | peak RSS MB | reason |",
        "|---|---|---:|---:|---|",
    ]
    for b in summary["benchmarks"]:
        lines.append(
            f"| {b['name']} | {b['status']} | {_fmt(b.get('wall_s'))} | {_fmt(b.get('peak_rss_mb'))} "
            f"| {_fmt(b.get('reason', ''))} |"
        )
    key = [
        {"benchmark": b["name"], **r}
        for b in summary["benchmarks"]
        for r in b.get("rows", [])
        if is_key_row(r)
    ]
    if key:
        lines += ["", "## Key numbers (throughput, memory, ratios)", "", *_table(key, True)]
    for b in summary["benchmarks"]:
        lines += [
            "",
            f"## {b['name']}",
            "",
            f"`{b['command']}` -> `{b['json']}` (log `{b['log']}`)",
        ]
        if b["status"] != "ok":
            lines += ["", f"**failed**: {b['reason']}"]
        elif b.get("rows"):
            lines += ["", *_table(b["rows"])]
        else:
            lines += ["", "(no numeric fields in the JSON)"]
    return "\n".join(lines) + "\n"


def parse_bench_args(values: list[str]) -> dict[str, list[str]]:
    """``["propose=--device cuda", ...]`` -> ``{"propose": ["--device", "cuda"]}``."""
    out: dict[str, list[str]] = {}
    for v in values:
        name, sep, args = v.partition("=")
        if not sep:
            raise SystemExit(f"--bench-args expects NAME=ARGS, got {v!r}")
        out.setdefault(name.removeprefix("bench_"), []).extend(shlex.split(args))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench", help="output folder")
    ap.add_argument(
        "--only", action="append", default=None, help="run only this benchmark (repeatable)"
    )
    ap.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per benchmark before it is killed"
    )
    ap.add_argument(
        "--bench-args",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help='extra arguments for one benchmark, e.g. propose="--device cuda" (repeatable)',
    )
    ap.add_argument("--bench-dir", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args(argv)
    extra = parse_bench_args(args.bench_args)
    benches = discover(args.bench_dir, args.only)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    records = []
    for i, (name, script) in enumerate(benches, 1):
        print(
            f"[{i}/{len(benches)}] {name}: running (log {args.out / (name + '.log')})", flush=True
        )
        rec = run_one(name, script, args.out, extra.get(name, []), args.timeout)
        rec["rows"] = normalise_rows(rec.get("result")) if rec["status"] == "ok" else []
        msg = f"{len(rec['rows'])} numbers" if rec["status"] == "ok" else rec["reason"]
        print(f"[{i}/{len(benches)}] {name}: {rec['status']} in {rec['wall_s']:.0f} s ({msg})")
        records.append(rec)
    summary = {
        "env": {
            "host": platform.node(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "started": started,
            "wall_s": round(time.perf_counter() - t0, 1),
        },
        "benchmarks": records,
        "failed": [r["name"] for r in records if r["status"] != "ok"],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    (args.out / "summary.md").write_text(render_markdown(summary), encoding="utf-8")
    print(f"wrote {args.out / 'summary.md'} and summary.json")
    if summary["failed"]:
        print(f"failed: {', '.join(summary['failed'])}", file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
