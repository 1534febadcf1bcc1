"""`sapnet review`: rank pseudo labels by how likely their mask is wrong; write the K worst as a COCO file.

Output folder ``OUT/``:

- ``todo.json``: a COCO instances file of the images holding flagged objects and those objects only, with the
  pseudo mask as the starting shape (polygons by default, which CVAT and Label Studio import; ``--format rle``
  keeps the exact RLE). Each annotation keeps its pseudo-label ``id`` and carries
  ``attributes: {sapnet_id, review_rank, review_score, reasons}``; ``info.sapnet_review`` lists the ids sent out,
  which lets ``sapnet merge-corrections`` tell a deleted object from one never sent.
- ``ranking.csv``: every object, most suspicious first, with its signals.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from skimage import measure

from stages import __version__
from stages.common.config import save_resolved_config
from stages.common.errors import InputError
from stages.common.io import atomic_write_bytes, atomic_write_json, load_json
from stages.common.selections import Selections, load_selections
from stages.export.agreement import paired_mask_iou
from stages.export.gt import image_groups, rle_areas_boxes
from stages.export.report import fill_ratio
from stages.review.config import ReviewConfig
from stages.review.features import (
    SIGNALS,
    Signals,
    reasons,
    review_score,
    same_class_points_inside,
    size_outlier,
)

log = logging.getLogger(__name__)


@dataclass
class PseudoSet:
    """A pseudo-label file as per-object arrays (P objects, file order)."""

    path: Path
    doc: dict[str, Any]
    ann_id: np.ndarray
    image_id: np.ndarray
    category_id: np.ndarray
    rles: list[dict[str, Any]]
    score: np.ndarray
    xy: np.ndarray | None
    proposal_index: np.ndarray | None
    image_size: dict[int, tuple[int, int]]


def load_pseudo(path: str | Path) -> PseudoSet:
    """Read a pseudo-label COCO file (compressed RLE masks); InputError names the file and the id."""
    path = Path(path)
    doc = load_json(path, "pseudo-label file")
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise InputError(
            f"pseudo-label file {path}: expected a COCO instances file with 'annotations'"
        )
    try:
        image_size = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in doc["images"]}
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(
            f"pseudo-label file {path}: an image record lacks id/height/width ({err})"
        ) from None
    anns = doc["annotations"]
    rles = []
    for a in anns:
        seg = a.get("segmentation")
        if not isinstance(seg, dict) or not isinstance(seg.get("counts"), str):
            raise InputError(
                f"pseudo-label file {path}: annotation {a.get('id')} has no compressed RLE segmentation"
            )
        if a.get("image_id") not in image_size:
            raise InputError(
                f"pseudo-label file {path}: annotation {a.get('id')} is on unknown image {a.get('image_id')}"
            )
        rles.append({"size": list(seg["size"]), "counts": seg["counts"]})
    ids = np.array([int(a["id"]) for a in anns], np.int64)
    if len(np.unique(ids)) != len(ids):
        raise InputError(f"pseudo-label file {path}: annotation ids are not unique")
    has_xy = all("point" in a for a in anns)
    has_idx = all("proposal_index" in a for a in anns)
    return PseudoSet(
        path=path,
        doc=doc,
        ann_id=ids,
        image_id=np.array([int(a["image_id"]) for a in anns], np.int64),
        category_id=np.array([int(a["category_id"]) for a in anns], np.int64),
        rles=rles,
        score=np.array([float(a.get("score", 0.0)) for a in anns], np.float64),
        xy=np.array([a["point"] for a in anns], np.float64).reshape(-1, 2) if has_xy else None,
        proposal_index=np.array([int(a["proposal_index"]) for a in anns]) if has_idx else None,
        image_size=image_size,
    )


def _selection_rows(sel: Selections, ann_id: np.ndarray, source: str) -> np.ndarray:
    """``(P,)`` row of each pseudo object in the selections; InputError for ids the selections lack."""
    order = np.argsort(sel.ann_id, kind="stable")
    pos = np.clip(np.searchsorted(sel.ann_id[order], ann_id), 0, max(len(order) - 1, 0))
    found = sel.ann_id[order][pos] == ann_id if len(order) else np.zeros(len(ann_id), bool)
    if not found.all():
        missing = ann_id[~found][:5].tolist()
        raise InputError(
            f"selections {source} hold no object with annotation id(s) {missing} of the pseudo labels"
        )
    return order[pos]


def alternative_picks(
    pseudo: PseudoSet, sel: Selections | None, rows: np.ndarray | None, store: Any | None
) -> list[list[dict[str, Any]]]:
    """Masks other selectors would have chosen, per object: with the store the backend top-1 and the
    largest proposal, and with the selections too the PSM top-1. Each a list of P RLE dicts."""
    if store is None:
        return []
    srows = store_rows(store, pseudo.ann_id)
    counts = store.rle(srows)  # (P, M)
    scores, areas = store.scores()[srows], store.areas()[srows]
    picks = [np.argmax(scores, axis=1), np.argmax(areas, axis=1)]
    if sel is not None and rows is not None:
        picks.append(np.asarray(sel.psm_top1)[rows])
    p = np.arange(len(pseudo.ann_id))
    return [
        [
            {"size": pseudo.rles[i]["size"], "counts": str(c)}
            for i, c in zip(p.tolist(), counts[p, index].tolist(), strict=True)
        ]
        for index in picks
    ]


def store_rows(store: Any, ann_id: np.ndarray) -> np.ndarray:
    """``(P,)`` row of each annotation id in the store's object table (InputError when absent)."""
    ids = store.objects.ann_id
    order = np.argsort(ids, kind="stable")
    pos = np.clip(np.searchsorted(ids[order], ann_id), 0, len(order) - 1)
    found = ids[order][pos] == ann_id
    if not found.all():
        raise InputError(
            f"proposal store {store.path} holds no object with annotation id(s) "
            f"{ann_id[~found][:5].tolist()} of the pseudo labels"
        )
    return order[pos]


