"""Pseudo-label COCO JSON: build it from a selector's choice, write it atomically, read predictions back.

One annotation per exported object (keeping the input annotation ``id``)::

    {"id", "image_id", "category_id", "iscrowd": 0,
     "segmentation": {"size": [H, W], "counts": "<compressed RLE>"},
     "bbox": [x, y, w, h] (tight box of the mask), "area": mask pixels,
     "point": [x, y] (the annotated point, pixel-index coordinates), "score": selector score,
     "proposal_index": chosen proposal in [0, M),
     "aux_segmentations": [RLE, ...], "aux_weights": [w, ...], "aux_proposal_indices": [j, ...]}  (optional)

A plain COCO reader (pycocotools, detectron2 ``load_coco_json``) ignores the extra keys.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
from pycocotools import mask as mask_utils

from stages.common.errors import InputError
from stages.common.io import (
    atomic_write_many,
    json_default,
    load_json,
)
from stages.common.masks import segmentation_problem
from stages.export.config import AUX_WEIGHT
from stages.export.gt import rle_area, xywh_to_xyxy
from stages.export.report import PredSet


def rle_dicts(counts: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> list[dict[str, Any]]:
    """RLE dicts ``{"size": [H, W], "counts": str}`` for ``counts (N,)`` with per-row image sizes."""
    return [
        {"size": [int(h), int(w)], "counts": str(c)}
        for c, h, w in zip(counts.tolist(), heights.tolist(), widths.tolist(), strict=True)
    ]


def build_annotations(
    ann_id: np.ndarray,
    image_id: np.ndarray,
    category_id: np.ndarray,
    xy: np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
    counts: np.ndarray,
    score: np.ndarray,
    proposal_index: np.ndarray,
    aux_counts: np.ndarray | None = None,
    aux_index: np.ndarray | None = None,
    aux_weight: float = AUX_WEIGHT,
    aux_keep: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """COCO annotations of N objects; ``bbox`` and ``area`` come from the masks (pycocotools, no decoding).

    Args:
        ann_id, image_id, category_id: ``(N,)``. xy: ``(N, 2)`` points ``[x, y]`` (pixel-index coordinates).
        heights, widths: ``(N,)`` image size of each object. counts: ``(N,)`` chosen masks' RLE counts.
        score: ``(N,)``. proposal_index: ``(N,)`` chosen proposal indices.
        aux_counts / aux_index: ``(N, R)`` auxiliary masks' RLE counts and proposal indices, or None.
        aux_keep: ``(N, R)`` bool, or None (all kept): an aux mask that is not kept gets weight 0 (the point
            constraint: it contains another annotated point).
    """
    rles = rle_dicts(counts, heights, widths)
    n = len(rles)
    area = rle_area(rles)
    bbox = np.asarray(mask_utils.toBbox(rles), dtype=np.float64) if n else np.zeros((0, 4))
    anns = []
    for i in range(n):
        ann = {
            "id": int(ann_id[i]),
            "image_id": int(image_id[i]),
            "category_id": int(category_id[i]),
            "iscrowd": 0,
            "segmentation": rles[i],
            "bbox": [float(v) for v in bbox[i]],
            "area": int(area[i]),
            "point": [round(float(xy[i, 0]), 3), round(float(xy[i, 1]), 3)],
            "score": round(float(score[i]), 6),
            "proposal_index": int(proposal_index[i]),
        }
        if aux_counts is not None and aux_index is not None:
            size = rles[i]["size"]
            ann["aux_segmentations"] = [{"size": size, "counts": str(c)} for c in aux_counts[i]]
            if aux_keep is None:
                ann["aux_weights"] = [aux_weight] * aux_counts.shape[1]
            else:
                ann["aux_weights"] = [aux_weight if k else 0.0 for k in aux_keep[i].tolist()]
            ann["aux_proposal_indices"] = [int(j) for j in aux_index[i]]
        anns.append(ann)
    return anns


def write_pseudo_jsons(
    items: list[tuple[Path, dict[str, Any], Iterable[list[dict[str, Any]]]]],
) -> list[int]:
    """Several pseudo-label files (``(path, header, annotation_chunks)``) as one unit: all or none.

    Every file is streamed to its temporary before the first rename (:func:`stages.common.io.atomic_write_many`),
    so a full disk or a kill while writing the second selector's file never leaves a mix of old and new files.
    Returns the number of annotations written per file.
    """
    counters = [[0] for _ in items]
    atomic_write_many(
        [
            (Path(path), pseudo_json_writer(header, chunks, counter))
            for (path, header, chunks), counter in zip(items, counters, strict=True)
        ]
    )
    return [c[0] for c in counters]


def pseudo_json_writer(
    header: dict[str, Any],
    annotation_chunks: Iterable[list[dict[str, Any]]],
    counter: list[int] | None = None,
) -> Callable[[IO[bytes]], None]:
    """A ``write(fh)`` streaming ``{**header, "annotations": [...]}`` (``counter[0]``: annotations written).

    Only one chunk is ever in memory, and each annotation is encoded by the C JSON encoder (``json.dumps``;
    ``json.dump`` to a file falls back to the pure-Python encoder, ~10x slower). The output is the compact
    JSON of the whole document.
    """
    if "annotations" in header:
        raise ValueError("header must not hold 'annotations' (they come from annotation_chunks)")
    head = json.dumps(header, separators=(",", ":"), default=json_default)
    counter = counter if counter is not None else [0]

    def write(fh: IO[bytes]) -> None:
        fh.write((head[:-1] + ("," if header else "") + '"annotations":[').encode("utf-8"))
        for chunk in annotation_chunks:
            if not chunk:
                continue
            text = ",".join(
                json.dumps(a, separators=(",", ":"), default=json_default) for a in chunk
            )
            fh.write((("," if counter[0] else "") + text).encode("utf-8"))
            counter[0] += len(chunk)
        fh.write(b"]}")

    return write


def _segmentation_rle(seg: Any, size: tuple[int, int]) -> dict[str, Any]:
    """A prediction's segmentation (compressed/uncompressed RLE or polygons) as a compressed RLE dict."""
    h, w = size
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, h, w)
    if isinstance(seg, dict) and "counts" in seg:
        return {"size": list(seg["size"]), "counts": seg["counts"]}
    raise ValueError(f"unsupported segmentation of type {type(seg).__name__}")


