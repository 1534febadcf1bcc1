"""Ground truth for the export report: loading a COCO JSON with masks and matching it to pseudo labels.

GT matching is by annotation id: the store keeps the input annotation ids, and the points JSON is the GT JSON plus
points, so pseudo label ``id`` == GT annotation ``id``. Masks stay COCO RLE dicts (never decoded): overlaps come
from pycocotools' RLE operations, one call per image.

Boxes here are ``xyxy`` float64 in edge coordinates (COCO ``bbox`` ``[x, y, w, h]`` -> ``[x, y, x + w, y + h]``).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from stages.common.annotations import load_coco, parse_images
from stages.common.errors import InputError, first_items
from stages.common.masks import segmentation_problem


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` COCO ``[x, y, w, h]`` -> ``(N, 4)`` ``[x1, y1, x2, y2]`` float64 (edge coordinates)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


# pycocotools' ``area`` builds a uint8 array of the list length first, which overflows under NumPy 2 for
# more than 255 masks: call it in slices of at most this many.
AREA_BATCH = 255


def rle_area(rles: list[dict[str, Any]]) -> np.ndarray:
    """``(N,)`` int64 pixel areas of compressed RLE dicts (no decoding)."""
    if len(rles) == 0:
        return np.zeros(0, np.int64)
    parts = [mask_utils.area(rles[i : i + AREA_BATCH]) for i in range(0, len(rles), AREA_BATCH)]
    return np.concatenate([np.asarray(p, dtype=np.int64).reshape(-1) for p in parts])


def rle_areas_boxes(rles: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Mask areas ``(N,)`` float64 and tight boxes ``(N, 4)`` xyxy of compressed RLEs (no decoding)."""
    if len(rles) == 0:
        return np.zeros(0), np.zeros((0, 4))
    area = rle_area(rles).astype(np.float64)
    box = xywh_to_xyxy(np.asarray(mask_utils.toBbox(rles)))
    return area, box


def _listed(items: list[Any]) -> str:
    return first_items(items)