def compute_signals(
    pseudo: PseudoSet, sel: Selections | None, store: Any | None, source: str = "selections"
) -> Signals:
    """The review signals of every pseudo object (see :mod:`stages.review.features`)."""
    p = len(pseudo.ann_id)
    area, box = rle_areas_boxes(pseudo.rles)
    hw = np.array([pseudo.image_size[int(i)] for i in pseudo.image_id.tolist()], np.float64)
    hw = hw.reshape(-1, 2)
    confidence = pseudo.score
    rows = None
    if sel is not None:
        rows = _selection_rows(sel, pseudo.ann_id, source)
        confidence = np.asarray(sel.bag_score, np.float64)[rows]
    disagree = np.zeros(p)
    alts = alternative_picks(pseudo, sel, rows, store)
    if alts:
        ious = [paired_mask_iou(pseudo.rles, alt, pseudo.image_id) for alt in alts]
        disagree = 1.0 - np.mean(ious, axis=0)
    elif sel is not None and rows is not None and pseudo.proposal_index is not None:
        # no store: whether PSM chose another proposal than the pseudo label
        disagree = (np.asarray(sel.psm_top1)[rows] != pseudo.proposal_index).astype(np.float64)
    foreign = np.zeros(p)
    if pseudo.xy is not None:
        for _, rows_img in image_groups(pseudo.image_id):
            masks = mask_utils.decode([pseudo.rles[r] for r in rows_img]).transpose(2, 0, 1) > 0
            foreign[rows_img] = same_class_points_inside(
                masks, pseudo.xy[rows_img], pseudo.category_id[rows_img]
            )
    return Signals(
        low_score=-confidence,
        disagree=disagree,
        foreign_point=foreign,
        size_outlier=size_outlier(area, hw[:, 0] * hw[:, 1], pseudo.category_id),
        low_fill=-fill_ratio(area, box),
    )


def parse_count(count: str, total: int) -> int:
    """``"50"`` -> 50, ``"10%"`` -> 10 % of ``total`` (rounded, at least 1 when total > 0), capped at total."""
    text = str(count).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 <= pct <= 100:
                raise ValueError
            k = max(1, round(total * pct / 100)) if total and pct > 0 else 0
        else:
            k = int(text)
            if k < 0:
                raise ValueError
    except ValueError:
        raise InputError(
            f"--count must be a number of objects or a percentage, got {count!r}"
        ) from None
    return min(k, total)


