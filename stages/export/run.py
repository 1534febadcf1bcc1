"""`run_export` (pseudo-label COCO JSON per selector, report, overlays) and `run_evaluate` (any COCO file)."""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from stages import __version__
from stages.common.annotations import load_coco
from stages.common.config import save_resolved_config, sidecar_config_path
from stages.common.errors import InputError, StoreError
from stages.common.io import check_output_path, read_image_rgb
from stages.common.masks import decode_rles
from stages.common.selections import Selections, check_matches_store, load_selections
from stages.export.config import (
    AUX_RANKS,
    AUX_WEIGHT,
    EvaluateConfig,
    ExportConfig,
    output_paths,
)
from stages.export.gt import (
    GroundTruth,
    check_images,
    load_ground_truth,
    match_annotations,
    proposal_gt_iou,
    xywh_to_xyxy,
)
from stages.export.html_report import GalleryInputs, HtmlReport, write_html_report
from stages.export.point_aware import (
    allowed,
    constrain_aux,
    neighbour_counts,
    penalty,
    proposal_consensus,
)
from stages.export.pseudo import build_annotations, load_predictions, rle_dicts, write_pseudo_jsons
from stages.export.report import (
    PredSet,
    build_report,
    evaluate_predictions,
    fill_ratio,
    write_report,
)
from stages.export.selectors import (
    SELECTORS,
    SelectorInputs,
    aux_proposal_indices,
    choose_proposals,
)
from stages.export.viz import InstanceLayer, choose_images, write_image_overlays
from stages.propose.store import ProposalStore

log = logging.getLogger(__name__)

ORACLE_NOTE = (
    "ORACLE selector: each mask is the proposal with the best IoU with the ground truth. An upper bound for "
    "analysis only; NOT training data (it reads the GT masks)."
)


@dataclass
class ExportResult:
    """What `run_export` wrote: one pseudo-label file per selector, plus optional report and overlays."""

    outputs: dict[str, Path]
    num_objects: int
    skipped: list[tuple[int, str]] = field(default_factory=list)
    report: dict[str, Any] | None = None
    report_paths: tuple[Path, Path] | None = None
    viz_paths: list[Path] = field(default_factory=list)
    config_path: Path | None = None
    html: HtmlReport | None = None


# Objects per step of the streamed export: only this many objects' proposal RLEs and annotations are in
# memory at a time (COCO train2017: 860k objects x 6 proposals would otherwise all be held).
CHUNK_OBJECTS = 20_000


def _chunks(n: int) -> list[slice]:
    return [slice(lo, min(lo + CHUNK_OBJECTS, n)) for lo in range(0, n, CHUNK_OBJECTS)]


@dataclass
class _Exported:
    """One selector's choice kept for the report and the overlays (P' exported objects, arrays only)."""

    counts: np.ndarray  # (P',) chosen RLE counts
    score: np.ndarray  # (P',) pseudo-label scores as written (rounded to 6 decimals)
    index: np.ndarray  # (P',) chosen proposal index


def _subset_selections(sel: Selections, keep: np.ndarray) -> Selections:
    arrays = {f.name: getattr(sel, f.name)[keep] for f in fields(sel) if f.name != "meta"}
    return Selections(**arrays, meta=sel.meta)


def _pred_set(
    name: str,
    ex: _Exported,
    ann_id: np.ndarray,
    image_id: np.ndarray,
    category_id: np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
    extra: dict[str, np.ndarray] | None,
) -> PredSet:
    """The exported pseudo labels as the report's predictions (the same numbers as the written file)."""
    rles = rle_dicts(ex.counts, heights, widths)
    box = mask_utils.toBbox(rles) if rles else np.zeros((0, 4))
    return PredSet(
        name=name,
        image_id=np.asarray(image_id, dtype=np.int64),
        category_id=np.asarray(category_id, dtype=np.int64),
        score=ex.score,
        box=xywh_to_xyxy(np.asarray(box, dtype=np.float64)),
        rles=rles,
        ann_id=np.asarray(ann_id, dtype=np.int64),
        box_extra=extra,
    )


def _categories(store: ProposalStore) -> list[dict[str, Any]]:
    """The store's ``categories`` (stored at creation); older stores: read from their source JSON."""
    cats = store.attrs.get("categories")
    if cats:
        return list(cats)
    source = store.attrs.get("source_json")
    if source and Path(source).is_file():
        return list(load_coco(source, "the store's source JSON")["categories"])
    raise StoreError(
        f"proposal store {store.path} records no categories and its source JSON {source} is gone; "
        "re-run `sapnet propose`"
    )


