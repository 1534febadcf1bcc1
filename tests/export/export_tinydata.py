"""A tiny hand-made dataset for the export tests (imported by conftest.py and the tests): 2 images, 4 point objects, 6 known proposals each.

Image 1 (40 x 50, H x W): cat 11 = rows 5-14, cols 5-19; cat 12 = rows 5-14, cols 25-39; dog 13 = rows 20-34,
cols 10-29. Image 2 (30 x 30): dog 21 = rows 2-21, cols 2-21, and a crowd cat 22 (no point).

Proposals of every object, by index:
    0 the GT mask; 1 a part: the top 3 rows of the GT; 2 the union of all same-class GT masks of the image
    (a "group" mask for cats 11/12); 3 the GT shifted right by 3 px (IoU (w - 3) / (w + 3));
    4 the whole image (largest); 5 a 2x2 square at the GT's top-left corner.
Backend scores: [0.5, 0.4, 0.3, 0.9, 0.2, 0.1] (top1 = the shifted copy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.annotations import load_points
from stages.common.masks import encode_masks, masks_to_boxes
from stages.common.selections import Selections, save_selections, store_identity
from stages.propose.store import ProposalStore, UnitResult

M = 6
SHIFT = 3
BACKEND_SCORES = np.array([0.5, 0.4, 0.3, 0.9, 0.2, 0.1], np.float32)
IMAGES = [
    {"id": 1, "file_name": "a.png", "height": 40, "width": 50},
    {"id": 2, "file_name": "b.png", "height": 30, "width": 30},
]
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
# ann id -> (image id, category id, (r0, r1, c0, c1) inclusive rectangle)
OBJECTS = {
    11: (1, 1, (5, 14, 5, 19)),
    12: (1, 1, (5, 14, 25, 39)),
    13: (1, 2, (20, 34, 10, 29)),
    21: (2, 2, (2, 21, 2, 21)),
}
CROWD = {22: (2, 1, (24, 28, 20, 28))}


def rect_mask(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


def image_size(image_id: int) -> tuple[int, int]:
    im = next(i for i in IMAGES if i["id"] == image_id)
    return im["height"], im["width"]


def gt_mask(ann_id: int) -> np.ndarray:
    img, _, rect = {**OBJECTS, **CROWD}[ann_id]
    return rect_mask(*image_size(img), *rect)


def rle_dict(mask: np.ndarray) -> dict:
    return {"size": list(mask.shape), "counts": encode_masks(mask[None])[0]}


def proposals(ann_id: int) -> np.ndarray:
    """``(6, H, W)`` proposals of one object (see the module docstring)."""
    img, cat, (r0, r1, c0, c1) = OBJECTS[ann_id]
    h, w = image_size(img)
    same = [a for a, (i, c, _) in OBJECTS.items() if i == img and c == cat]
    group = np.any([gt_mask(a) for a in same], axis=0)
    return np.stack(
        [
            gt_mask(ann_id),
            rect_mask(h, w, r0, r0 + 2, c0, c1),
            group,
            rect_mask(h, w, r0, r1, c0 + SHIFT, c1 + SHIFT),
            np.ones((h, w), bool),
            rect_mask(h, w, r0, r0 + 1, c0, c0 + 1),
        ]
    )


def gt_coco() -> dict:
    anns = []
    for ann_id, (img, cat, _) in {**OBJECTS, **CROWD}.items():
        m = gt_mask(ann_id)
        box = masks_to_boxes(m[None])[0]
        anns.append(
            {
                "id": ann_id,
                "image_id": img,
                "category_id": cat,
                "iscrowd": int(ann_id in CROWD),
                "segmentation": rle_dict(m),
                "area": int(m.sum()),
                "bbox": [
                    float(box[0]),
                    float(box[1]),
                    float(box[2] - box[0]),
                    float(box[3] - box[1]),
                ],
            }
        )
    return {"images": [dict(i) for i in IMAGES], "categories": CATEGORIES, "annotations": anns}


def points_coco() -> dict:
    doc = gt_coco()
    for ann in doc["annotations"]:
        if ann["id"] in OBJECTS:
            _, _, (r0, _, c0, _) = OBJECTS[ann["id"]]
            ann["point"] = [float(c0 + 2), float(r0 + 2)]
    return doc


@dataclass
class TinyRun:
    root: Path
    store_path: Path
    gt_path: Path
    images_dir: Path
    sel_dir: Path | None = None


def build_store(root: Path, failed: tuple[int, ...] = ()) -> tuple[Path, Path]:
    """Write GT + points JSON and a complete store under ``root``; ``failed`` ann ids get status 2."""
    root.mkdir(parents=True, exist_ok=True)
    gt_path, pts_path = root / "gt.json", root / "points.json"
    gt_path.write_text(json.dumps(gt_coco()))
    pts_path.write_text(json.dumps(points_coco()))
    points = load_points(pts_path)
    store_path = root / "store.zarr"
    store = ProposalStore.create(
        store_path, points, {"name": "test"}, M, [f"p{j}" for j in range(M)], chunk_points=3
    )
    ann_ids = store.objects.ann_id
    for unit in range(store.num_units):
        lo, hi = store.unit_rows(unit)
        first = int(np.searchsorted(store.objects.rows, lo))
        objs = ann_ids[first : first + (hi - lo)]
        masks = [proposals(int(a)) for a in objs]
        ok = np.array([int(a) not in failed for a in objs])
        store.write_unit(
            unit,
            UnitResult(
                boxes=np.stack([masks_to_boxes(m) for m in masks]),
                scores=np.tile(BACKEND_SCORES, (len(objs), 1)),
                area=np.stack([m.reshape(M, -1).sum(1) for m in masks]).astype(np.int64),
                rle=np.array(
                    [encode_masks(m) if o else [""] * M for m, o in zip(masks, ok, strict=True)],
                    dtype=object,
                ),
                status=np.where(ok, 1, 2).astype(np.uint8),
                error=np.array(["" if o else "backend failed" for o in ok], dtype=object),
            ),
        )
    store.finalize()
    return store_path, gt_path


def write_selections(
    store_path: Path,
    run_dir: Path,
    final_index: list[int],
    prm_scores: np.ndarray | None = None,
    psm_top1: list[int] | None = None,
    **meta_override,
) -> Path:
    store = ProposalStore.open(store_path)
    p = len(store.objects)
    rng = np.random.default_rng(0)
    prm = rng.random((p, M)).astype(np.float32) if prm_scores is None else prm_scores
    psm = rng.random((p, M)).astype(np.float32)
    sel = Selections(
        ann_id=store.objects.ann_id.copy(),
        psm_top1=np.asarray(psm_top1 if psm_top1 is not None else [1] * p, np.int64),
        prm_top1=np.zeros(p, np.int64),
        bms_box=store.boxes()[np.arange(p), np.asarray(final_index)].astype(np.float32),
        final_index=np.asarray(final_index, np.int64),
        psm_scores=psm,
        prm_scores=prm.astype(np.float32),
        bag_score=np.linspace(0.9, 0.6, p).astype(np.float32),
        meta={"store": {**store_identity(store), **meta_override}},
    )
    save_selections(sel, run_dir)
    return run_dir


def write_images(root: Path) -> Path:
    d = root / "images"
    d.mkdir(parents=True, exist_ok=True)
    for im in IMAGES:
        arr = np.full((im["height"], im["width"], 3), 40, np.uint8)
        Image.fromarray(arr).save(d / im["file_name"])
    return d