def mask_to_polygons(mask: np.ndarray, tolerance: float = 1.0) -> list[list[float]]:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` of a bool ``(H, W)`` mask's outer contours.

    Contours from scikit-image at the 0.5 level of the zero-padded mask (pixel-index coordinates shifted by
    +0.5 to COCO's edge coordinates), simplified by ``tolerance`` pixels; pieces with < 3 points dropped.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    polys = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour, tolerance)
        if len(contour) < 4:  # closed: first == last, so 3 distinct points need 4 rows
            continue
        xy = (
            contour[:, ::-1] - 1 + 0.5
        )  # (row, col) -> (x, y); undo the padding; pixel centre -> edge
        polys.append([round(float(v), 2) for v in xy[:-1].reshape(-1)])
    return polys


@dataclass
class ReviewResult:
    todo: Path
    ranking: Path
    count: int
    total: int


def run_review(cfg: ReviewConfig) -> ReviewResult:
    """Rank the pseudo labels of ``cfg.pseudo`` and write ``todo.json`` / ``ranking.csv`` to ``cfg.out``."""
    cfg.validate()
    pseudo = load_pseudo(cfg.pseudo)
    sel = load_selections(cfg.selections) if cfg.selections is not None else None
    store = _open_store(cfg, sel, pseudo)
    signals = compute_signals(pseudo, sel, store, str(cfg.selections))
    score = review_score(signals, cfg.weights)
    order = np.lexsort((pseudo.ann_id, -score))  # most suspicious first, ties by id
    k = parse_count(cfg.count, len(order))
    flagged = order[:k]
    why = reasons(signals)
    doc = _todo_doc(cfg, pseudo, flagged, score, why)
    todo = cfg.out / "todo.json"
    atomic_write_json(todo, doc, compact=True)
    ranking = cfg.out / "ranking.csv"
    atomic_write_bytes(ranking, _ranking_csv(pseudo, order, score, signals, why).encode())
    log.info("flagged %d of %d objects -> %s", k, len(order), todo)
    save_resolved_config(cfg, Path(cfg.out) / "config.yaml")
    return ReviewResult(todo, ranking, k, len(order))


def _open_store(cfg: ReviewConfig, sel: Selections | None, pseudo: PseudoSet) -> Any | None:
    from stages.propose.store import ProposalStore

    path = cfg.store
    recorded = [(pseudo.doc.get("info") or {}).get("store")]
    if sel is not None:
        recorded.insert(0, sel.meta.get("store", {}).get("path"))
    for candidate in recorded:
        if path is None and candidate and Path(candidate).exists():
            path = Path(candidate)
    if path is None:
        log.info("no proposal store: disagreement from the selections' indices only")
        return None
    return ProposalStore.open(path)


def _todo_doc(
    cfg: ReviewConfig,
    pseudo: PseudoSet,
    flagged: np.ndarray,
    score: np.ndarray,
    why: list[list[str]],
) -> dict[str, Any]:
    anns_in = pseudo.doc["annotations"]
    image_ids = {int(pseudo.image_id[r]) for r in flagged.tolist()}
    images = [im for im in pseudo.doc["images"] if int(im["id"]) in image_ids]
    anns = []
    for rank, r in enumerate(flagged.tolist(), start=1):
        src = anns_in[r]
        rle = pseudo.rles[r]
        seg: Any = rle
        if cfg.format == "polygon":
            h, w = rle["size"]
            polys = mask_to_polygons(
                mask_utils.decode({"size": [h, w], "counts": rle["counts"]}) > 0
            )
            seg = polys if polys else rle  # a mask too small for a polygon keeps its RLE
        ann = {
            "id": int(src["id"]),
            "image_id": int(src["image_id"]),
            "category_id": int(src["category_id"]),
            "iscrowd": 0,
            "segmentation": seg,
            "bbox": src.get("bbox"),
            "area": src.get("area"),
            "attributes": {
                "sapnet_id": int(src["id"]),
                "review_rank": rank,
                "review_score": round(float(score[r]), 4),
                "reasons": ",".join(why[r]),
            },
        }
        if "point" in src:
            ann["point"] = src["point"]
        anns.append(ann)
    info = {
        "description": f"sapnet review: the {len(anns)} most suspicious pseudo labels of {pseudo.path}",
        "version": __version__,
        "date_created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "sapnet_review": {
            "pseudo": str(pseudo.path),
            "count": len(anns),
            "total": len(pseudo.ann_id),
            "weights": cfg.weights,
            "ids": [a["id"] for a in anns],
        },
    }
    return {
        "info": info,
        "licenses": pseudo.doc.get("licenses", []),
        "images": images,
        "categories": pseudo.doc.get("categories", []),
        "annotations": anns,
    }


def _ranking_csv(
    pseudo: PseudoSet, order: np.ndarray, score: np.ndarray, signals: Signals, why: list[list[str]]
) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["rank", "id", "image_id", "category_id", "review_score", *SIGNALS, "reasons"])
    d = signals.as_dict()
    for rank, r in enumerate(order.tolist(), start=1):
        writer.writerow(
            [rank, int(pseudo.ann_id[r]), int(pseudo.image_id[r]), int(pseudo.category_id[r])]
            + [f"{score[r]:.4f}"]
            + [f"{d[n][r]:.4f}" for n in SIGNALS]
            + [" ".join(why[r])]
        )
    return buf.getvalue()
