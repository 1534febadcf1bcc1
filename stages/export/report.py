"""Pseudo-label quality against the ground truth: mask/box IoU by size, COCO AP, Gap, group/local errors.

Metric definitions (the report repeats them):

- mask IoU / mIoU_box: per object, IoU of the predicted mask / its tight box with the GT instance of the same
  annotation id (GT box = the GT ``bbox`` field); means over objects, split by COCO size of the GT ``area``
  (small < 32^2 <= medium < 96^2 <= large).
- AP: pycocotools COCOeval (``segm`` and ``bbox``), the predictions scored as detections with their ``score``,
  over the evaluated images (crowd GT = ignore regions, max 100 detections per image). COCOeval is pure Python
  per (image, class) and takes hours on all of COCO train2017, so above ``AP_MAX_IMAGES`` images AP is
  computed on a seeded uniform sample of that many images (``ap_max_images``; None = every image); the
  report says so. Every other metric always uses every object. docs/scaling.md measures the sampling error.
- group error: the mask covers >= 50% of another non-crowd same-class GT instance of the image.
- local error: IoU with its own GT < 0.5 and >= 80% of the mask inside that GT (a part of the object).
- Gap (paper Table 7, docs/method.md §13): R_v = mask area / tight-box area; R_vmax = max R_v over the object's proposal
  bag; T_rv = mean R_vmax over all objects; Gap = mean(R_v(selected) - R_v(GT)) over objects with R_vmax > T_rv.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.cocoeval import COCOeval

from stages.common.boxes import box_iou_aligned
from stages.common.io import atomic_write_bytes, atomic_write_json
from stages.export.config import AP_MAX_IMAGES, ErrorThresholds
from stages.export.gt import GroundTruth, image_groups, pairwise_intersections, rle_areas_boxes

SIZE_NAMES = ("small", "medium", "large")
AP_SAMPLE_SEED = 0
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class PredSet:
    """N predictions (pseudo labels or detections) to score.

    Attributes:
        name: shown as the column title. image_id, category_id: ``(N,)`` int64. score: ``(N,)``.
        box: ``(N, 4)`` xyxy (edge coordinates). rles: compressed RLE dicts, or None (boxes only).
        ann_id: ``(N,)`` annotation ids matching GT ids (enables per-object metrics), or None.
        rv_bag: ``(N, M)`` R_v of every proposal of the object's bag (enables the Gap metric), or None.
        box_extra: optional named ``(N, 4)`` xyxy boxes also compared with the GT box (e.g. the BMS box).
    """

    name: str
    image_id: np.ndarray
    category_id: np.ndarray
    score: np.ndarray
    box: np.ndarray
    rles: list[dict[str, Any]] | None = None
    ann_id: np.ndarray | None = None
    rv_bag: np.ndarray | None = None
    box_extra: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.image_id.shape[0])


# --------------------------------------------------------------------------- pure metric functions
def size_bins(area: np.ndarray) -> np.ndarray:
    """COCO size class of ``area (N,)``: 0 small (< 32^2), 1 medium (< 96^2), 2 large."""
    area = np.asarray(area, dtype=np.float64)
    return (area >= 32**2).astype(np.int64) + (area >= 96**2).astype(np.int64)


def paired_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of row-paired xyxy boxes ``a (N, 4)``, ``b (N, 4)`` -> ``(N,)`` (0 when both are empty)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return box_iou_aligned(a, b)


def overlap_stats(
    inter: np.ndarray,
    area_pred: np.ndarray,
    area_gt: np.ndarray,
    own: np.ndarray,
    other_ok: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-prediction overlaps with the GT instances of one image.

    Args:
        inter: ``(k, g)`` intersection areas of k predicted masks with g GT masks.
        area_pred: ``(k,)``; area_gt: ``(g,)`` mask areas.
        own: ``(k,)`` column of each prediction's own GT instance.
        other_ok: ``(k, g)`` bool, which GT instances count as "another instance" for the group error
            (same class, non-crowd); the own column is excluded here.

    Returns ``(iou (k,), inside (k,), cover_other (k,))``: IoU with the own GT, fraction of the predicted
    mask inside the own GT, and the largest fraction of another eligible GT instance covered by the mask.
    """
    k = inter.shape[0]
    rows = np.arange(k)
    i_own = inter[rows, own]
    union = area_pred + area_gt[own] - i_own
    iou = np.where(union > 0, i_own / np.where(union > 0, union, 1.0), 0.0)
    inside = np.where(area_pred > 0, i_own / np.where(area_pred > 0, area_pred, 1.0), 0.0)
    cover = inter / np.where(area_gt > 0, area_gt, 1.0)[None, :]
    eligible = np.asarray(other_ok, dtype=bool).copy()
    eligible[rows, own] = False
    cover_other = np.where(eligible, cover, 0.0).max(axis=1, initial=0.0)
    return iou, inside, cover_other