def run_export(cfg: ExportConfig) -> ExportResult:
    """Export pseudo labels of every selector in ``cfg.selectors``; report and overlays when asked."""
    cfg.validate()
    for path in output_paths(cfg.out, cfg.selectors).values():
        check_output_path(path, "file", "pseudo-label file")
    for folder, what in ((cfg.report, "--report folder"), (cfg.viz, "--viz folder")):
        if folder is not None:
            check_output_path(folder, "dir", what)
    store = ProposalStore.open(cfg.store)
    store.require_complete()
    objs, images = store.objects, store.images
    sel = None
    if cfg.selections is not None:
        sel = load_selections(cfg.selections)
        check_matches_store(sel, store)

    status = store.point_status()
    keep = np.nonzero(status == 1)[0]
    errors = dict(store.errors())
    skipped = [
        (int(a), errors.get(int(a), "no proposals")) for a in objs.ann_id[status != 1].tolist()
    ]
    for ann_id, why in skipped:
        log.warning("object %d has no proposals (%s); not exported", ann_id, why)

    image_index = objs.image_index[keep]
    heights, widths = images.height[image_index], images.width[image_index]
    image_id = images.image_id[image_index]
    ann_id, category_id, xy = objs.ann_id[keep], objs.category_id[keep], objs.xy[keep]
    scores, areas = store.scores()[keep], store.areas()[keep]

    gt: GroundTruth | None = None
    gt_rows = None
    if cfg.gt is not None:
        gt = load_ground_truth(cfg.gt)
        source = f"proposal store {store.path}"
        check_images(gt, images.image_id, images.height, images.width, source)
        gt_rows = match_annotations(gt, ann_id, image_id, category_id, source)
    gt_iou = None
    if "oracle" in cfg.selectors:
        assert gt is not None and gt_rows is not None
        gt_iou = np.concatenate(
            [
                proposal_gt_iou(
                    store.rle(keep[c]), heights[c], widths[c], image_index[c], gt_rows[c], gt
                )
                for c in _chunks(len(keep))
            ]
        ).reshape(len(keep), store.num_proposals)
    sel_sub = _subset_selections(sel, keep) if sel is not None else None
    inputs = SelectorInputs(
        scores=scores, areas=areas, selections=sel_sub, gt_iou=gt_iou,
        point_rule=cfg.point_aware.rule, constrain=cfg.point_constraint,
    )  # fmt: skip
    n_fallback = 0
    learned = any(SELECTORS[n].needs_selections or cfg.wants_aux(n) for n in cfg.selectors)
    if any(SELECTORS[n].needs_points for n in cfg.selectors) or (cfg.point_constraint and learned):
        pa = cfg.point_aware
        boxes = store.boxes()[keep]
        inputs.boxes = boxes
        need_rle = pa.test == "mask" or ("point-aware" in cfg.selectors and pa.rule == "consensus")
        counts = store.rle(keep) if need_rle else None  # (P', M) RLEs, only for these two
        same, other = neighbour_counts(
            image_index, category_id, xy, heights, widths, counts=counts, boxes=boxes, test=pa.test
        )
        pen = penalty(same, other, pa.scope)
        inputs.allowed = allowed(pen)
        n_fallback = int((pen.min(axis=1) > 0).sum())
        if "point-aware" in cfg.selectors and pa.rule == "consensus":
            inputs.consensus = proposal_consensus(counts, heights, widths, image_index)

    attrs = store.attrs
    images_json = [
        {"id": int(i), "file_name": f, "height": int(h), "width": int(w)}
        for i, f, h, w in zip(
            images.image_id.tolist(),
            images.file_name,
            images.height.tolist(),
            images.width.tolist(),
            strict=True,
        )
    ]
    categories = _categories(store)
    outputs = output_paths(cfg.out, cfg.selectors)
    exported: dict[str, _Exported] = {}
    pending: list[tuple[Path, dict[str, Any], Any]] = []
    for name in cfg.selectors:
        choice = choose_proposals(name, inputs, source=str(cfg.selections or store.path))
        aux_index = aux_keep = None
        if cfg.wants_aux(name):
            assert sel_sub is not None
            aux_index = aux_proposal_indices(sel_sub.prm_scores, AUX_RANKS)
            if cfg.point_constraint and inputs.allowed is not None:
                aux_index, aux_keep = constrain_aux(
                    aux_index, inputs.allowed, sel_sub.prm_scores, AUX_RANKS
                )
        chosen = np.empty(len(keep), dtype=object)

        def annotation_chunks(
            choice: Any = choice,
            aux_index: Any = aux_index,
            aux_keep: Any = aux_keep,
            chosen: np.ndarray = chosen,
        ) -> Any:
            """Annotations CHUNK_OBJECTS at a time, reading only those objects' RLEs from the store."""
            for c in _chunks(len(keep)):
                counts = store.rle(keep[c])  # (k, M)
                chosen[c] = counts[np.arange(len(counts)), choice.index[c]]
                aux_counts = aux_i = None
                if aux_index is not None:
                    aux_i = aux_index[c]
                    aux_counts = np.take_along_axis(counts, aux_i, axis=1)
                yield build_annotations(
                    ann_id[c], image_id[c], category_id[c], xy[c], heights[c], widths[c],
                    chosen[c], choice.score[c], choice.index[c], aux_counts, aux_i,
                    aux_keep=None if aux_keep is None else aux_keep[c],
                )  # fmt: skip

        spec = SELECTORS[name]
        info: dict[str, Any] = {
            "description": f"sapnet pseudo labels, selector {name!r}",
            "selector": name,
            "training_data": spec.training_data,
            "version": __version__,
            "date_created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "store": str(store.path),
            "source_json": attrs.get("source_json"),
            "backend": attrs.get("backend"),
            "selections": str(cfg.selections) if cfg.selections is not None else None,
            "aux_masks": aux_index is not None,
            "num_objects": len(keep),
            "skipped": [{"id": a, "reason": r} for a, r in skipped],
        }
        if aux_index is not None:
            info |= {"aux_ranks": list(AUX_RANKS), "aux_weight": AUX_WEIGHT}
        if spec.needs_points or (
            cfg.point_constraint and (spec.needs_selections or aux_index is not None)
        ):
            info["point_aware"] = {
                "rule": cfg.point_aware.rule if spec.needs_points else None,
                "scope": cfg.point_aware.scope,
                "test": cfg.point_aware.test,
                "constraint": bool(cfg.point_constraint and not spec.needs_points),
                "objects_without_clean_proposal": n_fallback,
            }
        if not spec.training_data:
            info["note"] = ORACLE_NOTE
        header = {"info": info, "images": images_json, "categories": categories}
        pending.append((outputs[name], header, annotation_chunks()))
        score = np.array([round(float(v), 6) for v in choice.score.tolist()], dtype=np.float64)
        exported[name] = _Exported(chosen, score, np.asarray(choice.index, dtype=np.int64))
    # All selectors' files or none: every temporary is written before the first rename, so a failure (disk
    # full, permissions, kill -9) never leaves a mix of old and new pseudo-label files.
    for (path, _, _), n in zip(pending, write_pseudo_jsons(pending), strict=True):
        log.info("wrote %d pseudo labels to %s", n, path)

    result = ExportResult(outputs=outputs, num_objects=len(keep), skipped=skipped)
    if cfg.report is not None and gt is not None:
        assert gt_rows is not None
        rv_bag = fill_ratio(areas, store.boxes()[keep])
        img_ids = [int(im["id"]) for im in images_json]
        results = []
        for name, ex in exported.items():
            extra = {"bms": sel_sub.bms_box} if name == "sapnet" and sel_sub is not None else None
            preds = _pred_set(name, ex, ann_id, image_id, category_id, heights, widths, extra)
            preds.rv_bag = rv_bag
            results.append(
                evaluate_predictions(preds, gt, img_ids, cfg.thresholds, gt_rows, cfg.ap_max_images)
            )
        notes = []
        if inputs.allowed is not None:
            pa = cfg.point_aware
            notes.append(
                f"Point test: {pa.test}, scope {pa.scope}; point-aware rule: {pa.rule}; point constraint "
                f"on psm/sapnet/aux masks: {'on' if cfg.point_constraint else 'off'}; {n_fallback} "
                "object(s) have no proposal free of other points."
            )
        result.report = build_report(results, gt, len(images_json), cfg.thresholds, notes)
        result.report_paths = write_report(result.report, cfg.report)
        log.info("report written to %s", result.report_paths[0])
    if cfg.report is not None:
        proposal_scores = {"backend score": scores, "area": areas}
        if sel_sub is not None:
            proposal_scores |= {"PSM score": sel_sub.psm_scores, "PRM score": sel_sub.prm_scores}
        gallery = GalleryInputs(
            images=images_json,
            categories={int(c["id"]): str(c.get("name", c["id"])) for c in categories},
            image_index=image_index,
            ann_id=ann_id,
            category_id=category_id,
            xy=xy,
            picks={n: rle_dicts(ex.counts, heights, widths) for n, ex in exported.items()},
            scores={n: ex.score for n, ex in exported.items()},
            primary=cfg.selectors[0],
            proposals=store.rle(keep),  # every proposal: the page's per-object strips
            proposal_index={n: ex.index for n, ex in exported.items()},
            proposal_scores=proposal_scores,
            gt=gt,
            gt_rows=gt_rows,
            images_dir=_images_dir(cfg.images, store),
        )
        result.html = write_html_report(gallery, cfg.report, result.report, cfg.thresholds)
    if cfg.viz is not None and cfg.viz_count > 0:
        result.viz_paths = _write_viz(cfg, store, keep, exported, categories, gt)
    result.config_path = save_resolved_config(
        cfg,
        sidecar_config_path(outputs[cfg.selectors[0]]),
        outputs={k: str(v) for k, v in outputs.items()},
    )
    return result


