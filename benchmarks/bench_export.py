"""Benchmark `sapnet export-pseudo` and its report on the dev data: masks/s for export and for the report.

    .venv/bin/python benchmarks/bench_export.py                      # all dev images, auto store source
    .venv/bin/python benchmarks/bench_export.py --images 50 --source gt

The store comes from the ``classical`` backend through ``stages.propose.run.run_propose`` when that backend is
importable (``--source auto`` or ``classical``), else from GT-derived proposals (``--source gt``): per object the
GT mask, a part (top third), the mask dilated by 6 px, a 5-px shifted copy, its filled box and a 9x9 square at
the point, written with ``ProposalStore.write_unit``. Selections are synthetic (seeded random PSM/PRM scores), so
they time the export without a trained selector.

Measured (wall seconds, best of ``--repeat``): export of the sapnet selector with aux masks (RLE from the store
to JSON: 4 masks per object) and of top1 without aux; the report of one selector (GT loading separately,
per-object IoU/errors + COCO AP segm and bbox); ``run_evaluate`` on the exported file; overlays per image.
Writes ``--out`` (JSON: rows of ``{section, case, metric, value, unit, notes}``) and the same table as Markdown
beside it (``.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stages.common.annotations import load_coco, load_points  # noqa: E402
from stages.common.masks import encode_masks, masks_to_boxes, segmentation_to_mask  # noqa: E402
from stages.common.selections import Selections, save_selections, store_identity  # noqa: E402
from stages.export.config import EvaluateConfig, ExportConfig  # noqa: E402
from stages.export.gt import load_ground_truth  # noqa: E402
from stages.export.pseudo import load_predictions  # noqa: E402
from stages.export.report import coco_ap, evaluate_predictions, object_overlaps  # noqa: E402
from stages.export.run import run_evaluate, run_export  # noqa: E402
from stages.points.run import sample_points  # noqa: E402
from stages.propose.store import ProposalStore, UnitResult  # noqa: E402

COLUMNS = ("section", "case", "metric", "value", "unit", "notes")
M = 6


def row(section: str, case: str, metric: str, value: Any, unit: str, notes: str = "") -> dict:
    return dict(zip(COLUMNS, (section, case, metric, value, unit, notes), strict=True))


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    """``(last result, best wall seconds)`` over ``repeat`` runs."""
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


# --------------------------------------------------------------------------- inputs
def write_subset(data: Path, n_images: int | None, work: Path) -> tuple[Path, Path]:
    """GT JSON of the first ``n_images`` images and the same with sampled points; returns both paths."""
    coco = load_coco(data / "annotations.json")
    if n_images is not None:
        coco["images"] = coco["images"][:n_images]
        keep = {im["id"] for im in coco["images"]}
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    gt_path, pts_path = work / "gt.json", work / "points.json"
    gt_path.write_text(json.dumps(coco))
    points = sample_points(coco, seed=0)
    coco["annotations"] = [
        {**a, "point": list(points[a["id"]])} if a["id"] in points else a
        for a in coco["annotations"]
        if a.get("iscrowd", 0) or a["id"] in points
    ]
    pts_path.write_text(json.dumps(coco))
    return gt_path, pts_path


def _gt_proposals(mask: np.ndarray, point: np.ndarray) -> np.ndarray:
    """``(6, H, W)`` proposals derived from one GT mask (see the module docstring)."""
    from scipy.ndimage import binary_dilation

    h, w = mask.shape
    x1, y1, x2, y2 = masks_to_boxes(mask[None])[0].astype(int)
    part = mask.copy()
    part[y1 + max(1, (y2 - y1) // 3) :] = False
    dilated = binary_dilation(mask, iterations=6)
    shifted = np.zeros_like(mask)
    shifted[:, 5:] = mask[:, : w - 5]
    box = np.zeros_like(mask)
    box[y1:y2, x1:x2] = True
    sq = np.zeros_like(mask)
    px, py = int(round(point[0])), int(round(point[1]))
    sq[max(0, py - 4) : py + 5, max(0, px - 4) : px + 5] = True
    return np.stack([mask, part, dilated, shifted, box, sq])


def build_gt_store(gt_path: Path, pts_path: Path, store_path: Path) -> ProposalStore:
    """A complete store whose proposals are derived from the GT masks (no backend needed)."""
    points = load_points(pts_path)
    coco = load_coco(gt_path)
    segs = {a["id"]: a["segmentation"] for a in coco["annotations"]}
    store = ProposalStore.create(
        store_path,
        points,
        {"name": "gt-derived"},
        M,
        ["gt", "part", "dilated", "shift", "box", "sq"],
    )
    objs, images = store.objects, store.images
    for unit in range(store.num_units):
        lo, hi = store.unit_rows(unit)
        first = int(np.searchsorted(objs.rows, lo))
        sl = range(first, first + (hi - lo))
        boxes, areas, rles = [], [], []
        for o in sl:
            img = int(objs.image_index[o])
            h, w = int(images.height[img]), int(images.width[img])
            props = _gt_proposals(segmentation_to_mask(segs[int(objs.ann_id[o])], h, w), objs.xy[o])
            boxes.append(masks_to_boxes(props))
            areas.append(props.reshape(M, -1).sum(1))
            rles.append(encode_masks(props))
        n = len(sl)
        rng = np.random.default_rng(unit)
        store.write_unit(
            unit,
            UnitResult(
                boxes=np.asarray(boxes, np.float32).reshape(n, M, 4),
                scores=rng.random((n, M)).astype(np.float32),
                area=np.asarray(areas, np.int64).reshape(n, M),
                rle=np.asarray(rles, dtype=object).reshape(n, M),
                status=np.ones(n, np.uint8),
                error=np.full(n, "", dtype=object),
            ),
        )
    store.finalize()
    return store


def build_classical_store(pts_path: Path, images: Path, store_path: Path) -> ProposalStore:
    from stages.propose.run import ProposeConfig, run_propose

    run_propose(
        ProposeConfig(
            annotations=pts_path,
            images=images,
            store=store_path,
            backend="classical",
            progress=False,
        )
    )
    return ProposalStore.open(store_path)


def write_random_selections(store: ProposalStore, run_dir: Path) -> Path:
    p, m = len(store.objects), store.num_proposals
    rng = np.random.default_rng(0)
    prm, psm = rng.random((p, m)).astype(np.float32), rng.random((p, m)).astype(np.float32)
    final = np.argmax(prm, axis=1)
    sel = Selections(
        ann_id=store.objects.ann_id.copy(),
        psm_top1=np.argmax(psm, axis=1),
        prm_top1=final.copy(),
        bms_box=store.boxes()[np.arange(p), final],
        final_index=final,
        psm_scores=psm,
        prm_scores=prm,
        bag_score=rng.random(p).astype(np.float32),
        meta={"store": store_identity(store), "note": "synthetic, for the benchmark"},
    )
    save_selections(sel, run_dir)
    return run_dir


# --------------------------------------------------------------------------- benchmark
def run(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="bench_export_", dir=args.work))
    rows: list[dict] = []
    try:
        gt_path, pts_path = write_subset(data, args.images, work)
        source = args.source
        if source == "auto":
            try:
                import stages.propose.backends.classical  # noqa: F401

                source = "classical"
            except ImportError:
                source = "gt"
        t0 = time.perf_counter()
        store_path = work / "store.zarr"
        if source == "classical":
            store = build_classical_store(pts_path, data / "images", store_path)
        else:
            store = build_gt_store(gt_path, pts_path, store_path)
        build_s = time.perf_counter() - t0
        n_obj, n_img = len(store.objects), len(store.images)
        sel_dir = write_random_selections(store, work / "select")
        notes = f"{n_img} images, {n_obj} objects, M={M}, store from {source}"
        rows.append(row("setup", source, "store build", build_s, "s", notes))

        def export(selectors: tuple[str, ...], aux: bool | None) -> Any:
            cfg = ExportConfig(
                store=store_path,
                out=work / "pseudo.json",
                selections=sel_dir,
                selectors=selectors,
                aux_masks=aux,
            )
            return run_export(cfg)

        for case, selectors, aux, per_obj in (
            ("sapnet + aux masks", ("sapnet",), None, 4),
            ("top1, no aux", ("top1",), None, 1),
        ):
            _, secs = best_of(lambda s=selectors, a=aux: export(s, a), args.repeat)
            rows.append(row("export", case, "masks/s", per_obj * n_obj / secs, "masks/s", notes))
            rows.append(row("export", case, "objects/s", n_obj / secs, "obj/s"))
            rows.append(row("export", case, "wall", secs, "s"))
        size_mb = (work / "pseudo.json").stat().st_size / 2**20
        rows.append(row("export", "top1, no aux", "file size", size_mb, "MiB"))

        gt, secs = best_of(lambda: load_ground_truth(gt_path), args.repeat)
        rows.append(row("report", "load GT", "annotations/s", len(gt) / secs, "ann/s"))
        preds, _ = load_predictions(work / "pseudo.json", gt.image_size)
        gt_rows = gt.index_of(preds.ann_id)
        img_ids = sorted(gt.image_size)
        case = "top1"
        _, secs = best_of(lambda: object_overlaps(preds, gt, gt_rows), args.repeat)
        rows.append(
            row("report", "per-object IoU + group/local", "masks/s", n_obj / secs, "masks/s")
        )
        _, secs = best_of(
            lambda: (coco_ap(gt, preds, "segm", img_ids), coco_ap(gt, preds, "bbox", img_ids)),
            args.repeat,
        )
        rows.append(row("report", "COCO AP segm + bbox (pycocotools)", "wall", secs, "s"))
        res, secs = best_of(
            lambda: evaluate_predictions(preds, gt, img_ids, gt_rows=gt_rows), args.repeat
        )
        rows.append(row("report", f"full report, {case}", "masks/s", n_obj / secs, "masks/s"))
        rows.append(row("report", f"full report, {case}", "wall", secs, "s"))
        _, secs = best_of(
            lambda: run_evaluate(EvaluateConfig(work / "pseudo.json", gt_path)), args.repeat
        )
        rows.append(
            row("evaluate", "run_evaluate (load + report)", "masks/s", n_obj / secs, "masks/s")
        )

        viz_n = min(args.viz_count, n_img)
        cfg = ExportConfig(
            store=store_path, out=work / "viz.json", selections=sel_dir,
            selectors=("top1", "sapnet"), gt=gt_path, viz=work / "viz", viz_count=viz_n,
            images=data / "images",
        )  # fmt: skip
        _, with_viz = best_of(lambda: run_export(cfg), 1)
        cfg.viz = None
        _, without = best_of(lambda: run_export(cfg), 1)
        rows.append(
            row("viz", "2 selectors + grid", "s/image", (with_viz - without) / max(viz_n, 1), "s")
        )
        quality = {k: res.get(k) for k in ("mask_iou", "box_iou", "errors", "ap_segm", "ap_bbox")}
        rows.append(row("quality", "top1", "mask mIoU", res["mask_iou"]["all"], "", source))
        rows.append(row("quality", "top1", "segm AP", res["ap_segm"]["AP"], "", source))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "benchmark": "export",
        "rows": rows,
        "quality_top1": quality,
        "env": {"python": platform.python_version(), "machine": platform.machine()},
        "args": {k: str(v) for k, v in vars(args).items()},
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = ["| section | case | metric | value | unit | notes |", "|---|---|---|---:|---|---|"]
    for r in result["rows"]:
        v = r["value"]
        val = f"{v:.4g}" if isinstance(v, float) else str(v)
        lines.append(
            f"| {r['section']} | {r['case']} | {r['metric']} | {val} | {r['unit']} | {r['notes']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "coco-dev"))
    ap.add_argument("--images", type=int, default=None, help="first N images (default: all)")
    ap.add_argument("--source", choices=["auto", "classical", "gt"], default="auto")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs")
    ap.add_argument("--viz-count", type=int, default=5)
    ap.add_argument("--work", default=None, help="scratch folder (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench" / "export.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(1)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    md = to_markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