def classify_errors(
    iou: np.ndarray, inside: np.ndarray, cover_other: np.ndarray, thr: ErrorThresholds
) -> tuple[np.ndarray, np.ndarray]:
    """``(group (N,), local (N,))`` bool error flags (definitions in :class:`ErrorThresholds`)."""
    group = cover_other >= thr.group_cover
    local = (iou < thr.local_iou) & (inside >= thr.local_inside)
    return group, local


def fill_ratio(area: np.ndarray, box: np.ndarray) -> np.ndarray:
    """R_v = mask area / box area for ``area (...)`` and xyxy ``box (..., 4)``; 0 for an empty box."""
    box = np.asarray(box, dtype=np.float64)
    box_area = np.prod(np.clip(box[..., 2:] - box[..., :2], 0, None), axis=-1)
    return np.where(box_area > 0, np.asarray(area) / np.where(box_area > 0, box_area, 1.0), 0.0)


def gap_metric(rv_bag: np.ndarray, rv_selected: np.ndarray, rv_gt: np.ndarray) -> dict[str, Any]:
    """The paper's Gap (Table 7): mean(R_v(selected) - R_v(GT)) over objects with R_vmax > T_rv.

    Args:
        rv_bag: ``(N, M)`` R_v of every proposal; rv_selected, rv_gt: ``(N,)``.

    Returns ``{"gap", "gap_abs", "t_rv", "num_instances"}`` (gap None when no object passes T_rv).
    """
    if rv_bag.shape[0] == 0:
        return {"gap": None, "gap_abs": None, "t_rv": None, "num_instances": 0}
    rv_max = rv_bag.max(axis=1)
    t_rv = float(rv_max.mean())
    hit = rv_max > t_rv
    diff = (rv_selected - rv_gt)[hit]
    return {
        "gap": float(diff.mean()) if hit.any() else None,
        "gap_abs": float(np.abs(diff).mean()) if hit.any() else None,
        "t_rv": t_rv,
        "num_instances": int(hit.sum()),
    }


def mean_by_size(values: np.ndarray, bins: np.ndarray) -> dict[str, float | None]:
    """``{"all", "small", "medium", "large"}`` means of ``values (N,)`` (None for an empty group)."""
    out: dict[str, float | None] = {"all": float(values.mean()) if len(values) else None}
    for b, name in enumerate(SIZE_NAMES):
        sel = values[bins == b]
        out[name] = float(sel.mean()) if len(sel) else None
    return out


def coco_ap(
    gt: GroundTruth, preds: PredSet, iou_type: str, img_ids: list[int]
) -> dict[str, float | None]:
    """COCO AP (``AP_KEYS``) of ``preds`` scored as detections (``iou_type`` ``segm`` or ``bbox``).

    Values pycocotools reports as -1 (no GT in that size range) become None; no predictions give 0.
    """
    if len(preds) == 0:
        return dict.fromkeys(AP_KEYS, 0.0)
    base = [
        {"image_id": int(i), "category_id": int(c), "score": float(s)}
        for i, c, s in zip(
            preds.image_id.tolist(), preds.category_id.tolist(), preds.score.tolist(), strict=True
        )
    ]
    if iou_type == "segm":
        assert preds.rles is not None
        dets = [{**d, "segmentation": r} for d, r in zip(base, preds.rles, strict=True)]
    else:
        xywh = np.concatenate([preds.box[:, :2], preds.box[:, 2:] - preds.box[:, :2]], axis=1)
        dets = [{**d, "bbox": [float(v) for v in b]} for d, b in zip(base, xywh, strict=True)]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.coco.loadRes(dets)
        ev = COCOeval(gt.coco, dt, iou_type)
        ev.params.imgIds = sorted(int(i) for i in img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float(v) if v >= 0 else None) for k, v in zip(AP_KEYS, ev.stats[:6], strict=True)}


def ap_image_sample(
    img_ids: list[int], max_images: int | None, seed: int = AP_SAMPLE_SEED
) -> list[int]:
    """The images COCO AP is computed on: all of ``img_ids`` (sorted) when ``max_images`` is None or not
    smaller, else a seeded uniform sample of ``max_images`` of them (sorted; the same for every selector)."""
    ids = np.unique(np.asarray(img_ids, dtype=np.int64))
    if max_images is None or len(ids) <= max_images:
        return ids.tolist()
    if max_images < 1:
        raise ValueError(f"ap_max_images must be >= 1 or None, got {max_images}")
    pick = np.random.default_rng(seed).choice(len(ids), size=max_images, replace=False)
    return np.sort(ids[pick]).tolist()