def _images_dir(images: Path | None, store: ProposalStore) -> Path | None:
    """The image folder: the option, else the one `sapnet propose` read (when it still exists)."""
    if images is not None:
        return Path(images)
    recorded = store.attrs.get("propose_config", {}).get("images")
    return Path(recorded) if recorded and Path(recorded).is_dir() else None


def _write_viz(
    cfg: ExportConfig,
    store: ProposalStore,
    keep: np.ndarray,
    exported: dict[str, _Exported],
    categories: list[dict[str, Any]],
    gt: GroundTruth | None,
) -> list[Path]:
    """Overlays of the ``cfg.viz_count`` most crowded images, one PNG per selector plus a grid."""
    assert cfg.viz is not None
    images, objs = store.images, store.objects
    image_index = objs.image_index[keep]
    per_image = np.bincount(image_index, minlength=len(images))
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    images_dir = _images_dir(cfg.images, store)
    if images_dir is None:
        log.warning("no --images folder given: overlays are drawn on a grey canvas")
    paths: list[Path] = []
    for img in choose_images(per_image, cfg.viz_count).tolist():
        h, w = int(images.height[img]), int(images.width[img])
        file_name = images.file_name[img]
        if images_dir is not None:
            rgb = read_image_rgb(Path(images_dir) / file_name)
        else:
            rgb = np.full((h, w, 3), 128, dtype=np.uint8)
        rows = np.nonzero(image_index == img)[0]
        keep_rows = keep[rows]
        labels = [names.get(int(c), str(c)) for c in objs.category_id[keep_rows].tolist()]
        layers = {}
        for name, ex in exported.items():
            masks = decode_rles([str(c) for c in ex.counts[rows]], h, w)
            rles = rle_dicts(ex.counts[rows], np.full(len(rows), h), np.full(len(rows), w))
            boxes = xywh_to_xyxy(np.asarray(mask_utils.toBbox(rles), dtype=np.float64))
            layers[name] = InstanceLayer(masks, boxes, objs.xy[keep_rows], labels)
        gt_masks = None
        if gt is not None:
            g = gt.rows_by_image[int(images.image_id[img])]
            g = g[~gt.iscrowd[g]]
            if len(g):
                gt_masks = (
                    mask_utils.decode([gt.rles[i] for i in g]).transpose(2, 0, 1).astype(bool)
                )
        stem = Path(file_name).with_suffix("").as_posix().replace("/", "_")
        paths += write_image_overlays(cfg.viz, stem, rgb, layers, gt_masks)
    log.info("wrote %d overlay image(s) to %s", len(paths), cfg.viz)
    return paths


