"""COCO scale on one machine: wall time and peak RSS of every stage at a fraction of COCO train2017.

    .venv/bin/python benchmarks/bench_scale.py --scale 0.01 --out runs/bench/scale.json   # `make bench`
    nice -n 10 .venv/bin/python benchmarks/bench_scale.py --scale 0.1 --out runs/scale
    .venv/bin/python benchmarks/bench_scale.py --table runs/scale/scale_*.json     # 1/10/100 % table + growth

The workload (``scale_workload.py``: images, points, GT polygons, 6 proposal RLEs per point, COCO-shaped) is
built in ``--work`` (default ``runs/scale/work-<pct>``; removed at the end unless ``--keep``). Every stage runs
in its own subprocess (``--stage NAME``), so its wall time and peak RSS (``ru_maxrss`` of the child, and the
stage's own ``RUSAGE_SELF`` peak) are its own. A watchdog samples the RSS of the stage's process group and kills
it when one process passes ``--rss-limit-gb`` (default 14) or the machine's available memory falls under
``--min-available-gb`` (default 2): a runaway stage is killed rather than the machine.

Stages (the library functions the CLI calls):

* ``workload``: build the files (not a product stage; shown for reference).
* ``store_write``: ``load_points`` + ``ProposalStore.create`` + ``write_unit`` for every unit.
* ``resume_scan``: ``run_propose`` on the complete store (classical backend): "nothing to do".
* ``read_boxes``: open the store, ``boxes()`` and ``scores()`` of every point.
* ``select_data``: ``load_store_arrays`` + ``SelectDataset`` + the first batch of an epoch (8 images, real
  JPEGs written for those only), collated; no network.
* ``export_sapnet``: ``run_export`` with the ``sapnet`` selector and auxiliary masks (file size too).
* ``export_top1``: ``run_export`` with the ``top1`` selector.
* ``report``: the report of the sapnet pseudo labels: GT load, mIoU, mIoU_box, Gap, group/local errors and COCO
  AP (segm + bbox) - what ``export-pseudo --report`` computes per selector.
* ``seg_load``: ``train-seg``'s validation and registration of the pseudo JSON, detectron2's train dataset
  (as ``build_detection_train_loader`` makes it), and one DataLoader worker reading records (its RSS and its
  private memory, i.e. what it did not share with the main process).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

STAGES = (
    "workload",
    "store_write",
    "resume_scan",
    "read_boxes",
    "select_data",
    "export_sapnet",
    "export_top1",
    "report",
    "seg_load",
)
# Targets at 100 % (seconds; None = no time target of its own). Memory: < 16 GB for every stage.
TIME_TARGETS = {"resume_scan": 30.0, "read_boxes": 10.0, "export_sapnet": 600.0, "report": 1800.0}
RSS_TARGET_GB = 16.0
SEG_MAIN_TARGET_GB = 6.0


def _self_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _pct(scale: float) -> str:
    return f"{scale * 100:g}"


# --------------------------------------------------------------------------- stages (run in the child)
def stage_workload(work: Path, scale: float) -> dict[str, Any]:
    import scale_workload as sw

    t0 = time.perf_counter()
    wl = sw.make_workload(scale)
    t_pool = time.perf_counter() - t0
    work.mkdir(parents=True, exist_ok=True)
    sw.write_points_json(wl, work / "coco_points.json")
    sw.make_image_files(len(wl.counts), work / "images")
    np.savez(
        work / "workload.npz",
        size_index=wl.size_index,
        counts=wl.counts,
        family=wl.family,
        **sw.pool_arrays(wl),
    )
    return {
        "pool_s": round(t_pool, 2),
        "images": len(wl.counts),
        "objects": len(wl.family),
        "points_json_mb": round((work / "coco_points.json").stat().st_size / 2**20, 1),
    }


def stage_store_write(work: Path, scale: float) -> dict[str, Any]:
    from stages.common.annotations import load_points
    from stages.propose.backends import get_backend
    from stages.propose.store import STATUS_DONE, ProposalStore, UnitResult

    t0 = time.perf_counter()
    points = load_points(work / "coco_points.json")
    t_load = time.perf_counter() - t0
    backend = get_backend("classical", num_proposals=6, device="cpu")
    data = np.load(work / "workload.npz", allow_pickle=True)
    obj_size = np.repeat(data["size_index"], data["counts"])
    family = data["family"]
    store = ProposalStore.create(
        work / "store.zarr", points, backend.fingerprint(), 6, backend.proposal_order
    )
    t_create = time.perf_counter() - t0 - t_load
    pools = {k: data[k] for k in data.files if k[:-1] in ("rle", "boxes", "areas", "scores")}
    obj_ptr = points.image_ptr()
    for unit in range(store.num_units):
        lo, hi = int(store.unit_image_ptr[unit]), int(store.unit_image_ptr[unit + 1])
        objs = np.arange(obj_ptr[lo], obj_ptr[hi])
        n = len(objs)
        res = UnitResult(
            boxes=np.zeros((n, 6, 4), np.float32),
            scores=np.zeros((n, 6), np.float32),
            area=np.zeros((n, 6), np.int64),
            rle=np.full((n, 6), "", dtype=object),
            status=np.full(n, STATUS_DONE, np.uint8),
            error=np.full(n, "", dtype=object),
        )
        for s in np.unique(obj_size[objs]).tolist():
            k = obj_size[objs] == s
            f = family[objs[k]]
            res.boxes[k] = pools[f"boxes{s}"][f]
            res.scores[k] = pools[f"scores{s}"][f]
            res.area[k] = pools[f"areas{s}"][f]
            res.rle[k] = pools[f"rle{s}"][f]
        store.write_unit(unit, res)
    store.finalize()
    size = sum(p.stat().st_size for p in (work / "store.zarr").rglob("*") if p.is_file())
    return {
        "load_points_s": round(t_load, 2),
        "create_s": round(t_create, 2),
        "units": store.num_units,
        "store_mb": round(size / 2**20, 1),
    }


def stage_resume_scan(work: Path, scale: float) -> dict[str, Any]:
    from stages.propose.run import ProposeConfig, run_propose

    summary = run_propose(
        ProposeConfig(
            annotations=work / "coco_points.json",
            images=work / "images",
            store=work / "store.zarr",
            backend="classical",
            progress=False,
        )
    )
    assert summary.complete and summary.images_done == 0, summary.line()
    return {"images_skipped": summary.images_skipped}


def stage_read_boxes(work: Path, scale: float) -> dict[str, Any]:
    from stages.propose.store import ProposalStore

    store = ProposalStore.open(work / "store.zarr")
    boxes, scores = store.boxes(), store.scores()
    return {"boxes_mb": round((boxes.nbytes + scores.nbytes) / 2**20, 1)}


def stage_select_data(work: Path, scale: float) -> dict[str, Any]:
    from PIL import Image

    from stages.propose.store import ProposalStore
    from stages.select.data import EpochBatchSampler, SelectDataset, collate, load_store_arrays

    t0 = time.perf_counter()
    store = ProposalStore.open(work / "store.zarr")
    arrays = load_store_arrays(store)
    dataset = SelectDataset(arrays, work / "images", 800, 1333, flip_prob=0.5)
    trainable = arrays.trainable_images()
    sampler = EpochBatchSampler(trainable, batch_size=8, epoch=0)
    keys = next(iter(sampler))
    t_index = time.perf_counter() - t0
    for _, image in keys:  # real pixels only for the batch's images (not timed)
        path = work / "images" / arrays.file_names[image]
        if path.stat().st_size == 0:
            h, w = int(arrays.heights[image]), int(arrays.widths[image])
            Image.new("RGB", (w, h), (120, 110, 100)).save(path, quality=80)
    t1 = time.perf_counter()
    batch = collate([dataset[k] for k in keys])
    return {
        "index_s": round(t_index, 2),
        "batch_s": round(time.perf_counter() - t1, 2),
        "batch_objects": int(sum(len(b) for b in batch["boxes"])),
        "arrays_mb": round((arrays.boxes.nbytes + arrays.xy.nbytes) / 2**20, 1),
    }


def _make_selections(work: Path) -> Path:
    """Synthetic `sapnet select` output for the store (deterministic; made once, not timed)."""
    from stages.common.selections import Selections, save_selections, store_identity
    from stages.propose.store import ProposalStore

    run = work / "select_run"
    if (run / "selections.npz").is_file():
        return run
    store = ProposalStore.open(work / "store.zarr")
    rng = np.random.default_rng(1)
    p = len(store.objects)
    final = rng.integers(0, 6, p)
    boxes = store.boxes()
    sel = Selections(
        ann_id=store.objects.ann_id,
        psm_top1=rng.integers(0, 6, p),
        prm_top1=final,
        bms_box=boxes[np.arange(p), final],
        final_index=final,
        psm_scores=rng.random((p, 6)).astype(np.float32),
        prm_scores=rng.random((p, 6)).astype(np.float32),
        bag_score=rng.random(p).astype(np.float32),
        meta={"store": store_identity(store)},
    )
    save_selections(sel, run)
    return run


def _export(work: Path, selector: str) -> dict[str, Any]:
    from stages.export.config import ExportConfig
    from stages.export.run import run_export

    sel = _make_selections(work) if selector == "sapnet" else None
    out = work / f"pseudo_{selector}.json"
    t0 = time.perf_counter()
    res = run_export(
        ExportConfig(store=work / "store.zarr", out=out, selections=sel, selectors=(selector,))
    )
    return {
        "export_s": round(time.perf_counter() - t0, 2),
        "objects": res.num_objects,
        "file_mb": round(out.stat().st_size / 2**20, 1),
    }


def stage_export_sapnet(work: Path, scale: float) -> dict[str, Any]:
    return _export(work, "sapnet")


def stage_export_top1(work: Path, scale: float) -> dict[str, Any]:
    return _export(work, "top1")


def stage_report(work: Path, scale: float) -> dict[str, Any]:
    from stages.export.gt import load_ground_truth, match_annotations
    from stages.export.pseudo import load_predictions
    from stages.export.report import evaluate_predictions, fill_ratio
    from stages.propose.store import ProposalStore

    t0 = time.perf_counter()
    gt = load_ground_truth(work / "coco_points.json")
    t_gt = time.perf_counter() - t0
    preds, _ = load_predictions(work / "pseudo_sapnet.json", gt.image_size)
    store = ProposalStore.open(work / "store.zarr")
    gt_rows = match_annotations(gt, preds.ann_id, preds.image_id, preds.category_id, "bench")
    preds.rv_bag = fill_ratio(store.areas(), store.boxes())
    t1 = time.perf_counter()
    res = evaluate_predictions(preds, gt, sorted(gt.image_size), gt_rows=gt_rows)
    return {
        "load_gt_s": round(t_gt, 2),
        "evaluate_s": round(time.perf_counter() - t1, 2),
        "mask_miou": res["mask_iou"]["all"],
        "box_miou": res["box_iou"]["all"],
        "gap": res["gap"]["gap"],
        "group": res["errors"]["group"],
        "local": res["errors"]["local"],
        "ap_segm": res["ap_segm"]["AP"],
        "ap_bbox": res["ap_bbox"]["AP"],
    }


def _memory_of(pid: int) -> dict[str, float]:
    """RSS and private (not shared) memory of a process, in MB, from /proc."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Private_Clean", "Private_Dirty", "Pss"):
                out[key] = float(rest.split()[0]) / 1024.0
    return {
        "rss_mb": round(out.get("Rss", 0.0), 1),
        "private_mb": round(out.get("Private_Clean", 0.0) + out.get("Private_Dirty", 0.0), 1),
        "pss_mb": round(out.get("Pss", 0.0), 1),
    }


