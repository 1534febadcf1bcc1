"""Selectors on real photos, fitted on one half of the dev data and reported on the other half.

The dev data (``--gt``, COCO photos with GT masks) is split by image id parity: EVEN ids are the fit half,
ODD ids the held-out half. Steps (each a subcommand; outputs under ``--work``):

    # 0. a proposal store of all images (classical backend), made beforehand:
    sapnet points --annotations GT.json --out W/points.json --seed 0
    sapnet propose --annotations W/points.json --images IMAGES --store W/store.zarr --backend classical
    # 1. the fit half's store (same proposals, copied), to train the learned selector on it:
    python benchmarks/dev_selectors.py subset-store --work W
    sapnet select --store W/fit.zarr ... --out W/select-fit          (make reproduce's CPU schedule)
    sapnet select --store W/store.zarr --predict-only --checkpoint W/select-fit/selector.pt --out W/select
    # 2. fit the point-aware choices on the fit half (grid over rule x scope x test), print the grid:
    python benchmarks/dev_selectors.py fit --work W --gt GT.json
    # 3. export every selector over all images, evaluate each half separately, write the table:
    python benchmarks/dev_selectors.py table --work W --gt GT.json

``fit`` writes ``W/point_aware_fit.json`` (the grid: mask mIoU of every choice on both halves, the choice
with the best FIT-half value); ``table`` writes ``W/dev_table.md`` / ``.json``: per selector and half, mask
mIoU, mIoU_box, group and local error rates (``sapnet evaluate``'s per-object metrics), with top1 and
oracle beside, and the share of the top1 -> oracle gap each selector closes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stages.common.annotations import load_points  # noqa: E402
from stages.common.io import atomic_write_bytes, atomic_write_json  # noqa: E402
from stages.export.gt import load_ground_truth, match_annotations, proposal_gt_iou  # noqa: E402
from stages.export.point_aware import (  # noqa: E402
    POINT_RULES,
    POINT_SCOPES,
    POINT_TESTS,
    PointAwareOptions,
    allowed,
    neighbour_counts,
    penalty,
    proposal_consensus,
    select_point_aware,
)
from stages.propose.store import ProposalStore, UnitResult  # noqa: E402

SELECTORS = ("top1", "largest", "psm", "sapnet", "point-aware", "oracle")


def fit_half(image_id: np.ndarray) -> np.ndarray:
    """``True`` for the fit half (even image ids), ``False`` for the held-out half (odd ids)."""
    return np.asarray(image_id) % 2 == 0


def subset_store(work: Path) -> Path:
    """``W/fit.zarr``: the fit half's objects with the proposals of ``W/store.zarr`` (copied)."""
    full = ProposalStore.open(work / "store.zarr")
    doc = json.loads((work / "points.json").read_text())
    keep = {im["id"] for im in doc["images"] if fit_half(im["id"])}
    doc["images"] = [im for im in doc["images"] if im["id"] in keep]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
    pts_path = work / "points.fit.json"
    pts_path.write_text(json.dumps(doc))
    out = work / "fit.zarr"
    store = ProposalStore.create(
        out,
        load_points(pts_path),
        full.fingerprint["backend"],
        full.num_proposals,
        list(full.attrs.get("proposal_order", [])),
    )
    where = {int(a): i for i, a in enumerate(full.objects.ann_id.tolist())}
    boxes, scores, areas, status = full.boxes(), full.scores(), full.areas(), full.point_status()
    rle = full.rle()
    objs = store.objects
    for unit in range(store.num_units):
        lo, hi = store.unit_rows(unit)
        first = int(np.searchsorted(objs.rows, lo))
        src = np.array([where[int(a)] for a in objs.ann_id[first : first + (hi - lo)]], np.int64)
        n = len(src)
        store.write_unit(
            unit,
            UnitResult(
                boxes=boxes[src], scores=scores[src], area=areas[src], rle=rle[src],
                status=status[src], error=np.full(n, "", dtype=object),
            ),
        )  # fmt: skip
    store.finalize()
    print(f"fit-half store: {len(objs)} objects on {len(store.images)} images -> {out}")
    return out


def _dev_arrays(work: Path, gt_path: Path) -> dict[str, Any]:
    store = ProposalStore.open(work / "store.zarr")
    objs, images = store.objects, store.images
    keep = np.nonzero(store.point_status() == 1)[0]
    counts = store.rle(keep)
    ii = objs.image_index[keep]
    h, w = images.height[ii], images.width[ii]
    img_id, cat = images.image_id[ii], objs.category_id[keep]
    gt = load_ground_truth(gt_path)
    rows = match_annotations(gt, objs.ann_id[keep], img_id, cat, str(store.path))
    return {
        "iou": proposal_gt_iou(counts, h, w, ii, rows, gt),
        "counts": counts, "image_index": ii, "category_id": cat, "xy": objs.xy[keep],
        "heights": h, "widths": w, "boxes": store.boxes()[keep], "scores": store.scores()[keep],
        "areas": store.areas()[keep], "fit": fit_half(img_id),
    }  # fmt: skip


