"""Selectors on real photos, fitted on one half of the dev data and reported on the other half.

The dev data (``--gt``, COCO photos with GT masks) is split by image id parity: EVEN ids are the fit half,
ODD ids the held-out half. Steps (each a subcommand; outputs under ``--work``):

    # 0. a proposal store of all images (classical backend), made beforehand:
    sapnet points --annotations GT.json --out W/points.json --seed 0
    sapnet propose --annotations W/points.json --images IMAGES --store W/store.zarr --backend classical
    # 1. each half's store (same proposals, copied): W/fit.zarr, W/held_out.zarr
    python benchmarks/dev_selectors.py subset-store --work W
    # train the learned selector on the fit half (make reproduce's CPU schedule; it predicts the fit half)
    sapnet select --store W/fit.zarr ... --out W/select-fit
    sapnet select --store W/held_out.zarr --predict-only --checkpoint W/select-fit/selector.pt \
        --out W/select-held_out ...
    # 2. fit the point-aware choices on the fit half (grid over rule x scope x test), print the grid:
    python benchmarks/dev_selectors.py fit --work W --gt GT.json
    # 3. export every selector on each half (learned path with and without the point constraint):
    python benchmarks/dev_selectors.py table --work W --gt GT.json

``fit`` writes ``W/point_aware_fit.json`` (the grid: mask mIoU of every choice on both halves, the choice
with the best FIT-half value, the cheaper box test winning ties within :data:`TIE`); ``table`` writes ``W/dev_table.md`` / ``.json``: per selector and half, mask
mIoU, mIoU_box, group and local error rates (the export report's per-object metrics), with top1 and
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
TIE = 0.005
"""Fit-half mask mIoU differences below this (half a point, ~10 of ~1,200 objects) count as ties."""


def fit_half(image_id: np.ndarray) -> np.ndarray:
    """``True`` for the fit half (even image ids), ``False`` for the held-out half (odd ids)."""
    return np.asarray(image_id) % 2 == 0


def subset_store(work: Path, half: str = "fit") -> Path:
    """``W/{half}.zarr``: the objects of one half (``fit`` or ``held_out``) with the proposals of
    ``W/store.zarr`` (copied)."""
    full = ProposalStore.open(work / "store.zarr")
    doc = json.loads((work / "points.json").read_text())
    keep = {im["id"] for im in doc["images"] if fit_half(im["id"]) == (half == "fit")}
    doc["images"] = [im for im in doc["images"] if im["id"] in keep]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
    pts_path = work / f"points.{half}.json"
    pts_path.write_text(json.dumps(doc))
    out = work / f"{half}.zarr"
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
    print(f"{half} store: {len(objs)} objects on {len(store.images)} images -> {out}")
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
    # choices within TIE of the best fit-half value are ties; the cheaper box test wins a tie (it is
    # ~10x faster than the mask test, and export-pseudo runs it for the constraint by default)
    top = max(g["fit"] for g in grid)
    ties = [g for g in grid if g["fit"] >= top - TIE]
    best = max(ties, key=lambda g: (g["test"] == "box", g["fit"]))
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


HALVES = ("fit", "held_out")
METRICS = ("mask_miou", "box_miou", "group_rate", "local_rate")


def _half_rows(work: Path, gt_path: Path, half: str, constraint: bool, choice: dict) -> dict:
    """Export every selector on one half's store with its selections; the report's numbers per selector."""
    from stages.export.config import ExportConfig
    from stages.export.run import run_export

    tag = "constrained" if constraint else "unconstrained"
    out = work / f"pseudo-{half}-{tag}"
    res = run_export(
        ExportConfig(
            store=work / f"{half}.zarr", out=out / "pseudo.json", selections=work / f"select-{half}",
            selectors=SELECTORS, gt=gt_path, report=out / "report",
            point_aware=PointAwareOptions(**choice), point_constraint=constraint,
        )
    )  # fmt: skip
    assert res.report is not None
    return {
        c["name"]: {
            "mask_miou": c["mask_iou"]["all"],
            "box_miou": c["box_iou"]["all"],
            "group_rate": c["errors"]["group"],
            "local_rate": c["errors"]["local"],
        }  # fmt: skip
        for c in res.report["selectors"]
    }


def table(work: Path, gt_path: Path) -> dict[str, Any]:
    """Per half: export every selector (learned path with and without the point constraint) on that
    half's store with the selections of ``W/select-{half}`` (trained on the fit half), and write
    ``W/dev_table.{md,json}``."""
    choice = json.loads((work / "point_aware_fit.json").read_text())["choice"]
    rows: dict[str, dict[str, Any]] = {}
    for half in HALVES:
        on = _half_rows(work, gt_path, half, True, choice)
        off = _half_rows(work, gt_path, half, False, choice)
        for name in SELECTORS:
            rows.setdefault(name, {})[half] = on[name]
        for name in ("psm", "sapnet"):
            rows.setdefault(f"{name} (no constraint)", {})[half] = off[name]
    lines = [
        f"Dev data ({gt_path}), classical proposals; fit half = even image ids, held-out = odd. "
        f"point-aware: {choice}. psm/sapnet: trained on the fit half, with the point constraint "
        "(default) and without.",
        "",
        "| selector | half | mask mIoU | mIoU_box | group err | local err | gap closed |",
        "|---|---|---|---|---|---|---|",
    ]
    order = ["top1", "largest", "psm (no constraint)", "psm", "sapnet (no constraint)", "sapnet",
             "point-aware", "oracle"]  # fmt: skip
    for half in HALVES:
        lo, hi = rows["top1"][half]["mask_miou"], rows["oracle"][half]["mask_miou"]
        for name in order:
            r = rows[name][half]
            gap = (r["mask_miou"] - lo) / (hi - lo) if hi > lo else float("nan")
            cells = [name, half] + [f"{100 * r[k]:.1f}" for k in METRICS] + [f"{100 * gap:.0f} %"]
            lines.append("| " + " | ".join(cells) + " |")
    md = "\n".join(lines)
    print(md)
    atomic_write_bytes(work / "dev_table.md", (md + "\n").encode())
    atomic_write_json(work / "dev_table.json", {"choice": choice, "rows": rows}, indent=2)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("subset-store", "fit", "table"))
    parser.add_argument("--work", type=Path, default=REPO / "runs/dev")
    parser.add_argument("--gt", type=Path, default=None, help="GT COCO JSON of the dev data")
    args = parser.parse_args(argv)
    if args.step == "subset-store":
        subset_store(args.work, "fit")
        subset_store(args.work, "held_out")
        return 0
    if args.gt is None:
        parser.error("--gt is needed")
    if args.step == "fit":
        fit_point_aware(args.work, args.gt)
    else:
        table(args.work, args.gt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
