"""Point annotations: loading and validating a COCO instances JSON with one point per object.

Input format (the SAPNet/P2BNet convention): a COCO instances JSON whose annotations carry
``"point": [x, y]`` in pixel-index coordinates (the centre of pixel (row r, col c) is ``(x=c, y=r)``). detectron2
PointSup's ``point_coords`` / ``point_labels`` are accepted too (the first positive point is used).
``category_id`` is required. ``segmentation`` / ``bbox``, when present, are ground truth used only by evaluation and
by ``sapnet points``. ``iscrowd=1`` annotations are never prompted.

Objects are ordered by image (the order of ``images`` in the file), then by their order in ``annotations``; this
"object order" is the one every later stage uses.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from stages.common.errors import InputError, first_items
from stages.common.io import load_json, sha256_file

log = logging.getLogger(__name__)

OnError = Literal["fail", "skip"]
ON_ERROR: tuple[str, ...] = get_args(OnError)
"""The ``--on-error`` choices of the stages that read annotations (points, propose)."""


@dataclass(frozen=True)
class ImageRecord:
    """One entry of the JSON's ``images`` list; ``index`` is its position in that list."""

    index: int
    image_id: int
    file_name: str
    height: int
    width: int


@dataclass(frozen=True)
class Problem:
    """A record that failed validation (kept in logs and stores when ``--on-error skip``)."""

    source: str
    message: str
    ann_id: int | None = None
    image_id: int | None = None

    def __str__(self) -> str:
        where = []
        if self.ann_id is not None:
            where.append(f"annotation id {self.ann_id}")
        if self.image_id is not None:
            where.append(f"image id {self.image_id}")
        loc = f" ({', '.join(where)})" if where else ""
        return f"{self.source}{loc}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ann_id": self.ann_id,
            "image_id": self.image_id,
            "message": self.message,
        }


@dataclass
class PointSet:
    """Validated point annotations, as flat per-object arrays in object order.

    Attributes:
        source: the JSON file. sha256: its checksum.
        images: every image of the file, in file order.
        categories: the file's ``categories`` list.
        ann_id: ``(P,)`` int64. image_index: ``(P,)`` int32 index into ``images``.
        category_id: ``(P,)`` int32. xy: ``(P, 2)`` float32 point ``[x, y]`` (pixel-index coordinates).
        problems: records skipped under ``on_error="skip"``.
        coco: the raw JSON document.
    """

    source: Path
    sha256: str
    images: list[ImageRecord]
    categories: list[dict[str, Any]]
    ann_id: np.ndarray
    image_index: np.ndarray
    category_id: np.ndarray
    xy: np.ndarray
    problems: list[Problem] = field(default_factory=list)
    coco: dict[str, Any] = field(default_factory=dict, repr=False)
    num_crowd: int = 0

    @property
    def num_points(self) -> int:
        return int(self.ann_id.shape[0])

    def image_ptr(self) -> np.ndarray:
        """CSR offsets ``(I + 1,)``: the objects of image i are ``ptr[i]:ptr[i + 1]``."""
        counts = np.bincount(self.image_index, minlength=len(self.images))
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def load_coco(path: str | Path, what: str = "annotations file") -> dict[str, Any]:
    """Load a COCO instances JSON and check its top-level structure (InputError otherwise)."""
    coco = load_json(path, what)
    if not isinstance(coco, dict):
        raise InputError(
            f"{what} {path}: expected a JSON object with images/annotations/categories"
        )
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise InputError(f"{what} {path}: missing top-level key {key!r}")
        if not isinstance(coco[key], list):
            raise InputError(f"{what} {path}: {key!r} must be a list")
    return coco


def parse_images(coco: dict[str, Any], source: str) -> list[ImageRecord]:
    """The ``images`` list as records; missing keys or duplicate ids raise InputError."""
    records: list[ImageRecord] = []
    seen: set[int] = set()
    for index, img in enumerate(coco["images"]):
        if not isinstance(img, dict):
            raise InputError(f"{source}: images[{index}] is not an object")
        missing = [k for k in ("id", "file_name", "height", "width") if k not in img]
        if missing:
            raise InputError(f"{source}: images[{index}] is missing key(s) {', '.join(missing)}")
        image_id = int(img["id"])
        if image_id in seen:
            raise InputError(f"{source}: duplicate image id {image_id}")
        seen.add(image_id)
        height, width = int(img["height"]), int(img["width"])
        if height <= 0 or width <= 0:
            raise InputError(
                f"{source}: image id {image_id} has a non-positive size {width}x{height}"
            )
        records.append(ImageRecord(index, image_id, str(img["file_name"]), height, width))
    return records


def _category_ids(coco: dict[str, Any], source: str) -> set[int]:
    ids: set[int] = set()
    for index, cat in enumerate(coco["categories"]):
        if not isinstance(cat, dict) or "id" not in cat:
            raise InputError(f"{source}: categories[{index}] has no 'id'")
        if int(cat["id"]) in ids:
            raise InputError(f"{source}: duplicate category id {cat['id']}")
        ids.add(int(cat["id"]))
    return ids


