"""Validate and register the pseudo-label training JSON and the ground-truth validation JSON with detectron2.

The pseudo JSON (from ``sapnet export-pseudo``) is a COCO instances file whose annotations carry an RLE
``segmentation`` and optionally ``aux_segmentations`` (list of RLE dicts) + ``aux_weights`` (list of floats).
Both files are checked up front (:func:`validate_coco_json`, :func:`check_same_categories`) so that a bad input
fails with an :class:`InputError` naming the file and the record, before any model is built. Registration is
lazy (``DatasetCatalog``) and replaces an existing registration of the same name, so it can run in every
process started by ``launch`` and several times in one process (tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common.errors import InputError, first_items
from stages.common.json_stream import iter_top_level
from stages.common.masks import segmentation_problem
from stages.seg.d2 import compat
from stages.seg.d2.compact import CompactCocoDataset

compat.apply()

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import load_coco_json  # noqa: E402

EXTRA_ANNOTATION_KEYS = ["aux_segmentations", "aux_weights"]


@dataclass(frozen=True)
class CocoSummary:
    """What :func:`validate_coco_json` learnt about a file."""

    path: Path
    num_images: int
    num_annotations: int
    categories: dict[int, str]  # dataset category id -> name
    num_with_aux: int


def _has_mask(segmentation: Any) -> bool:
    if isinstance(segmentation, dict):
        return "counts" in segmentation and "size" in segmentation and bool(segmentation["counts"])
    if isinstance(segmentation, list):
        return any(isinstance(p, list) and len(p) >= 6 for p in segmentation)
    return False


def _check_rle_size(path: Path, ann_id: Any, what: str, seg: Any, hw: tuple[int, int]) -> None:
    if isinstance(seg, dict) and [int(v) for v in seg.get("size", hw)] != list(hw):
        raise InputError(
            f"{path}: annotation {ann_id}: {what} RLE size {seg.get('size')} does not match its image "
            f"size [height, width] = {list(hw)}"
        )


def _check_mask(path: Path, ann_id: Any, what: str, seg: Any, hw: tuple[int, int]) -> None:
    if seg in (None, [], {}):
        return
    why = segmentation_problem(seg, *hw)
    if why is not None:
        raise InputError(f"{path}: annotation {ann_id}: {what}: {why}")


def validate_coco_json(
    path: str | Path,
    image_root: str | Path,
    require_masks: bool = True,
    require_annotations: bool = False,
) -> CocoSummary:
    """Check a COCO instances JSON for training/evaluation; returns a :class:`CocoSummary`.

    Checks: valid COCO structure; at least one category and one image; every image file exists under
    ``image_root``; every annotation refers to a known image and category; with ``require_masks`` every
    non-crowd annotation has a mask (RLE or polygons) whose RLE size matches its image; ``aux_segmentations``
    and ``aux_weights`` have the same length and image-sized RLEs. The file is read as a stream (one
    annotation at a time), so a pseudo-label file of any size is checked in little memory. Every mask is
    well formed (polygons of at least 3 points, RLE counts covering the image); with ``require_annotations``
    at least one non-crowd annotation exists (a training set without any would stop detectron2 with an
    assertion).

    Raises:
        InputError: naming the file, the record (image / annotation id) and the problem.
    """
    path, image_root = Path(path), Path(image_root)
    categories: dict[int, str] | None = None
    sizes: dict[int, tuple[int, int]] = {}
    missing: list[str] = []
    no_mask: list[Any] = []
    waiting: list[dict[str, Any]] = []  # annotations listed before the images / categories
    seen: set[str] = set()
    counts = {"images": 0, "annotations": 0, "with_aux": 0, "objects": 0}

    def check(ann: dict[str, Any]) -> None:
        assert categories is not None
        if not isinstance(ann, dict):
            raise InputError(f"{path}: an annotation is not an object")
        ann_id = ann.get("id", "?")
        image_id = ann.get("image_id")
        if image_id not in sizes:
            raise InputError(f"{path}: annotation {ann_id}: unknown image_id {image_id}")
        if int(ann.get("category_id", -1)) not in categories:
            raise InputError(
                f"{path}: annotation {ann_id}: category_id {ann.get('category_id')} is not in 'categories'"
            )
        if int(ann.get("iscrowd", 0)):
            return
        counts["objects"] += 1
        seg = ann.get("segmentation")
        if require_masks and not _has_mask(seg):
            no_mask.append(ann_id)
            return
        _check_rle_size(path, ann_id, "segmentation", seg, sizes[image_id])
        _check_mask(path, ann_id, "segmentation", seg, sizes[image_id])
        aux = ann.get("aux_segmentations")
        if aux is None:
            return
        weights = ann.get("aux_weights")
        if not isinstance(aux, list) or (weights is not None and len(weights) != len(aux)):
            raise InputError(
                f"{path}: annotation {ann_id}: aux_segmentations must be a list with one aux_weights "
                f"entry each (got {len(aux) if isinstance(aux, list) else type(aux).__name__} masks, "
                f"{None if weights is None else len(weights)} weights)"
            )
        for seg_aux in aux:
            if not _has_mask(seg_aux):
                raise InputError(
                    f"{path}: annotation {ann_id}: an aux_segmentations entry is not a mask"
                )
            _check_rle_size(path, ann_id, "aux_segmentations", seg_aux, sizes[image_id])
            _check_mask(path, ann_id, "aux_segmentations", seg_aux, sizes[image_id])
        counts["with_aux"] += bool(aux)

    for key, value, element in iter_top_level(path, ("images", "annotations")):
        if key in ("images", "annotations", "categories") and not element:
            if not isinstance(value, list):
                raise InputError(
                    f"{path}: missing or invalid '{key}' list (not a COCO instances file)"
                )
            seen.add(key)
        if key == "categories":
            categories = {int(c["id"]): str(c.get("name", c["id"])) for c in value}
        elif key == "images" and element:
            sizes[int(value["id"])] = (int(value["height"]), int(value["width"]))
            counts["images"] += 1
            if not (image_root / value["file_name"]).is_file():
                missing.append(str(value["file_name"]))
        elif key == "annotations" and element:
            counts["annotations"] += 1
            if {"images", "categories"} <= seen:
                check(value)
            else:
                waiting.append(value)
    for key in ("images", "annotations", "categories"):
        if key not in seen:
            raise InputError(f"{path}: missing or invalid '{key}' list (not a COCO instances file)")
    if not categories:
        raise InputError(f"{path}: no categories")
    if not sizes:
        raise InputError(f"{path}: no images")
    if missing:
        shown = first_items(missing)
        raise InputError(
            f"{path}: {len(missing)} of {counts['images']} image files missing under {image_root}: "
            f"{shown}"
        )
    for ann in waiting:
        check(ann)
    if require_annotations and counts["objects"] == 0:
        raise InputError(
            f"{path}: no annotations to train on ({counts['annotations']} annotation(s), none of them a "
            "non-crowd object); export pseudo labels first or check the file"
        )
    if no_mask:
        shown = first_items(no_mask)
        raise InputError(
            f"{path}: {len(no_mask)} annotations have no mask ('segmentation' missing or empty), e.g. ids "
            f"{shown}; SOLOv2 trains on masks (set INPUT.MASK_FORMAT bitmask, RLE segmentations)"
        )
    return CocoSummary(
        path=path,
        num_images=counts["images"],
        num_annotations=counts["annotations"],
        categories=categories,
        num_with_aux=counts["with_aux"],
    )


def check_same_categories(train: CocoSummary, val: CocoSummary) -> None:
    """Raise :class:`InputError` unless both files have the same category ids with the same names."""
    if train.categories == val.categories:
        return
    only_train = sorted(set(train.categories) - set(val.categories))
    only_val = sorted(set(val.categories) - set(train.categories))
    renamed = sorted(
        i
        for i in set(train.categories) & set(val.categories)
        if train.categories[i] != val.categories[i]
    )
    raise InputError(
        f"categories differ between {train.path} and {val.path}: ids only in train {only_train}, only in "
        f"val {only_val}, same id with another name {renamed}; the model's classes must match the "
        "evaluation set"
    )


def register_coco_instances_with_aux(
    name: str, json_file: str | Path, image_root: str | Path, compact: bool = False
) -> None:
    """Register ``name`` (lazily loaded with the aux keys) with ``evaluator_type="coco"`` metadata.

    ``compact``: load it as a :class:`~stages.seg.d2.compact.CompactCocoDataset` (a streamed, serialised
    Dataset that data-loader workers share) instead of ``load_coco_json``'s list of dicts; for the training
    set, whose pseudo labels with aux masks are the biggest file (COCO train2017: over a GB). An existing
    registration of ``name`` is replaced.
    """
    json_file, image_root = str(json_file), str(image_root)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    if compact:
        DatasetCatalog.register(
            name, lambda: CompactCocoDataset(json_file, image_root, EXTRA_ANNOTATION_KEYS)
        )
    else:
        DatasetCatalog.register(
            name,
            lambda: load_coco_json(
                json_file, image_root, name, extra_annotation_keys=EXTRA_ANNOTATION_KEYS
            ),
        )
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")


def set_thing_metadata(name: str, summary: CocoSummary) -> None:
    """Set ``thing_classes`` and the id mapping ``load_coco_json`` would set, without loading the file."""
    ids = sorted(summary.categories)
    MetadataCatalog.get(name).set(
        thing_classes=[summary.categories[i] for i in ids],
        thing_dataset_id_to_contiguous_id={i: k for k, i in enumerate(ids)},
    )


def register_datasets(
    train_json: str | Path,
    train_images: str | Path,
    val_json: str | Path | None = None,
    val_images: str | Path | None = None,
    train_name: str = "sapnet_pseudo_train",
    val_name: str = "sapnet_val",
    validate: bool = True,
) -> dict[str, Any]:
    """Validate and register the training (pseudo) and optional validation (GT) sets.

    Returns ``{"train": train_name, "val": val_name | None, "num_classes": int, "thing_classes": [...],
    "train_summary": CocoSummary | None}``. ``validate=False`` skips the checks (for worker processes,
    after the launching process has validated).
    """
    train_summary = (
        validate_coco_json(train_json, train_images, require_annotations=True) if validate else None
    )
    val_summary = None
    if val_json is not None:
        val_images = val_images if val_images is not None else train_images
        if validate:
            val_summary = validate_coco_json(val_json, val_images, require_masks=False)
            check_same_categories(train_summary, val_summary)
    register_coco_instances_with_aux(train_name, train_json, train_images, compact=True)
    summary = train_summary or _categories_only(train_json)
    set_thing_metadata(train_name, summary)
    if val_json is not None:
        register_coco_instances_with_aux(val_name, val_json, val_images)
        set_thing_metadata(val_name, val_summary or _categories_only(val_json))
    ids = sorted(summary.categories)
    return {
        "train": train_name,
        "val": val_name if val_json is not None else None,
        "num_classes": len(ids),
        "thing_classes": [summary.categories[i] for i in ids],
        "train_summary": train_summary,
    }


def _categories_only(path: str | Path) -> CocoSummary:
    """The categories of a COCO file, streamed up to its ``categories`` key (counts: -1, not read)."""
    for key, value, _ in iter_top_level(path, ("images", "annotations")):
        if key == "categories":
            if not isinstance(value, list):
                break
            cats = {int(c["id"]): str(c.get("name", c["id"])) for c in value}
            return CocoSummary(Path(path), -1, -1, cats, 0)
    raise InputError(f"{path}: missing or invalid 'categories' list (not a COCO instances file)")