class _WorkerProbe:
    """Reads records of a detectron2 dataset in a DataLoader worker and reports the worker's memory."""

    def __init__(self, dataset: Any, reads: int):
        self.dataset, self.reads = dataset, reads

    def __len__(self) -> int:
        return 1

    def __getitem__(self, _: int) -> dict[str, Any]:
        n = len(self.dataset)
        idx = np.random.default_rng(0).integers(0, n, self.reads)
        total = sum(len(self.dataset[int(i)]["annotations"]) for i in idx)
        return {**_memory_of(os.getpid()), "annotations_read": total}


def stage_seg_load(work: Path, scale: float) -> dict[str, Any]:
    import torch

    from stages.seg.d2.data import register_datasets

    t0 = time.perf_counter()
    info = register_datasets(work / "pseudo_sapnet.json", work / "images")
    t_reg = time.perf_counter() - t0
    from detectron2.data.build import get_detection_dataset_dicts
    from detectron2.data.common import DatasetFromList

    dicts = get_detection_dataset_dicts([info["train"]], filter_empty=True)
    dataset = DatasetFromList(dicts, copy=False) if isinstance(dicts, list) else dicts
    del dicts
    t_load = time.perf_counter() - t0 - t_reg
    main_now = _memory_of(os.getpid())
    loader = torch.utils.data.DataLoader(
        _WorkerProbe(dataset, reads=2000),
        batch_size=None,
        num_workers=1,
        multiprocessing_context="fork",
    )
    worker = next(iter(loader))
    return {
        "register_s": round(t_reg, 2),
        "dataset_s": round(t_load, 2),
        "records": len(dataset),
        "main_rss_after_mb": main_now["rss_mb"],
        "worker_rss_mb": float(worker["rss_mb"]),
        "worker_private_mb": float(worker["private_mb"]),
        "worker_pss_mb": float(worker["pss_mb"]),
    }