def _score(rec: dict[str, Any], path: Path, i: int) -> float:
    value = rec.get("score", 1.0)
    try:
        if isinstance(value, bool):
            raise TypeError
        score = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"predictions file {path}: record {i}{_id_of(rec)} has score {value!r}, expected a number"
        ) from None
    if not math.isfinite(score):
        raise InputError(f"predictions file {path}: record {i}{_id_of(rec)} has score {value!r}")
    return score


def _id_of(rec: dict[str, Any]) -> str:
    return f" (annotation id {rec['id']})" if "id" in rec else ""


def load_predictions(
    path: str | Path,
    image_size: dict[int, tuple[int, int]],
    name: str | None = None,
    category_ids: set[int] | None = None,
) -> tuple[PredSet, dict[str, Any] | None]:
    """Read a COCO instances file (with ``annotations``) or a COCO results list as a :class:`PredSet`.

    Masks are taken from ``segmentation`` when every record has one (else only boxes are scored). Records
    without ``score`` get 1.0. Annotation ids are kept only for an instances file whose records all have one.

    Args:
        image_size: ``{image id: (H, W)}`` of the ground truth (polygons need it; unknown ids are errors).

    Returns ``(predictions, the instances file's document or None for a results list)``.
    """
    path = Path(path)
    doc = load_json(path, "predictions file")
    if isinstance(doc, dict) and isinstance(doc.get("annotations"), list):
        records, instances = doc["annotations"], doc
    elif isinstance(doc, list):
        records, instances = doc, None
    else:
        raise InputError(
            f"predictions file {path}: expected a COCO instances file (with 'annotations') or a COCO "
            "results list"
        )
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "image_id" not in rec or "category_id" not in rec:
            raise InputError(f"predictions file {path}: record {i} lacks image_id/category_id")
        if rec["image_id"] not in image_size:
            raise InputError(
                f"predictions file {path}: record {i} is on image id {rec['image_id']}, which is not "
                "in the ground truth"
            )
        if "segmentation" not in rec and "bbox" not in rec:
            raise InputError(
                f"predictions file {path}: record {i} has neither segmentation nor bbox"
            )
        if category_ids is not None and rec["category_id"] not in category_ids:
            raise InputError(
                f"predictions file {path}: record {i}{_id_of(rec)} has category id "
                f"{rec['category_id']}, which is not a category of the ground truth"
            )
        if rec.get("segmentation"):
            h, w = image_size[rec["image_id"]]
            why = segmentation_problem(rec["segmentation"], h, w)
            if why is not None:
                raise InputError(
                    f"predictions file {path}: record {i}{_id_of(rec)} on image id {rec['image_id']}: "
                    f"{why}"
                )
    scores = [_score(r, path, i) for i, r in enumerate(records)]
    has_masks = all("segmentation" in r and r["segmentation"] for r in records)
    rles = None
    try:
        if has_masks:
            rles = [
                _segmentation_rle(r["segmentation"], image_size[r["image_id"]]) for r in records
            ]
    except (ValueError, TypeError, KeyError) as err:
        raise InputError(f"predictions file {path}: a segmentation cannot be read: {err}") from None
    if rles is not None and rles:
        box = xywh_to_xyxy(np.asarray(mask_utils.toBbox(rles)))
    else:
        box = xywh_to_xyxy(np.array([r.get("bbox", [0, 0, 0, 0]) for r in records], np.float64))
    with_ids = instances is not None and all("id" in r for r in records)
    if name is None:
        info = instances.get("info", {}) if instances is not None else {}
        name = str(info.get("selector", path.stem)) if isinstance(info, dict) else path.stem
    preds = PredSet(
        name=name,
        image_id=np.array([int(r["image_id"]) for r in records], dtype=np.int64),
        category_id=np.array([int(r["category_id"]) for r in records], dtype=np.int64),
        score=np.array(scores, dtype=np.float64),
        box=box.reshape(-1, 4),
        rles=rles,
        ann_id=np.array([int(r["id"]) for r in records], dtype=np.int64) if with_ids else None,
    )
    return preds, instances
