"""Binary masks, COCO RLE and boxes.

Conventions used across sapnet:
- Masks are ``bool`` arrays ``(H, W)`` or ``(K, H, W)``, row = y, column = x.
- Boxes are ``xyxy`` float32 in *edge* pixel coordinates: pixel column ``c`` spans ``[c, c+1)``, so a mask whose
  columns run from ``c0`` to ``c1`` (inclusive) has ``x1 = c0`` and ``x2 = c1 + 1`` (COCO ``toBbox`` convention,
  ``[x, y, w, h] -> [x, y, x + w, y + h]``). An empty mask has the box ``[0, 0, 0, 0]``.
- Points are ``[x, y]`` in *pixel-index* coordinates: the centre of pixel (row r, col c) is ``(x=c, y=r)``
  (the SAM / P2BNet / PointSup convention). Add 0.5 to compare a point with edge-coordinate boxes.
- RLE ``counts`` are COCO *compressed* strings (ASCII), with ``size = [H, W]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode_masks(masks: np.ndarray) -> list[str]:
    """Encode ``(K, H, W)`` bool masks to K compressed COCO RLE ``counts`` strings."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected (K, H, W) masks, got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    return [r["counts"].decode("ascii") for r in mask_utils.encode(fortran)]


def decode_rle(counts: str | bytes, height: int, width: int) -> np.ndarray:
    """Decode one compressed RLE to an ``(H, W)`` bool mask."""
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return mask_utils.decode({"size": [int(height), int(width)], "counts": counts}).astype(bool)


def decode_rles(counts: list[str], height: int, width: int) -> np.ndarray:
    """Decode K compressed RLEs of one image to ``(K, H, W)`` bool masks."""
    if len(counts) == 0:
        return np.zeros((0, height, width), dtype=bool)
    rles = [{"size": [int(height), int(width)], "counts": c.encode("ascii")} for c in counts]
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def rle_runs(counts: str | bytes) -> list[int]:
    """The run lengths of a COCO compressed RLE ``counts`` string (pycocotools' ``rleFrString``, in Python).

    Each run is 5-bit groups of ``ord(c) - 48`` with a continuation bit (0x20) and a sign bit (0x10) in the
    last group; from the third run on, runs are stored as differences to the run two places before.
    Example: ``"0d0"`` -> ``[0, 20]`` (a 4x5 mask of ones). Raises ValueError on characters outside
    ``'0'..'o'`` or a string that ends inside a run.
    """
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("RLE counts string ends inside a run")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE counts hold an invalid character {chr(data[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """Why a COCO ``segmentation`` is not a valid mask of an ``height x width`` image, or None if it is.

    Polygons: a non-empty list of polygons, each a flat list of at least 6 finite numbers (3 points), even
    length. RLE: ``size == [height, width]`` and counts (a list, or a compressed string) of non-negative runs
    adding up to ``height * width``. pycocotools accepts broken inputs silently (garbage counts decode to
    random masks) or fails without naming the record, so every stage validates with this function first.
    """
    hw = height * width
    if isinstance(segmentation, list):
        if len(segmentation) == 0:
            return "empty polygon list"
        for i, poly in enumerate(segmentation):
            if not isinstance(poly, list):
                return f"polygon {i} is not a list of coordinates (got {type(poly).__name__})"
            if len(poly) < 6 or len(poly) % 2:
                return (
                    f"polygon {i} has {len(poly)} coordinate(s); a polygon needs an even number, "
                    "at least 6 (x1, y1, x2, y2, x3, y3, ...)"
                )
            if not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in poly
            ):
                return f"polygon {i} holds a value that is not a finite number"
        return None
    if not isinstance(segmentation, dict):
        return f"unsupported segmentation of type {type(segmentation).__name__}"
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not isinstance(size, list | tuple) or len(size) != 2:
        return f"RLE needs 'size': [height, width], got {size!r}"
    try:
        size_hw = [int(size[0]), int(size[1])]
    except (TypeError, ValueError):
        return f"RLE 'size' must hold two integers, got {size!r}"
    if size_hw != [int(height), int(width)]:
        return (
            f"RLE size {size_hw} does not match its image size [height, width] = "
            f"{[int(height), int(width)]}"
        )
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            return "RLE counts must be non-negative integers"
        runs = counts
    elif isinstance(counts, str | bytes):
        try:
            runs = rle_runs(counts)
        except (ValueError, UnicodeEncodeError) as err:
            return f"RLE counts cannot be decoded: {err}"
        if any(r < 0 for r in runs):
            return "RLE counts decode to a negative run (garbage counts string)"
    else:
        return f"RLE 'counts' must be a string or a list, got {type(counts).__name__}"
    if sum(runs) != hw:
        return f"RLE counts cover {sum(runs)} pixels, the {height}x{width} image has {hw}"
    return None


def segmentation_to_mask(
    segmentation, height: int, width: int, *, check: bool = True
) -> np.ndarray:
    """Decode a COCO ``segmentation`` (polygons, uncompressed or compressed RLE) to an ``(H, W)`` bool mask.

    Raises ValueError (with the reason from :func:`segmentation_problem`) for a malformed segmentation.
    ``check=False`` skips that check, for masks of a file already validated (the training data loader decodes
    every mask every epoch; the check decodes compressed RLE in Python, about a quarter of the time).
    """
    if isinstance(segmentation, list) and len(segmentation) == 0:
        return np.zeros((height, width), dtype=bool)
    problem = segmentation_problem(segmentation, height, width) if check else None
    if problem is not None:
        raise ValueError(problem)
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        counts = segmentation["counts"]
        rle = {
            "size": segmentation["size"],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
        }
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight ``xyxy`` boxes (edge coordinates) of ``(K, H, W)`` bool masks, vectorised; empty -> zeros.

    Returns ``(K, 4)`` float32.
    """
    masks = np.asarray(masks, dtype=bool)
    k = masks.shape[0]
    boxes = np.zeros((k, 4), dtype=np.float32)
    if k == 0:
        return boxes
    cols = masks.any(axis=1)  # (K, W)
    rows = masks.any(axis=2)  # (K, H)
    nonempty = cols.any(axis=1)
    w, h = cols.shape[1], rows.shape[1]
    x1 = np.argmax(cols, axis=1)
    x2 = w - np.argmax(cols[:, ::-1], axis=1)
    y1 = np.argmax(rows, axis=1)
    y2 = h - np.argmax(rows[:, ::-1], axis=1)
    boxes[:] = np.stack([x1, y1, x2, y2], axis=1)
    boxes[~nonempty] = 0.0
    return boxes
