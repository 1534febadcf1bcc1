"""`sapnet merge-corrections`: fold masks corrected in an annotation tool back into the pseudo labels.

Matching is by annotation id (``attributes.sapnet_id`` when the tool renumbered the objects and kept the
attribute, else ``id``). Everything is checked before anything is written, and the output is written atomically:

- an id that is not in the pseudo labels, or listed twice, is an error;
- an image of the corrected file must be an image of the pseudo labels (same id, size and file name), else the
  file was made for other images: an error;
- a mask must decode to a non-empty mask of its image's size (polygons with >= 3 points inside the image, or
  RLE of the right size), else an error naming the id;
- an object sent for review (``info.sapnet_review.ids`` of the corrected file, or of ``--todo``) and missing
  from the corrected file was deleted by the annotator: removed only with ``allow_deletions``, else an error.

A corrected object gets its new mask as compressed RLE, ``bbox`` and ``area`` from that mask, ``corrected: true``,
and loses its MPS auxiliary masks (proposals ranked next to the wrong pick) and ``proposal_index``. The output's
``info.corrections`` records what each merge did (corrected, unchanged, deleted counts).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from stages.common.config import save_resolved_config, sidecar_config_path
from stages.common.errors import InputError
from stages.common.io import atomic_write_json, load_json
from stages.review.config import MergeConfig

log = logging.getLogger(__name__)
MAX_LISTED = 5
DROPPED_KEYS = ("aux_segmentations", "aux_weights", "aux_proposal_indices", "proposal_index")


def _listed(items: list[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > MAX_LISTED else "")


def _coco(path: Path, what: str) -> dict[str, Any]:
    doc = load_json(path, what)
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise InputError(f"{what} {path}: expected a COCO instances file with 'annotations'")
    if not isinstance(doc.get("images", []), list):
        raise InputError(f"{what} {path}: 'images' must be a list")
    return doc


def corrected_rle(seg: Any, height: int, width: int, where: str) -> dict[str, Any]:
    """A corrected ``segmentation`` as a compressed RLE dict (``counts`` str); InputError if broken.

    Accepts polygons ``[[x, y, ...], ...]`` (each >= 3 points, finite, inside the image up to 1 px),
    uncompressed RLE (``counts`` list) or compressed RLE (``counts`` str) of size ``[height, width]``.
    The mask must not be empty.
    """
    try:
        if isinstance(seg, list):
            if not seg:
                raise ValueError("no polygon")
            for poly in seg:
                if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                    raise ValueError(
                        "a polygon needs an even number of coordinates, at least 3 points"
                    )
                if not all(isinstance(v, int | float) and math.isfinite(v) for v in poly):
                    raise ValueError("a polygon coordinate is not a finite number")
                xs, ys = np.asarray(poly[0::2], float), np.asarray(poly[1::2], float)
                if xs.min() < -1 or ys.min() < -1 or xs.max() > width + 1 or ys.max() > height + 1:
                    raise ValueError(f"a polygon leaves the {width}x{height} image")
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if [int(v) for v in seg["size"]] != [height, width]:
                raise ValueError(
                    f"RLE size {seg['size']} is not the image size [{height}, {width}]"
                )
            if isinstance(seg["counts"], list):
                if sum(int(c) for c in seg["counts"]) != height * width:
                    raise ValueError("uncompressed RLE counts do not add up to the image size")
                rle = mask_utils.frPyObjects(seg, height, width)
            elif isinstance(seg["counts"], str):
                rle = {"size": [height, width], "counts": seg["counts"].encode("ascii")}
            else:
                raise ValueError("RLE counts must be a list or a string")
            mask = mask_utils.decode(rle)  # raises on corrupt counts
            if mask.shape != (height, width):
                raise ValueError("RLE does not decode to the image size")
        else:
            raise ValueError(f"unsupported segmentation of type {type(seg).__name__}")
        area = int(mask_utils.area(rle))
    except (ValueError, TypeError, KeyError, UnicodeEncodeError, OverflowError) as err:
        raise InputError(f"{where}: broken mask: {err}") from None
    if area == 0:
        raise InputError(f"{where}: the mask is empty (delete the object instead)")
    counts = rle["counts"]
    return {
        "size": [height, width],
        "counts": counts.decode() if isinstance(counts, bytes) else counts,
    }


def _object_id(ann: dict[str, Any]) -> Any:
    attrs = ann.get("attributes")
    if isinstance(attrs, dict) and attrs.get("sapnet_id") is not None:
        return attrs["sapnet_id"]
    return ann.get("id")


def _as_int(value: Any) -> int | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


@dataclass
class MergeResult:
    out: Path
    corrected: int
    unchanged: int
    deleted: int


def run_merge(cfg: MergeConfig) -> MergeResult:
    """Merge ``cfg.corrected`` into ``cfg.pseudo`` and write ``cfg.out`` (see the module docstring)."""
    cfg.validate()
    pseudo = _coco(cfg.pseudo, "pseudo-label file")
    fixed = _coco(cfg.corrected, "corrected file")
    where = f"corrected file {cfg.corrected}"
    images = {int(im["id"]): im for im in pseudo["images"]}
    cats = {int(c["id"]) for c in pseudo.get("categories", [])}
    by_id = {int(a["id"]): k for k, a in enumerate(pseudo["annotations"])}

    # the images: all of them must be pseudo-label images
    fixed_images = {}
    for im in fixed.get("images", []):
        iid = _as_int(im.get("id")) if isinstance(im, dict) else None
        ref = images.get(iid) if iid is not None else None
        name = im.get("file_name") if isinstance(im, dict) else None
        if ref is None:
            raise InputError(
                f"{where}: image {name or im!r} (id {iid}) is not in the pseudo labels {cfg.pseudo}: "
                "the file was made for other images"
            )
        if (im.get("height"), im.get("width")) not in ((None, None), (ref["height"], ref["width"])):
            raise InputError(
                f"{where}: image id {iid} is {im.get('width')}x{im.get('height')}, in the pseudo labels "
                f"{ref['width']}x{ref['height']}: the file was made for other images"
            )
        if name and Path(str(name)).name != Path(str(ref["file_name"])).name:
            raise InputError(
                f"{where}: image id {iid} is {name!r}, in the pseudo labels {ref['file_name']!r}: the "
                "file was made for other images"
            )
        fixed_images[iid] = im

    # the objects: known ids, once each, on their own image, with a readable mask
    updates: dict[int, dict[str, Any]] = {}
    unknown, twice = [], []
    for n, ann in enumerate(fixed["annotations"]):
        if not isinstance(ann, dict):
            raise InputError(f"{where}: annotations[{n}] is not an object")
        oid = _as_int(_object_id(ann))
        if oid is None or oid not in by_id:
            unknown.append(_object_id(ann))
            continue
        if oid in updates:
            twice.append(oid)
            continue
        src = pseudo["annotations"][by_id[oid]]
        iid = _as_int(ann.get("image_id"))
        if iid != int(src["image_id"]):
            raise InputError(
                f"{where}: annotation {oid} is on image {ann.get('image_id')}, in the pseudo labels on "
                f"image {src['image_id']}"
            )
        if fixed_images and iid not in fixed_images:
            raise InputError(
                f"{where}: annotation {oid} is on image {iid}, which the file does not list"
            )
        cat = _as_int(ann.get("category_id", src["category_id"]))
        if cat not in cats:
            raise InputError(
                f"{where}: annotation {oid} has unknown category {ann.get('category_id')}"
            )
        im = images[iid]
        rle = corrected_rle(
            ann.get("segmentation"),
            int(im["height"]),
            int(im["width"]),
            f"{where}, annotation {oid}",
        )
        updates[oid] = {"segmentation": rle, "category_id": cat}
    if unknown:
        raise InputError(
            f"{where}: annotation id(s) {_listed(unknown)} are not in the pseudo labels {cfg.pseudo} "
            "(new objects cannot be merged; objects are matched by id)"
        )
    if twice:
        raise InputError(f"{where}: annotation id(s) {_listed(twice)} appear more than once")

    # deletions: objects sent out and not returned
    sent = _sent_ids(fixed, cfg)
    deleted = sorted(set(sent) - set(updates)) if sent is not None else []
    deleted = [d for d in deleted if d in by_id]
    if deleted and not cfg.allow_deletions:
        raise InputError(
            f"{where}: {len(deleted)} object(s) sent for review are missing (deleted by the annotator?): "
            f"ids {_listed(deleted)}; pass --allow-deletions to delete them from the pseudo labels"
        )
    if sent is None:
        log.info("%s lists no reviewed ids (info.sapnet_review): no deletions inferred", where)

    out_anns, n_corrected, n_unchanged = [], 0, 0
    gone = set(deleted)
    for ann in pseudo["annotations"]:
        oid = int(ann["id"])
        if oid in gone:
            continue
        upd = updates.get(oid)
        if upd is None:
            out_anns.append(ann)
            continue
        same_mask = upd["segmentation"]["counts"] == _counts(ann.get("segmentation"))
        if same_mask and upd["category_id"] == int(ann["category_id"]):
            n_unchanged += 1
            out_anns.append(ann)
            continue
        new = {k: v for k, v in ann.items() if k not in DROPPED_KEYS}
        rle = upd["segmentation"]
        enc = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        new["segmentation"] = rle
        new["category_id"] = upd["category_id"]
        new["bbox"] = [float(v) for v in mask_utils.toBbox(enc)]
        new["area"] = int(mask_utils.area(enc))
        new["corrected"] = True
        out_anns.append(new)
        n_corrected += 1

    info = dict(pseudo.get("info") or {})
    record = {
        "source": str(cfg.corrected),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "corrected": n_corrected,
        "unchanged": n_unchanged,
        "deleted": len(deleted),
        "deleted_ids": deleted,
    }
    info["corrections"] = [*info.get("corrections", []), record]
    info["num_corrected"] = sum(r["corrected"] for r in info["corrections"])
    info["num_objects"] = len(out_anns)
    doc = {**pseudo, "info": info, "annotations": out_anns}
    atomic_write_json(cfg.out, doc, compact=True)
    log.info(
        "merged %s: %d corrected, %d unchanged, %d deleted -> %s",
        cfg.corrected, n_corrected, n_unchanged, len(deleted), cfg.out,
    )  # fmt: skip
    save_resolved_config(cfg, sidecar_config_path(cfg.out))
    return MergeResult(cfg.out, n_corrected, n_unchanged, len(deleted))


def _counts(seg: Any) -> Any:
    return seg.get("counts") if isinstance(seg, dict) else None


def _sent_ids(fixed: dict[str, Any], cfg: MergeConfig) -> list[int] | None:
    """Ids under review: the corrected file's ``info.sapnet_review.ids``, else ``--todo``'s, else None."""
    for doc, label in ((fixed, f"corrected file {cfg.corrected}"), (None, f"todo file {cfg.todo}")):
        if doc is None:
            if cfg.todo is None:
                return None
            doc = _coco(cfg.todo, "todo file")
        review = (doc.get("info") or {}).get("sapnet_review")
        if isinstance(review, dict) and isinstance(review.get("ids"), list):
            ids = [_as_int(i) for i in review["ids"]]
            if any(i is None for i in ids):
                raise InputError(f"{label}: info.sapnet_review.ids holds a non-integer id")
            return [int(i) for i in ids if i is not None]
    return None
