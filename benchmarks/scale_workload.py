"""A COCO-shaped workload for ``bench_scale.py``, built from a small pool of real-shaped masks.

At scale ``s`` (1.0 = COCO train2017) the workload holds ``round(118,287 s)`` images with COCO's common sizes,
``round(860,000 s)`` point-annotated objects spread over the images like COCO's (mean 7.3 per image, 1 % of the
images empty, at most 93), 80 classes with a long-tailed frequency, and for every object

* a ground-truth polygon (COCO ``segmentation`` polygons, ``bbox``, ``area``) whose area follows COCO's
  small / medium / large mix (41 / 34 / 25 %),
* M = 6 proposal masks (compressed RLE, the store's format): the GT shape shrunk, grown, jittered, a part and
  the shape merged with a neighbour, so that selectors, IoUs and AP behave like real ones.

Shapes come from a fixed pool (``POOL_FAMILIES`` families per image size, built once per run in a few
seconds, independent of the scale), so building the workload costs a copy per object, not a rasterisation.
Everything is seeded: the same scale gives the same files.

Files under the work folder::

    coco_points.json    COCO instances JSON + a ``point`` per annotation (also the report's ground truth)
    images/             one EMPTY file per image (stages that only check existence); stages that decode
                        pixels write the few real images they need themselves
    store.zarr          written by the ``store_write`` stage (the store's own writer), not here
    select_run/         synthetic ``selections.npz/json`` for the store (written after the store)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

COCO_IMAGES = 118_287
COCO_OBJECTS = 860_000
NUM_CLASSES = 80
M = 6
POOL_FAMILIES = 400
MAX_PER_IMAGE = 93
# COCO train2017's most common (height, width) and their approximate shares.
IMAGE_SIZES = ((480, 640), (427, 640), (640, 480), (640, 427), (425, 640), (426, 640), (640, 640))
SIZE_SHARES = (0.40, 0.22, 0.12, 0.09, 0.07, 0.06, 0.04)
# COCO size mix of the instance areas: small < 32^2 <= medium < 96^2 <= large.
AREA_SHARES = (0.41, 0.34, 0.25)
AREA_RANGES = ((40.0, 1024.0), (1024.0, 9216.0), (9216.0, 0.45))  # large: up to 45 % of the image


@dataclass
class Family:
    """One pool entry: a GT polygon and the M proposal RLEs derived from it (one image size)."""

    polygon: list[float]  # flat [x0, y0, x1, y1, ...]
    bbox: list[float]  # xywh of the GT polygon's mask
    area: int
    point: tuple[float, float]  # inside the GT (pixel-index coordinates)
    rles: list[str]  # M compressed RLE counts
    boxes: np.ndarray  # (M, 4) xyxy
    areas: np.ndarray  # (M,)
    scores: np.ndarray  # (M,)


def _star_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """``(V, 2)`` a random star-shaped polygon around ``(cx, cy)`` with mean radius ``radius``."""
    v = int(rng.integers(10, 28))
    ang = np.sort(rng.uniform(0, 2 * np.pi, v))
    r = radius * rng.uniform(0.65, 1.25, v) * (1 + 0.25 * np.sin(ang * rng.integers(1, 4)))
    aspect = rng.uniform(0.6, 1.6)
    return np.stack([cx + r * np.cos(ang) * aspect, cy + r * np.sin(ang) / aspect], 1)


def _rle_of(poly: np.ndarray, h: int, w: int) -> dict:
    p = poly.copy()
    p[:, 0] = np.clip(p[:, 0], 0, w - 1)
    p[:, 1] = np.clip(p[:, 1], 0, h - 1)
    return mask_utils.merge(mask_utils.frPyObjects([p.reshape(-1).tolist()], h, w))


def build_pool(h: int, w: int, seed: int, families: int = POOL_FAMILIES) -> list[Family]:
    """``families`` GT shapes + M proposals each for an ``h x w`` image (COCO's area mix)."""
    rng = np.random.default_rng(seed)
    out: list[Family] = []
    while len(out) < families:
        size = rng.choice(3, p=AREA_SHARES)
        lo, hi = AREA_RANGES[size]
        if size == 2:
            hi = hi * h * w
        area = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        radius = math.sqrt(area / math.pi)
        cx = rng.uniform(min(radius, w / 2), max(w - radius, w / 2))
        cy = rng.uniform(min(radius, h / 2), max(h - radius, h / 2))
        gt = _star_polygon(rng, cx, cy, radius)
        gt_rle = _rle_of(gt, h, w)
        gt_area = int(mask_utils.area(gt_rle))
        if gt_area < 16:
            continue
        centre = np.array([cx, cy])
        shift = rng.normal(0, radius * 0.8, 2)
        neighbour = _star_polygon(rng, cx + shift[0] + radius, cy + shift[1], radius * 0.8)
        part = centre + (gt - centre) * 0.55 + rng.normal(0, radius * 0.3, 2)
        variants = [
            centre + (gt - centre) * 0.7,  # shrunk
            gt + rng.normal(0, max(radius * 0.06, 0.5), gt.shape),  # jittered (often the best)
            centre + (gt - centre) * 1.3,  # grown
            part,  # a part
            None,  # merged with a neighbour
            centre + (gt - centre) * 0.9 + rng.normal(0, max(radius * 0.1, 0.5), gt.shape),
        ]
        rles = []
        for poly in variants:
            if poly is None:
                rles.append(mask_utils.merge([gt_rle, _rle_of(neighbour, h, w)]))
            else:
                rles.append(_rle_of(poly, h, w))
        xywh = np.asarray(mask_utils.toBbox(rles), dtype=np.float32)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        gbox = mask_utils.toBbox(gt_rle).tolist()
        py, px = int(np.clip(round(cy), 0, h - 1)), int(np.clip(round(cx), 0, w - 1))
        if not mask_utils.decode(gt_rle)[py, px]:
            continue  # keep only shapes whose centre pixel is inside (a valid point)
        out.append(
            Family(
                polygon=[round(float(v), 2) for v in gt.clip([0, 0], [w - 1, h - 1]).reshape(-1)],
                bbox=[round(float(v), 2) for v in gbox],
                area=gt_area,
                point=(float(px), float(py)),
                rles=[r["counts"].decode("ascii") for r in rles],
                boxes=boxes,
                areas=np.asarray(mask_utils.area(rles), dtype=np.int64),
                scores=rng.uniform(0.5, 1.0, M).astype(np.float32),
            )
        )
    return out


def objects_per_image(rng: np.random.Generator, n_img: int, n_obj: int) -> np.ndarray:
    """``(n_img,)`` counts summing to ``n_obj``: 1 % empty, the rest 1 + negative binomial, <= 93."""
    mean = n_obj / max(n_img * 0.99, 1)
    k = 1.3
    extra = max(mean - 1, 0.01)
    counts = 1 + rng.negative_binomial(k, k / (k + extra), n_img)
    counts[rng.random(n_img) < 0.01] = 0
    counts = np.minimum(counts, MAX_PER_IMAGE)
    # adjust to the exact total, one object at a time on random non-empty images
    diff = n_obj - int(counts.sum())
    nz = np.nonzero(counts)[0]
    step = 1 if diff > 0 else -1
    while diff != 0:
        pick = rng.choice(nz, size=min(abs(diff), len(nz)), replace=False)
        ok = (counts[pick] + step >= 1) & (counts[pick] + step <= MAX_PER_IMAGE)
        counts[pick[ok]] += step
        diff -= step * int(ok.sum())
    return counts


@dataclass
class Workload:
    """The index arrays of a workload (everything else is derived from the pool)."""

    size_index: np.ndarray  # (I,) index into IMAGE_SIZES
    counts: np.ndarray  # (I,) objects per image
    family: np.ndarray  # (P,) pool family of each object (within its image size's pool)
    category: np.ndarray  # (P,) category id 1..80
    pools: list[list[Family]]


def make_workload(scale: float, seed: int = 0) -> Workload:
    """The workload's index arrays and pools at ``scale`` (fraction of COCO train2017)."""
    rng = np.random.default_rng(seed)
    n_img = max(int(round(COCO_IMAGES * scale)), 1)
    n_obj = max(int(round(COCO_OBJECTS * scale)), 1)
    size_index = rng.choice(len(IMAGE_SIZES), size=n_img, p=SIZE_SHARES)
    counts = objects_per_image(rng, n_img, n_obj)
    family = rng.integers(0, POOL_FAMILIES, n_obj)
    freq = 1.0 / np.arange(1, NUM_CLASSES + 1) ** 1.1
    category = 1 + rng.choice(NUM_CLASSES, size=n_obj, p=freq / freq.sum())
    pools = [build_pool(h, w, seed=1000 + i) for i, (h, w) in enumerate(IMAGE_SIZES)]
    return Workload(size_index, counts, family, category.astype(np.int64), pools)


def object_sizes(wl: Workload) -> np.ndarray:
    """``(P,)`` image-size index of every object (object order = image order)."""
    return np.repeat(wl.size_index, wl.counts)


def write_points_json(wl: Workload, path: Path) -> None:
    """The COCO instances JSON with points (and GT polygons), written as a stream."""
    sizes = object_sizes(wl)
    image_of = np.repeat(np.arange(len(wl.counts)), wl.counts)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"info":{"description":"sapnet bench_scale synthetic COCO"},"images":[')
        for i, s in enumerate(wl.size_index.tolist()):
            h, w = IMAGE_SIZES[s]
            rec = {"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "height": h, "width": w}
            fh.write(("," if i else "") + json.dumps(rec, separators=(",", ":")))
        fh.write('],"categories":[')
        fh.write(
            ",".join(
                json.dumps({"id": c, "name": f"class{c}", "supercategory": "thing"})
                for c in range(1, NUM_CLASSES + 1)
            )
        )
        fh.write('],"annotations":[')
        for j in range(len(wl.family)):
            fam = wl.pools[sizes[j]][wl.family[j]]
            rec = {
                "id": j + 1,
                "image_id": int(image_of[j]) + 1,
                "category_id": int(wl.category[j]),
                "iscrowd": 0,
                "area": fam.area,
                "bbox": fam.bbox,
                "segmentation": [fam.polygon],
                "point": list(fam.point),
            }
            fh.write(("," if j else "") + json.dumps(rec, separators=(",", ":")))
        fh.write("]}")


def make_image_files(n_img: int, folder: Path) -> None:
    """One empty file per image (existence checks only)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_img):
        (folder / f"{i + 1:012d}.jpg").touch()


def pool_arrays(wl: Workload) -> dict[str, np.ndarray]:
    """Per size: stacked pool arrays ``rle (F, M) object``, ``boxes (F, M, 4)``, ``areas``, ``scores``."""
    out = {}
    for s, pool in enumerate(wl.pools):
        out[f"rle{s}"] = np.array([f.rles for f in pool], dtype=object)
        out[f"boxes{s}"] = np.stack([f.boxes for f in pool])
        out[f"areas{s}"] = np.stack([f.areas for f in pool])
        out[f"scores{s}"] = np.stack([f.scores for f in pool])
    return out