def _restrict(preds: PredSet, img_ids: list[int]) -> PredSet:
    """The predictions on ``img_ids`` only (for a sampled COCO AP)."""
    keep = np.nonzero(np.isin(preds.image_id, np.asarray(img_ids, dtype=np.int64)))[0]
    if len(keep) == len(preds):
        return preds
    return PredSet(
        name=preds.name,
        image_id=preds.image_id[keep],
        category_id=preds.category_id[keep],
        score=preds.score[keep],
        box=preds.box[keep],
        rles=None if preds.rles is None else [preds.rles[i] for i in keep.tolist()],
    )


# --------------------------------------------------------------------------- per-object metrics
def object_overlaps(
    preds: PredSet, gt: GroundTruth, gt_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(iou, inside, cover_other)`` ``(N,)`` of predicted masks matched to GT rows (one RLE call per image)."""
    assert preds.rles is not None
    n = len(preds)
    iou, inside, cover = np.zeros(n), np.zeros(n), np.zeros(n)
    by_image = gt.rows_by_image
    for image_id, rows in image_groups(preds.image_id):
        gts = by_image[image_id]  # sorted GT rows of this image, crowd included
        inter = pairwise_intersections([preds.rles[r] for r in rows], [gt.rles[g] for g in gts])
        own = np.searchsorted(gts, gt_rows[rows])
        other_ok = (preds.category_id[rows][:, None] == gt.category_id[gts][None, :]) & (
            ~gt.iscrowd[gts]
        )[None, :]
        area_pred, _ = rle_areas_boxes([preds.rles[r] for r in rows])
        iou[rows], inside[rows], cover[rows] = overlap_stats(
            inter, area_pred, gt.mask_area[gts], own, other_ok
        )
    return iou, inside, cover


def evaluate_predictions(
    preds: PredSet,
    gt: GroundTruth,
    img_ids: list[int],
    thr: ErrorThresholds | None = None,
    gt_rows: np.ndarray | None = None,
    ap_max_images: int | None = AP_MAX_IMAGES,
) -> dict[str, Any]:
    """All report numbers of one prediction set (per-object ones only when ``gt_rows`` is given).

    Args:
        img_ids: the images evaluated by COCO AP.
        gt_rows: ``(N,)`` GT row of each prediction (matched by annotation id), or None.
        ap_max_images: COCO AP on a seeded sample of this many of ``img_ids`` when there are more
            (None: all); ``ap_images`` / ``ap_sampled`` in the result say what was used.
    """
    thr = thr or ErrorThresholds()
    res: dict[str, Any] = {"name": preds.name, "num_predictions": len(preds)}
    ap_ids = ap_image_sample(img_ids, ap_max_images)
    sampled = len(ap_ids) < len(set(img_ids))
    ap_preds = _restrict(preds, ap_ids) if sampled else preds
    res["ap_images"] = len(ap_ids)
    res["ap_sampled"] = sampled
    res["ap_segm"] = coco_ap(gt, ap_preds, "segm", ap_ids) if preds.rles is not None else None
    res["ap_bbox"] = coco_ap(gt, ap_preds, "bbox", ap_ids)
    res["matched"] = gt_rows is not None
    if gt_rows is None:
        return res
    bins = size_bins(gt.area[gt_rows])
    res["objects"] = {"all": len(preds)} | {
        name: int((bins == b).sum()) for b, name in enumerate(SIZE_NAMES)
    }
    res["box_iou"] = mean_by_size(paired_box_iou(preds.box, gt.box[gt_rows]), bins)
    for key, boxes in (preds.box_extra or {}).items():
        res[f"box_iou_{key}"] = mean_by_size(paired_box_iou(boxes, gt.box[gt_rows]), bins)
    if preds.rles is None:
        return res
    iou, inside, cover = object_overlaps(preds, gt, gt_rows)
    group, local = classify_errors(iou, inside, cover, thr)
    res["mask_iou"] = mean_by_size(iou, bins)
    n = max(len(preds), 1)
    res["errors"] = {
        "group": float(group.sum() / n),
        "local": float(local.sum() / n),
        "iou_below_0.5": float((iou < 0.5).sum() / n),
    }
    if preds.rv_bag is not None:
        area, box = rle_areas_boxes(preds.rles)
        rv_gt = fill_ratio(gt.mask_area[gt_rows], gt.mask_box[gt_rows])
        res["gap"] = gap_metric(preds.rv_bag, fill_ratio(area, box), rv_gt)
    return res


# --------------------------------------------------------------------------- rendering
def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def report_value(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...`` of a report dict, or None where a level is missing, null or not a dict."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def render_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table, one column per prediction set (selector)."""
    cols = report["selectors"]
    rows: list[tuple[str, list[str]]] = [
        ("predictions", [str(c["num_predictions"]) for c in cols]),
    ]
    for size in ("all", *SIZE_NAMES):
        rows.append(
            (f"objects ({size})", [str(report_value(c, "objects", size) or 0) for c in cols])
        )
    for size in ("all", *SIZE_NAMES):
        rows.append(
            (f"mask mIoU ({size})", [_pct(report_value(c, "mask_iou", size)) for c in cols])
        )
    for size in ("all", *SIZE_NAMES):
        rows.append((f"mIoU_box ({size})", [_pct(report_value(c, "box_iou", size)) for c in cols]))
    if any("box_iou_bms" in c for c in cols):
        rows.append(
            ("mIoU_box BMS box (all)", [_pct(report_value(c, "box_iou_bms", "all")) for c in cols])
        )
    rows.append(("group errors %", [_pct(report_value(c, "errors", "group")) for c in cols]))
    rows.append(("local errors %", [_pct(report_value(c, "errors", "local")) for c in cols]))
    rows.append(("IoU < 0.5 %", [_pct(report_value(c, "errors", "iou_below_0.5")) for c in cols]))
    rows.append(("Gap", [_num(report_value(c, "gap", "gap")) for c in cols]))
    rows.append(("Gap: T_rv", [_num(report_value(c, "gap", "t_rv")) for c in cols]))
    for iou_type in ("segm", "bbox"):
        for k in AP_KEYS:
            rows.append(
                (f"{iou_type} {k}", [_pct(report_value(c, f"ap_{iou_type}", k)) for c in cols])
            )
    header = "| metric | " + " | ".join(c["name"] for c in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    lines = [
        "# Pseudo-label quality",
        "",
        f"Ground truth: `{report['gt']}`; {report['num_images']} image(s). "
        "IoU, AP and error rates in percent.",
        "",
        *[f"{note}\n" for note in report.get("notes", [])],
        header,
        sep,
    ]
    lines += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in rows]
    sampled = [c for c in cols if c.get("ap_sampled")]
    if sampled:
        lines += [
            "",
            f"AP on a seeded uniform sample of {sampled[0]['ap_images']} of the "
            f"{report['num_images']} images (all other metrics on every object).",
        ]
    lines += ["", "Definitions:", ""] + [f"- {d}" for d in report["definitions"]]
    return "\n".join(lines) + "\n"


def definitions(thr: ErrorThresholds) -> list[str]:
    """Human-readable metric definitions for the report."""
    return [
        "mask mIoU / mIoU_box: mean IoU of each pseudo mask / its tight box with the GT instance of the "
        "same annotation id (GT box = the GT `bbox`); size by GT `area` (small < 32², medium < 96²).",
        "AP: pycocotools COCOeval (segm, bbox), pseudo labels scored as detections with `score`.",
        f"group error: the mask covers >= {thr.group_cover:.0%} of another non-crowd GT instance of the "
        "same class in the image.",
        f"local error: IoU with its own GT < {thr.local_iou:g} and >= {thr.local_inside:.0%} of the mask "
        "inside that GT.",
        "Gap (paper Table 7): R_v = mask area / box area; over objects whose bag max R_v exceeds the "
        "dataset mean T_rv, Gap = mean(R_v(selected) - R_v(GT)); needs the proposal store.",
    ]


def build_report(
    results: list[dict[str, Any]],
    gt: GroundTruth,
    num_images: int,
    thr: ErrorThresholds,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The report document: GT, thresholds, definitions, ``notes`` (lines shown above the table) and one
    result dict per prediction set."""
    return {
        "notes": list(notes or []),
        "gt": str(gt.path),
        "num_images": int(num_images),
        "thresholds": {
            "group_cover": thr.group_cover,
            "local_iou": thr.local_iou,
            "local_inside": thr.local_inside,
        },
        "definitions": definitions(thr),
        "selectors": results,
    }


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.json`` into ``out_dir`` (atomically); returns both paths."""
    out_dir = Path(out_dir)
    md, js = out_dir / "report.md", out_dir / "report.json"
    atomic_write_json(js, report, indent=2)
    atomic_write_bytes(md, render_markdown(report).encode("utf-8"))
    return md, js
