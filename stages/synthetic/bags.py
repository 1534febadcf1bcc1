"""SAM-like proposal bags for the synthetic ablation, built around :func:`stages.synthetic.generate.make_synthetic`.

The generator's bags hold the correct mask, its left / right halves ("local", box IoU 0.5 with the object),
a union with a same-class neighbour ("group") and shifted copies ("offset"), in random order. Two things
of SAM that the method relies on are missing there:

- SAM's local failures are often LARGE parts (most of the object, box IoU > 0.6 with it); BMS rule (i)
  (docs/method.md §9) can only move a pick to a larger proposal when their box IoU exceeds ``T_min1 = 0.6``, so
  with halves alone BMS has nothing to repair;
- the first three proposals are the point prompt's multimask outputs (part, object, group), and BMS only
  looks at those three.

:func:`sam_like_bags` rewrites a generated store in place so that every bag is::

    slots 0-2 (shuffled): correct, a large part, the group union (or a second large part)
    slots 3-5 (shuffled): one half of the object, two offsets

A large part is the object's mask cut at ``part_fraction`` of its box width (left or right side) or
height (top side, the second large part of a lone object): box IoU ``part_fraction`` with the object.
Both large parts and halves are kind ``local``. ``truth.npz`` and the returned :class:`SyntheticData`
get the new kinds and correct indices. Needs a dataset made with ``num_local >= 2`` (both halves).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from stages.common.annotations import load_coco
from stages.common.masks import decode_rles, encode_masks, masks_to_boxes, segmentation_to_mask
from stages.synthetic.generate import SyntheticData

PART_FRACTION = 0.7
"""Default share of the object's box width/height that a large part keeps."""


def large_parts(
    masks: np.ndarray, boxes: np.ndarray, fraction: float, side: np.ndarray
) -> np.ndarray:
    """Cut every mask to a large part of its box, vectorised over objects.

    Args:
        masks: ``(K, H, W)`` bool object masks.
        boxes: ``(K, 4)`` their xyxy boxes, edge coordinates (pixel column c spans [c, c + 1)).
        fraction: kept share of the box width (sides 0, 1) or height (side 2), in (0, 1].
        side: ``(K,)`` int, 0 keeps the left part, 1 the right part, 2 the top part.

    Returns ``(K, H, W)`` bool: pixels of the mask whose centre lies in the kept part of the box.
    """
    k, h, w = masks.shape
    x = np.arange(w, dtype=np.float32)[None, None, :] + 0.5
    y = np.arange(h, dtype=np.float32)[None, :, None] + 0.5
    x1, y1, x2, y2 = (boxes[:, i, None, None].astype(np.float32) for i in range(4))
    cut_x, cut_y = fraction * (x2 - x1), fraction * (y2 - y1)
    side = np.asarray(side)[:, None, None]
    keep = np.where(side == 0, x < x1 + cut_x, np.where(side == 1, x > x2 - cut_x, y < y1 + cut_y))
    return masks & keep


def _pick(kinds: np.ndarray, kind: str, count: int) -> np.ndarray:
    """``(K, count)`` slot indices of the first ``count`` proposals of ``kind`` in each row."""
    is_kind = kinds == kind
    order = np.argsort(~is_kind, axis=1, kind="stable")
    return order[:, :count]