def fit_point_aware(work: Path, gt_path: Path) -> dict[str, Any]:
    """Grid over rule x scope x test; the choice is the best mask mIoU on the FIT half."""
    d = _dev_arrays(work, gt_path)
    iou, fit = d["iou"], d["fit"]
    rows = np.arange(len(iou))
    consensus = proposal_consensus(d["counts"], d["heights"], d["widths"], d["image_index"])
    grid = []
    for test in POINT_TESTS:
        same, other = neighbour_counts(
            d["image_index"], d["category_id"], d["xy"], d["heights"], d["widths"],
            counts=d["counts"], boxes=d["boxes"], test=test,
        )  # fmt: skip
        for scope, rule in itertools.product(POINT_SCOPES, POINT_RULES):
            ok = allowed(penalty(same, other, scope))
            pick = select_point_aware(d["scores"], d["areas"], ok, rule, consensus)
            got = iou[rows, pick]
            grid.append(
                {"rule": rule, "scope": scope, "test": test,
                 "fit": float(got[fit].mean()), "held_out": float(got[~fit].mean())}
            )  # fmt: skip
    best = max(grid, key=lambda g: g["fit"])
    top1 = iou[rows, np.argmax(d["scores"], axis=1)]
    oracle = iou.max(axis=1)
    out = {
        "split": "fit = even image ids, held-out = odd image ids",
        "objects": {"fit": int(fit.sum()), "held_out": int((~fit).sum())},
        "top1": {"fit": float(top1[fit].mean()), "held_out": float(top1[~fit].mean())},
        "oracle": {"fit": float(oracle[fit].mean()), "held_out": float(oracle[~fit].mean())},
        "grid": sorted(grid, key=lambda g: -g["fit"]),
        "choice": {k: best[k] for k in ("rule", "scope", "test")},
    }
    atomic_write_json(work / "point_aware_fit.json", out, indent=2)
    for g in out["grid"]:
        print(f"{g['test']:4s} {g['scope']:4s} {g['rule']:11s} fit {g['fit']:.3f} held-out "
              f"{g['held_out']:.3f}")  # fmt: skip
    print(f"top1 {out['top1']}, oracle {out['oracle']}; choice (best on fit): {out['choice']}")
    return out


def _filter(doc: dict[str, Any], fit: bool) -> dict[str, Any]:
    keep = {im["id"] for im in doc["images"] if fit_half(im["id"]) == fit}
    return {
        **doc,
        "images": [im for im in doc["images"] if im["id"] in keep],
        "annotations": [a for a in doc["annotations"] if a["image_id"] in keep],
    }


def table(work: Path, gt_path: Path, select_dir: Path, constraint: bool) -> dict[str, Any]:
    """Export every selector over all images, evaluate each half, write ``W/dev_table.{md,json}``."""
    from stages.export.config import EvaluateConfig, ExportConfig, output_paths
    from stages.export.run import run_evaluate, run_export

    choice = json.loads((work / "point_aware_fit.json").read_text())["choice"]
    tag = "constrained" if constraint else "unconstrained"
    out = work / f"pseudo-{tag}" / "pseudo.json"
    cfg = ExportConfig(
        store=work / "store.zarr", out=out, selections=select_dir, selectors=SELECTORS,
        gt=gt_path, point_aware=PointAwareOptions(**choice), point_constraint=constraint,
    )  # fmt: skip
    run_export(cfg)
    rows: dict[str, dict[str, Any]] = {}
    for name, path in output_paths(out, SELECTORS).items():
        doc = json.loads(path.read_text())
        for half, is_fit in (("fit", True), ("held_out", False)):
            part = path.with_name(f"{path.stem}.{half}.json")
            atomic_write_json(part, _filter(doc, is_fit))
            res = run_evaluate(EvaluateConfig(pred=part, gt=gt_path))["selectors"][0]
            rows.setdefault(name, {})[half] = {
                "mask_miou": res["mask_iou"]["all"], "box_miou": res["box_iou"]["all"],
                "group_rate": res["errors"]["group"], "local_rate": res["errors"]["local"],
            }  # fmt: skip
    lines = [
        f"Dev data ({gt_path}), classical proposals; fit half = even image ids, held-out = odd. "
        f"point-aware: {choice}; learned path {tag}.",
        "",
        "| selector | half | mask mIoU | mIoU_box | group err | local err | gap closed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SELECTORS:
        for half in ("fit", "held_out"):
            r = rows[name][half]
            lo, hi = rows["top1"][half]["mask_miou"], rows["oracle"][half]["mask_miou"]
            gap = (r["mask_miou"] - lo) / (hi - lo) if hi and hi != lo else float("nan")
            cells = [name, half] + [
                f"{100 * r[k]:.1f}" if r[k] is not None else "-"
                for k in ("mask_miou", "box_miou", "group_rate", "local_rate")
            ]
            lines.append("| " + " | ".join(cells) + f" | {100 * gap:.0f} % |")
    md = "\n".join(lines)
    print(md)
    atomic_write_bytes(work / f"dev_table.{tag}.md", (md + "\n").encode())
    atomic_write_json(work / f"dev_table.{tag}.json", {"choice": choice, "rows": rows}, indent=2)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("subset-store", "fit", "table"))
    parser.add_argument("--work", type=Path, default=REPO / "runs/dev")
    parser.add_argument("--gt", type=Path, default=None, help="GT COCO JSON of the dev data")
    parser.add_argument("--selections", type=Path, default=None, help="default: WORK/select")
    parser.add_argument("--no-constraint", action="store_true", help="learned path unconstrained")
    args = parser.parse_args(argv)
    if args.step == "subset-store":
        subset_store(args.work)
        return 0
    if args.gt is None:
        parser.error("--gt is needed")
    if args.step == "fit":
        fit_point_aware(args.work, args.gt)
    else:
        table(args.work, args.gt, args.selections or args.work / "select", not args.no_constraint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