def run_stage_in_child(name: str, work: Path, scale: float, result: Path) -> int:
    fn = globals()[f"stage_{name}"]
    t0 = time.perf_counter()
    extra = fn(work, scale)
    extra = {
        "self_peak_rss_mb": round(_self_peak_mb(), 1),
        "inner_s": round(time.perf_counter() - t0, 2),
        **extra,
    }
    result.write_text(json.dumps(extra), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------- parent: run + watchdog
def _available_gb() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) / 2**20
    return float("inf")


def _group_max_rss_gb(pgid: int) -> float:
    peak = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            with open(f"/proc/{entry}/statm") as fh:
                rss_pages = int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        peak = max(peak, rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**30)
    return peak


def run_stage(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result = work.parent / f".{work.name}.{name}.result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name]
    cmd += ["--work", str(work), "--scale", str(args.scale), "--result", str(result)]
    print(f"  {name}: running ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    killed = ""
    watched_peak = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss = _group_max_rss_gb(proc.pid)
        watched_peak = max(watched_peak, rss)
        if rss > args.rss_limit_gb:
            killed = f"killed: a process passed {args.rss_limit_gb:g} GB RSS"
        elif _available_gb() < args.min_available_gb:
            killed = (
                f"killed: machine below {args.min_available_gb:g} GB available (at {rss:.1f} GB)"
            )
        elif time.perf_counter() - t0 > args.stage_timeout:
            killed = f"killed: over {args.stage_timeout:g} s"
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)
    rec: dict[str, Any] = {
        "stage": name,
        "wall_s": round(time.perf_counter() - t0, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),  # child + waited-for descendants
        "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
        "watched_peak_mb": round(watched_peak * 1024, 1),
        "returncode": os.waitstatus_to_exitcode(status),
    }
    if killed or rec["returncode"] != 0 or not result.is_file():
        rec["status"] = killed or f"failed (exit code {rec['returncode']})"
    else:
        rec["status"] = "ok"
        rec.update(json.loads(result.read_text(encoding="utf-8")))
        result.unlink()
    print(
        f"  {name}: {rec['status']} in {rec['wall_s']:.1f} s, peak RSS {rec['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    return rec


def verdicts(rec: dict[str, Any], scale: float) -> list[str]:
    """Target checks that apply at this scale (only meaningful at 1.0)."""
    notes = []
    if scale < 1.0:
        return notes
    if rec.get("peak_rss_mb", 0) > RSS_TARGET_GB * 1024:
        notes.append(f"MISS rss > {RSS_TARGET_GB:g} GB")
    target = TIME_TARGETS.get(rec["stage"])
    if target is not None and rec.get("inner_s", rec["wall_s"]) > target:
        notes.append(f"MISS time > {target:g} s")
    if rec["stage"] == "seg_load" and rec.get("self_peak_rss_mb", 0) > SEG_MAIN_TARGET_GB * 1024:
        notes.append(f"MISS main > {SEG_MAIN_TARGET_GB:g} GB")
    return notes


def slope(x0: float, y0: float, x1: float, y1: float) -> float | None:
    """log-log slope of y between x0 and x1 (1 = linear growth)."""
    if min(x0, y0, x1, y1) <= 0 or x0 == x1:
        return None
    return round(math.log(y1 / y0) / math.log(x1 / x0), 2)


def merge_runs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per scale: runs of the same scale (e.g. stages run separately) merged, later ones win
    (except that a failed stage record never replaces a successful one)."""
    merged: dict[float, dict[str, Any]] = {}
    for r in results:
        into = merged.setdefault(r["scale"], {**r, "stages": []})
        have = {s["stage"]: s for s in into["stages"]}
        for s in r["stages"]:  # a failed (killed) record never hides a successful one
            if s["stage"] not in have or s["status"] == "ok" or have[s["stage"]]["status"] != "ok":
                have[s["stage"]] = s
        into["stages"] = list(have.values())
    return [merged[k] for k in sorted(merged)]


def render_table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per stage, time and peak RSS at each scale, log-log growth between the last two."""
    results = merge_runs(results)
    scales = [r["scale"] for r in results]
    by = [{s["stage"]: s for s in r["stages"]} for r in results]
    head = ["stage"]
    for sc in scales:
        head += [f"{_pct(sc)} % wall s (CPU s)", f"{_pct(sc)} % peak RSS MB"]
    if len(scales) >= 2:
        head += [f"growth {_pct(scales[-2])}->{_pct(scales[-1])} %: CPU time", "peak RSS"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name in STAGES:
        row = [name]
        for b in by:
            s = b.get(name)
            if s is None:
                row += ["-", "-"]
            elif s["status"] != "ok":
                row += [s["status"], f"{s['peak_rss_mb']:.0f}"]
            else:
                cpu = f" ({s['cpu_s']:.1f})" if "cpu_s" in s else ""
                row += [f"{s['wall_s']:.1f}{cpu}", f"{s['peak_rss_mb']:.0f}"]
        if len(scales) >= 2:
            a, b = by[-2].get(name), by[-1].get(name)
            ok = a and b and a["status"] == b["status"] == "ok"
            key = "cpu_s" if ok and "cpu_s" in a and "cpu_s" in b else "wall_s"
            ts = slope(scales[-2], a[key], scales[-1], b[key]) if ok else None
            ms = slope(scales[-2], a["peak_rss_mb"], scales[-1], b["peak_rss_mb"]) if ok else None
            row += ["n/a" if ts is None else f"{ts:.2f}", "n/a" if ms is None else f"{ms:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=float, default=0.01, help="fraction of COCO train2017")
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON file, or a folder for scale_PCT.json"
    )
    ap.add_argument("--work", type=Path, default=None, help="workload folder")
    ap.add_argument("--only", action="append", default=None, help="run only these stages")
    ap.add_argument("--keep", action="store_true", help="keep the workload folder")
    ap.add_argument("--reuse", action="store_true", help="reuse an existing workload folder")
    ap.add_argument("--rss-limit-gb", type=float, default=14.0)
    ap.add_argument("--min-available-gb", type=float, default=2.0)
    ap.add_argument("--stage-timeout", type=float, default=3600.0)
    ap.add_argument("--table", nargs="+", type=Path, default=None, help="render result JSONs")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        return run_stage_in_child(args.stage, args.work, args.scale, args.result)
    if args.table:
        print(render_table([json.loads(p.read_text(encoding="utf-8")) for p in args.table]))
        return 0
    pct = _pct(args.scale)
    out = args.out or REPO / "runs" / "scale"
    out_json = out if out.suffix == ".json" else out / f"scale_{pct}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    work = (args.work or REPO / "runs" / "scale" / f"work-{pct}").resolve()
    if work.exists() and not args.reuse:
        shutil.rmtree(work)
    work.parent.mkdir(parents=True, exist_ok=True)
    stages = [s for s in STAGES if not args.only or s in args.only]
    if args.reuse and "workload" in stages and (work / "coco_points.json").is_file():
        stages.remove("workload")
    print(f"bench_scale: {pct} % of COCO in {work}", flush=True)
    records = []
    for name in stages:
        rec = run_stage(name, args, work)
        rec["verdict"] = verdicts(rec, args.scale)
        records.append(rec)
        if rec["status"] != "ok" and name in ("workload", "store_write"):
            break  # later stages need these
    doc = {
        "scale": args.scale,
        "images": round(118_287 * args.scale),
        "objects": round(860_000 * args.scale),
        "env": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "stages": records,
        "rows": [
            {"section": r["stage"], "case": f"{pct} %", "metric": m, "value": r[m], "unit": u}
            for r in records
            for m, u in (("wall_s", "s"), ("peak_rss_mb", "MB"))
        ],
    }
    out_json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(render_table([doc]))
    print(f"wrote {out_json}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