@dataclass
class GroundTruth:
    """A GT COCO instances file as flat per-annotation arrays (G annotations, file order).

    Attributes:
        path: the file. coco: pycocotools index of it (for COCOeval). image_size: ``{image id: (H, W)}``.
        ann_id, image_id, category_id: ``(G,)`` int64. iscrowd: ``(G,)`` bool.
        area: ``(G,)`` COCO ``area`` field (mask area when absent): used for the small/medium/large split.
        box: ``(G, 4)`` xyxy from the ``bbox`` field (mask box when absent): the reference of mIoU_box.
        rles: compressed RLE of every annotation's mask. mask_area / mask_box: from those RLEs.
    """

    path: Path
    coco: COCO
    image_size: dict[int, tuple[int, int]]
    ann_id: np.ndarray
    image_id: np.ndarray
    category_id: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray
    box: np.ndarray
    rles: list[dict[str, Any]]
    mask_area: np.ndarray
    mask_box: np.ndarray

    def __len__(self) -> int:
        return int(self.ann_id.shape[0])

    def index_of(self, ann_ids: np.ndarray) -> np.ndarray:
        """``(N,)`` row of each annotation id in this GT, -1 where absent (vectorised lookup)."""
        ann_ids = np.asarray(ann_ids, dtype=np.int64)
        if len(self.ann_id) == 0:
            return np.full(ann_ids.shape, -1, np.int64)
        order = np.argsort(self.ann_id, kind="stable")
        sorted_ids = self.ann_id[order]
        pos = np.clip(np.searchsorted(sorted_ids, ann_ids), 0, len(sorted_ids) - 1)
        found = sorted_ids[pos] == ann_ids
        return np.where(found, order[pos], -1).astype(np.int64)

    @cached_property
    def rows_by_image(self) -> dict[int, np.ndarray]:
        """``{image id: sorted rows of its annotations}`` (crowd included; images without any: empty)."""
        rows = {img: np.zeros(0, np.int64) for img in self.image_size}
        rows.update(dict(image_groups(self.image_id)))
        return rows


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Load a GT COCO JSON with masks; InputError for broken files, unknown images or missing masks."""
    path = Path(path)
    doc = load_coco(path, "ground-truth file")
    images = parse_images(doc, str(path))
    image_size = {im.image_id: (im.height, im.width) for im in images}
    anns = doc["annotations"]
    not_obj = [i for i, a in enumerate(anns) if not isinstance(a, dict)]
    if not_obj:
        raise InputError(
            f"ground-truth file {path}: annotations[{_listed(not_obj)}] are not objects"
        )
    bad_image = [a.get("id") for a in anns if a.get("image_id") not in image_size]
    if bad_image:
        raise InputError(
            f"ground-truth file {path}: annotation(s) {_listed(bad_image)} refer to unknown image ids"
        )
    no_mask = [a.get("id") for a in anns if not a.get("segmentation")]
    if no_mask:
        raise InputError(
            f"ground-truth file {path}: annotation(s) {_listed(no_mask)} have no 'segmentation'; "
            "the report needs GT masks"
        )
    missing = [i for i, a in enumerate(anns) if "id" not in a or "category_id" not in a]
    if missing:
        raise InputError(
            f"ground-truth file {path}: annotations[{_listed(missing)}] lack 'id' or 'category_id'"
        )
    bad_seg = []
    for a in anns:
        h, w = image_size[a["image_id"]]
        why = segmentation_problem(a["segmentation"], h, w)
        if why is not None:
            bad_seg.append(f"annotation id {a['id']} (image id {a['image_id']}): {why}")
    if bad_seg:
        raise InputError(
            f"ground-truth file {path}: {len(bad_seg)} malformed segmentation(s): {_listed(bad_seg)}"
        )
    coco = COCO()
    coco.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    try:
        rles = [coco.annToRLE(a) for a in anns]
    except (TypeError, ValueError, KeyError) as err:
        raise InputError(
            f"ground-truth file {path}: a segmentation cannot be read: {err}"
        ) from None
    ann_id = np.array([int(a["id"]) for a in anns], dtype=np.int64)
    if len(np.unique(ann_id)) != len(ann_id):
        raise InputError(f"ground-truth file {path}: annotation ids are not unique")
    mask_area, mask_box = rle_areas_boxes(rles)
    area = np.array([float(a.get("area", np.nan)) for a in anns], dtype=np.float64)
    area = np.where(np.isfinite(area), area, mask_area)
    box = np.array([a.get("bbox") or [np.nan] * 4 for a in anns], dtype=np.float64).reshape(-1, 4)
    box = np.where(np.isfinite(box), xywh_to_xyxy(box), mask_box)
    return GroundTruth(
        path=path,
        coco=coco,
        image_size=image_size,
        ann_id=ann_id,
        image_id=np.array([int(a["image_id"]) for a in anns], dtype=np.int64),
        category_id=np.array([int(a["category_id"]) for a in anns], dtype=np.int64),
        iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
        area=area,
        box=box,
        rles=rles,
        mask_area=mask_area,
        mask_box=mask_box,
    )


def check_images(
    gt: GroundTruth, image_ids: np.ndarray, heights: np.ndarray, widths: np.ndarray, source: str
) -> None:
    """InputError unless every image of ``source`` is in the GT with the same height and width."""
    missing, wrong = [], []
    for image_id, h, w in zip(image_ids.tolist(), heights.tolist(), widths.tolist(), strict=True):
        size = gt.image_size.get(int(image_id))
        if size is None:
            missing.append(image_id)
        elif size != (int(h), int(w)):
            wrong.append(f"{image_id} ({w}x{h} vs {size[1]}x{size[0]} in GT)")
    if missing:
        raise InputError(
            f"ground truth {gt.path} does not match {source}: image id(s) {_listed(missing)} "
            "are not in the GT file"
        )
    if wrong:
        raise InputError(
            f"ground truth {gt.path} does not match {source}: image size differs for image id(s) "
            f"{_listed(wrong)}"
        )


def match_annotations(
    gt: GroundTruth,
    ann_id: np.ndarray,
    image_id: np.ndarray,
    category_id: np.ndarray,
    source: str,
) -> np.ndarray:
    """``(N,)`` GT row of each object, matched by annotation id; InputError on a missing id or a mismatch.

    The GT annotation must be on the same image and have the same category as the object.
    """
    rows = gt.index_of(ann_id)
    missing = ann_id[rows < 0].tolist()
    if missing:
        raise InputError(
            f"ground truth {gt.path} has no annotation with id {_listed(missing)} (objects of {source});"
            " pseudo labels are matched to the GT by annotation id"
        )
    bad_img = ann_id[gt.image_id[rows] != image_id].tolist()
    if bad_img:
        raise InputError(
            f"ground truth {gt.path}: annotation id(s) {_listed(bad_img)} are on another image than in "
            f"{source}"
        )
    bad_cat = ann_id[gt.category_id[rows] != category_id].tolist()
    if bad_cat:
        raise InputError(
            f"ground truth {gt.path}: annotation id(s) {_listed(bad_cat)} have another category than "
            f"in {source}"
        )
    return rows


def image_groups(image_id: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(image id, rows)`` for the rows of every distinct image id (sorted by image id)."""
    image_id = np.asarray(image_id)
    order = np.argsort(image_id, kind="stable")
    uniq, starts = np.unique(image_id[order], return_index=True)
    bounds = np.append(starts, len(order))
    for k, img in enumerate(uniq.tolist()):
        yield int(img), order[bounds[k] : bounds[k + 1]]


def pairwise_intersections(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> np.ndarray:
    """``(len(a), len(b))`` float64 intersection areas (pixels) of compressed RLEs of one image.

    pycocotools' IoU with ``iscrowd=1`` is ``|a & b| / |a|``; times ``|a|`` gives the intersection.
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    frac = np.asarray(mask_utils.iou(a, b, [1] * len(b)), dtype=np.float64).reshape(len(a), len(b))
    area_a = rle_area(a).astype(np.float64)
    return np.rint(frac * area_a[:, None])


def proposal_gt_iou(
    counts: np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
    image_of: np.ndarray,
    gt_rows: np.ndarray,
    gt: GroundTruth,
) -> np.ndarray:
    """``(P, M)`` mask IoU of every proposal with its object's GT mask (one RLE call per image).

    Args:
        counts: ``(P, M)`` RLE counts strings of the proposals. heights/widths: ``(P,)`` image size per object.
        image_of: ``(P,)`` any per-image key (objects of one image share it). gt_rows: ``(P,)`` GT row.
    """
    p, m = counts.shape
    out = np.zeros((p, m))
    for _, rows in image_groups(image_of):
        k = len(rows)
        size = [int(heights[rows[0]]), int(widths[rows[0]])]
        props = [{"size": size, "counts": str(c)} for c in counts[rows].reshape(-1)]
        own = [gt.rles[r] for r in gt_rows[rows]]
        iou = np.asarray(mask_utils.iou(props, own, [0] * k), dtype=np.float64).reshape(k, m, k)
        out[rows] = iou[np.arange(k), :, np.arange(k)]
    return out
