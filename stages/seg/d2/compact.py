"""The training set as one byte buffer: detectron2 dataset dicts without a list of dicts in memory.

detectron2's ``load_coco_json`` parses the whole JSON and builds a Python dict per image and annotation; for
COCO train2017 pseudo labels with auxiliary masks that is many GB in the main process before
``DatasetFromList(serialize=True)`` packs it. :class:`CompactCocoDataset` reads the file as a stream
(:mod:`stages.common.json_stream`), converts each annotation exactly as ``load_coco_json`` does (with the
``aux_segmentations`` / ``aux_weights`` keys) and pickles it straight into one growing buffer; per image it keeps
only numbers and the file name. Items are rebuilt on access. The buffer is a NumPy array that is never written
after construction, so forked data-loader workers share its pages instead of copying them.

Images without a non-crowd annotation are left out (detectron2's ``filter_empty``, which
``get_detection_dataset_dicts`` skips for a Dataset object).
"""

from __future__ import annotations

import os
import pickle
from array import array
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from stages.common.errors import InputError
from stages.common.json_stream import iter_top_level

ANN_KEYS = ("iscrowd", "bbox", "category_id")


def d2_annotation(
    ann: dict[str, Any], id_map: dict[int, int], extra_keys: list[str]
) -> dict | None:
    """One COCO annotation as ``load_coco_json`` makes it (None when it has no valid segmentation)."""
    obj = {key: ann[key] for key in (*ANN_KEYS, *extra_keys) if key in ann}
    segm = ann.get("segmentation")
    if segm:
        if isinstance(segm, dict):
            if isinstance(segm["counts"], list):
                segm = mask_utils.frPyObjects(segm, *segm["size"])
        else:
            segm = [poly for poly in segm if len(poly) % 2 == 0 and len(poly) >= 6]
            if not segm:
                return None
        obj["segmentation"] = segm
    obj["bbox_mode"] = 1  # BoxMode.XYWH_ABS
    obj["category_id"] = id_map[int(obj["category_id"])]
    return obj


class CompactCocoDataset(Dataset):
    """detectron2 records of a COCO instances file, held as pickled annotations in one uint8 array.

    Attributes:
        file_names: ``(I,)`` image paths (``image_root`` joined). image_id, height, width: ``(I,)`` int64.
        ann_ptr: ``(I + 1,)`` annotations of image i are ``ann_ptr[i]:ann_ptr[i + 1]`` in ``ann_order``.
        ann_order: ``(A,)`` annotation blob index in image order. offsets: ``(A + 1,)`` blob byte ranges.
        blob: ``(bytes,)`` uint8, the pickled annotation dicts.
    """

    def __init__(
        self, json_file: str | Path, image_root: str | Path, extra_keys: list[str] | None = None
    ):
        path = Path(json_file)
        extra = list(extra_keys or [])
        id_map: dict[int, int] | None = None
        index_of: dict[int, int] = {}
        names: list[str] = []
        hw: list[tuple[int, int, int]] = []
        blob = bytearray()
        offsets = array("q", [0])
        ann_image = array("q")
        crowd = array("b")
        waiting: list[dict[str, Any]] = []  # annotations seen before the images/categories

        def add(ann: dict[str, Any]) -> None:
            image = index_of.get(ann.get("image_id"))
            if image is None:
                raise InputError(f"{path}: annotation {ann.get('id')}: unknown image_id")
            if ann.get("ignore", 0):
                raise InputError(f"{path}: annotation {ann.get('id')}: 'ignore' is not supported")
            assert id_map is not None
            try:
                obj = d2_annotation(ann, id_map, extra)
            except KeyError:
                raise InputError(
                    f"{path}: annotation {ann.get('id')}: category_id {ann.get('category_id')} is "
                    "not in 'categories'"
                ) from None
            if obj is None:
                return
            blob.extend(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
            offsets.append(len(blob))
            ann_image.append(image)
            crowd.append(int(obj.get("iscrowd", 0)) != 0)

        seen: set[str] = set()
        for key, value, element in iter_top_level(path):
            seen.add(key)
            if key == "categories":
                ids = sorted(int(c["id"]) for c in value)
                id_map = {c: k for k, c in enumerate(ids)}
            elif key == "images" and element:
                index_of[int(value["id"])] = len(names)
                names.append(os.path.join(str(image_root), value["file_name"]))
                hw.append((int(value["id"]), int(value["height"]), int(value["width"])))
            elif key == "annotations" and element:
                if id_map is None or "images" not in seen:
                    waiting.append(value)  # a file with annotations before images/categories
                else:
                    add(value)
        if id_map is None:
            raise InputError(f"{path}: missing 'categories' (not a COCO instances file)")
        for ann in waiting:
            add(ann)
        ann_image_np = np.frombuffer(ann_image, dtype=np.int64) if ann_image else np.zeros(0, int)
        crowd_np = np.frombuffer(crowd, dtype=np.int8).astype(bool) if crowd else np.zeros(0, bool)
        n_img = len(names)
        keep = np.bincount(ann_image_np[~crowd_np], minlength=n_img) > 0  # filter_empty
        order = np.argsort(ann_image_np, kind="stable")
        per_image = np.bincount(ann_image_np, minlength=n_img)
        full_ptr = np.concatenate([[0], np.cumsum(per_image)])
        kept = np.nonzero(keep)[0]
        self.file_names = [names[i] for i in kept.tolist()]
        meta = np.asarray(hw, dtype=np.int64).reshape(-1, 3)[kept]
        self.image_id, self.height, self.width = meta[:, 0], meta[:, 1], meta[:, 2]
        starts, stops = full_ptr[kept], full_ptr[kept + 1]
        self.ann_order = np.concatenate(
            [order[a:b] for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]
            or [np.zeros(0, np.int64)]
        ).astype(np.int64)
        self.ann_ptr = np.concatenate([[0], np.cumsum(stops - starts)]).astype(np.int64)
        self.offsets = np.frombuffer(offsets, dtype=np.int64).copy()
        self.blob = np.frombuffer(blob, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.file_names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self.file_names):
            raise IndexError(f"record {i} of {len(self.file_names)}")
        lo, hi = int(self.ann_ptr[i]), int(self.ann_ptr[i + 1])
        anns = []
        for k in self.ann_order[lo:hi].tolist():
            a, b = int(self.offsets[k]), int(self.offsets[k + 1])
            anns.append(pickle.loads(self.blob[a:b].tobytes()))
        return {
            "file_name": self.file_names[i],
            "height": int(self.height[i]),
            "width": int(self.width[i]),
            "image_id": int(self.image_id[i]),
            "annotations": anns,
        }

    @property
    def nbytes(self) -> int:
        """Bytes held in arrays (the file names list aside)."""
        arrays = (self.blob, self.offsets, self.ann_order, self.ann_ptr, self.image_id)
        return int(sum(a.nbytes for a in arrays)) + 2 * int(self.height.nbytes)