def _listed_ids(items: list[str], limit: int = 5) -> str:
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Score a COCO instances file or results list against ``cfg.gt``; writes the report when asked.

    Per-object metrics (IoU, errors) need annotation ids that match the GT (pseudo-label files); a results
    list gets AP only. An instances file is evaluated on its own images, a results list on all GT images.
    """
    if cfg.report is not None:
        check_output_path(cfg.report, "dir", "--report folder")
    gt = load_ground_truth(cfg.gt)
    preds, doc = load_predictions(
        cfg.pred, gt.image_size, category_ids={int(c) for c in gt.coco.getCatIds()}
    )
    source = f"predictions file {cfg.pred}"
    if doc is not None and doc.get("images"):
        ims = doc["images"]
        try:
            ids = np.array([int(im["id"]) for im in ims], dtype=np.int64)
            hs = np.array([int(im["height"]) for im in ims], dtype=np.int64)
            ws = np.array([int(im["width"]) for im in ims], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{source}: an image record lacks id/height/width: {err}") from None
        check_images(gt, ids, hs, ws, source)
        img_ids = ids.tolist()
    else:
        img_ids = sorted(gt.image_size)
    gt_rows = None
    note = None
    if preds.ann_id is not None:
        rows = gt.index_of(preds.ann_id)
        safe = np.maximum(rows, 0)
        ok = (
            (rows >= 0)
            & (gt.image_id[safe] == preds.image_id)
            & (gt.category_id[safe] == preds.category_id)
        )
        if ok.all():
            gt_rows = rows
        elif ok.any():
            bad = [
                f"id {int(a)} ({'not in the GT' if r < 0 else 'another image or class in the GT'})"
                for a, r in zip(preds.ann_id[~ok].tolist(), rows[~ok].tolist(), strict=True)
            ]
            raise InputError(
                f"{source}: {len(bad)} of {len(preds)} annotation ids do not match a GT annotation of "
                f"the same image and class: {_listed_ids(bad)}. Per-object metrics need every id to "
                "match; fix them, or drop the 'id' fields to get AP only"
            )
        else:
            note = (
                "no annotation id matches a GT annotation of the same image and class: "
                "per-object metrics skipped"
            )
    else:
        note = "predictions carry no annotation ids matching the GT: per-object metrics skipped"
    if note:
        log.info(note)
    res = evaluate_predictions(preds, gt, img_ids, cfg.thresholds, gt_rows, cfg.ap_max_images)
    if note:
        res["note"] = note
    report = build_report([res], gt, len(img_ids), cfg.thresholds)
    if cfg.report is not None:
        md, _ = write_report(report, cfg.report)
        save_resolved_config(cfg, Path(cfg.report) / "config.yaml")
        log.info("report written to %s", md)
        if preds.rles is not None:
            _evaluate_html(cfg, preds, gt, gt_rows, doc, report)
        else:
            log.info("predictions carry no masks: no report.html")
    return report


def _evaluate_html(
    cfg: EvaluateConfig,
    preds: PredSet,
    gt: GroundTruth,
    gt_rows: np.ndarray | None,
    doc: dict[str, Any] | None,
    report: dict[str, Any],
) -> HtmlReport:
    """report.html of one prediction set: GT-matched objects get IoU and errors, others only masks."""
    assert preds.rles is not None and cfg.report is not None
    ids = sorted({int(i) for i in preds.image_id.tolist()})
    records = {int(im["id"]): im for im in (doc or {}).get("images", []) if "id" in im}
    images = []
    for i in ids:
        h, w = gt.image_size[i]
        file_name = records.get(i, {}).get("file_name") or gt.coco.imgs.get(i, {}).get("file_name")
        images.append({"id": i, "file_name": file_name or str(i), "height": h, "width": w})
    row_of = {im["id"]: k for k, im in enumerate(images)}
    cats = gt.coco.dataset.get("categories", [])
    xy = None
    if doc is not None and all("point" in a for a in doc["annotations"]):
        xy = np.array([a["point"] for a in doc["annotations"]], np.float64).reshape(-1, 2)
    gallery = GalleryInputs(
        images=images,
        categories={int(c["id"]): str(c.get("name", c["id"])) for c in cats},
        image_index=np.array([row_of[int(i)] for i in preds.image_id.tolist()], np.int64),
        ann_id=preds.ann_id if preds.ann_id is not None else np.arange(len(preds)),
        category_id=preds.category_id,
        xy=xy,
        picks={preds.name: preds.rles},
        scores={preds.name: preds.score},
        primary=preds.name,
        gt=gt if gt_rows is not None else None,
        gt_rows=gt_rows,
        images_dir=cfg.images,
    )
    return write_html_report(gallery, cfg.report, report, cfg.thresholds)