def annotation_point(ann: dict[str, Any]) -> list[float] | None:
    """The point of an annotation: ``point`` or PointSup's first positive ``point_coords``; else None."""
    if "point" in ann and ann["point"] is not None:
        return ann["point"]
    coords = ann.get("point_coords")
    if coords:
        labels = ann.get("point_labels") or [1] * len(coords)
        for coord, label in zip(coords, labels, strict=False):
            if int(label) == 1:
                return coord
        return None
    return None


def _check_point(point: Any, img: ImageRecord) -> str | None:
    """Why a point is invalid for its image, or None. Valid: finite and -0.5 <= x <= W - 0.5 (same for y)."""
    if not isinstance(point, list | tuple) or len(point) != 2:
        return f"point must be [x, y], got {point!r}"
    try:
        x, y = float(point[0]), float(point[1])
    except (TypeError, ValueError):
        return f"point must hold two numbers, got {point!r}"
    if not (math.isfinite(x) and math.isfinite(y)):
        return f"point {point!r} is not finite"
    if not (-0.5 <= x <= img.width - 0.5 and -0.5 <= y <= img.height - 0.5):
        return (
            f"point ({x:g}, {y:g}) lies outside the {img.width}x{img.height} image "
            f"(file {img.file_name})"
        )
    return None


def load_points(
    path: str | Path, on_error: OnError = "fail", require_points: bool = True
) -> PointSet:
    """Load and validate point annotations.

    Structural problems (unreadable/invalid JSON, missing top-level keys, duplicate image or category ids) always
    raise InputError. Record problems (an annotation missing keys, an unknown image or category, a point that is
    missing, non-finite or outside its image, a duplicate annotation id) raise InputError listing them when
    ``on_error="fail"``, and are skipped and recorded in ``PointSet.problems`` when ``on_error="skip"``.
    ``iscrowd=1`` annotations are never prompted and never a problem.
    """
    path = Path(path)
    source = str(path)
    coco = load_coco(path)
    images = parse_images(coco, source)
    by_id = {img.image_id: img for img in images}
    cat_ids = _category_ids(coco, source)

    problems: list[Problem] = []
    rows: list[tuple[int, int, int, int, float, float]] = []  # (image_index, order, ann, cat, x, y)
    seen_ann: set[int] = set()
    num_crowd = 0
    for order, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict):
            problems.append(Problem(source, f"annotations[{order}] is not an object"))
            continue
        ann_id = ann.get("id")
        missing = [k for k in ("id", "image_id", "category_id") if k not in ann]
        if missing:
            problems.append(
                Problem(
                    source, f"annotations[{order}] is missing key(s) {', '.join(missing)}", ann_id
                )
            )
            continue
        ann_id = int(ann["id"])
        image_id = int(ann["image_id"])
        if ann_id in seen_ann:
            problems.append(Problem(source, "duplicate annotation id", ann_id, image_id))
            continue
        seen_ann.add(ann_id)
        if image_id not in by_id:
            problems.append(Problem(source, "unknown image id (not in 'images')", ann_id, image_id))
            continue
        if int(ann["category_id"]) not in cat_ids:
            problems.append(
                Problem(source, f"unknown category id {ann['category_id']}", ann_id, image_id)
            )
            continue
        if int(ann.get("iscrowd", 0)) == 1:
            num_crowd += 1
            continue
        point = annotation_point(ann)
        if point is None:
            if require_points:
                problems.append(
                    Problem(
                        source, "no point ('point' or positive 'point_coords')", ann_id, image_id
                    )
                )
            continue
        img = by_id[image_id]
        why = _check_point(point, img)
        if why is not None:
            problems.append(Problem(source, why, ann_id, image_id))
            continue
        rows.append(
            (img.index, order, ann_id, int(ann["category_id"]), float(point[0]), float(point[1]))
        )

    if problems and on_error == "fail":
        raise InputError(
            f"{len(problems)} invalid annotation(s) in {source}:\n  "
            f"{first_items(problems, sep=chr(10) + '  ')}\n"
            "(use --on-error skip to skip them and go on)"
        )
    for problem in problems:
        log.warning("skipped: %s", problem)

    rows.sort(key=lambda r: (r[0], r[1]))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return PointSet(
        source=path,
        sha256=sha256_file(path),
        images=images,
        categories=list(coco["categories"]),
        ann_id=arr[:, 2].astype(np.int64),
        image_index=arr[:, 0].astype(np.int32),
        category_id=arr[:, 3].astype(np.int32),
        xy=arr[:, 4:6].astype(np.float32),
        problems=problems,
        coco=coco,
        num_crowd=num_crowd,
    )


def missing_image_files(images: list[ImageRecord], images_dir: str | Path) -> list[ImageRecord]:
    """The images whose file does not exist under ``images_dir`` (a cheap stat per file)."""
    root = Path(images_dir)
    return [img for img in images if not (root / img.file_name).is_file()]