def _image_bags(
    props: np.ndarray, kinds: np.ndarray, gt: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The new bags of one image's K objects: ``(K, 6, H, W)`` masks and ``(K, 6)`` kinds.

    ``props (K, 6, H, W)`` / ``kinds (K, 6)``: the generator's bags; ``gt (K, H, W)``: the object masks.
    """
    k = gt.shape[0]
    rows = np.arange(k)
    boxes = masks_to_boxes(gt)
    has_group = (kinds == "group").any(axis=1)
    part_a = large_parts(gt, boxes, fraction, rng.integers(0, 2, size=k))  # left or right
    part_b = large_parts(gt, boxes, fraction, np.full(k, 2))  # top
    third = np.where(has_group[:, None, None], props[rows, _pick(kinds, "group", 1)[:, 0]], part_b)
    half = props[rows, _pick(kinds, "local", 2)[rows, rng.integers(0, 2, size=k)]]
    offsets = props[rows[:, None], _pick(kinds, "offset", 2)]  # (K, 2, H, W)
    bag = np.concatenate([gt[:, None], part_a[:, None], third[:, None], half[:, None], offsets], 1)
    bag_kinds = np.tile(
        np.array(["correct", "local", "group", "local", "offset", "offset"]), (k, 1)
    )
    bag_kinds[~has_group, 2] = "local"
    order = np.concatenate(
        [rng.permuted(np.tile([0, 1, 2], (k, 1)), axis=1),
         rng.permuted(np.tile([3, 4, 5], (k, 1)), axis=1)], axis=1,
    )  # fmt: skip
    return bag[rows[:, None], order], bag_kinds[rows[:, None], order]


def sam_like_bags(
    data: SyntheticData, part_fraction: float = PART_FRACTION, seed: int | None = None
) -> SyntheticData:
    """Rewrite the bags of ``data`` (store and ``truth.npz``) as described in the module docstring.

    Deterministic for a given ``seed`` (default: the dataset's seed). Returns the updated description.
    """
    from stages.propose.store import ProposalStore, UnitResult

    if data.config.num_local < 2:
        raise ValueError("sam_like_bags needs a dataset made with num_local >= 2 (both halves)")
    rng = np.random.default_rng([data.config.seed if seed is None else seed, 7])
    store = ProposalStore.open(data.store, mode="r+")
    coco = load_coco(data.annotations, "synthetic annotations")
    seg = {int(a["id"]): a["segmentation"] for a in coco["annotations"]}
    new_kinds = np.array(data.kinds, dtype=object)
    rle_all = store.rle()
    m = rle_all.shape[1]
    for unit in range(store.num_units):
        lo, hi = store.unit_image_ptr[unit], store.unit_image_ptr[unit + 1]
        unit_props = []
        for img in range(lo, hi):
            sl = store.image_objects(img)
            k = sl.stop - sl.start
            if k == 0:
                continue
            h, w = int(store.images.height[img]), int(store.images.width[img])
            props = decode_rles([str(c) for c in rle_all[sl].reshape(-1)], h, w)
            gt = np.stack([segmentation_to_mask(seg[int(a)], h, w) for a in data.ann_id[sl]])
            bag, kinds = _image_bags(
                props.reshape(k, m, h, w), np.asarray(data.kinds[sl]).astype(str), gt,
                part_fraction, rng,
            )  # fmt: skip
            unit_props.append(bag)
            new_kinds[sl] = kinds
        if not unit_props:
            continue
        flat = np.concatenate(unit_props)
        n, m, h, w = flat.shape
        store.write_unit(
            unit,
            UnitResult(
                boxes=masks_to_boxes(flat.reshape(-1, h, w)).reshape(n, m, 4),
                scores=np.ones((n, m), np.float32),
                area=flat.reshape(n, m, -1).sum(-1).astype(np.int64),
                rle=np.array([encode_masks(obj) for obj in flat], dtype=object).reshape(n, m),
                status=np.ones(n, np.uint8),
                error=np.full(n, "", dtype=object),
            ),
        )
    kinds_out = new_kinds.astype(str)
    out = dataclasses.replace(
        data,
        kinds=kinds_out,
        correct_index=np.argmax(kinds_out == "correct", axis=1).astype(np.int64),
    )
    np.savez(
        Path(data.root) / "truth.npz",
        ann_id=out.ann_id,
        kinds=out.kinds,
        correct_index=out.correct_index,
        gt_boxes=out.gt_boxes,
    )
    return out
