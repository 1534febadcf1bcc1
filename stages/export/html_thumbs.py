"""Small JPEGs for the HTML report: per-image overlays of one selector, and per-object proposal strips.

Masks arrive full resolution ``(K, H, W)`` bool and are shrunk by nearest-neighbour sampling (index arrays, no
interpolation), so a thumbnail costs one decode per mask and one resize of the photo. Boxes are xyxy edge
coordinates and points ``[x, y]`` pixel-index coordinates (see :mod:`stages.common.masks`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.io import atomic_write_bytes
from stages.export.viz import InstanceLayer, draw_overlay, mask_outline

THUMB_SIDE = 320  # longest side of an image thumbnail, pixels
TILE = 96  # side of one proposal tile in an object strip
JPEG_QUALITY = 78
PICK_COLOR = (255, 196, 0)
TINT = np.array([0, 160, 255], np.float32)


def thumb_scale(height: int, width: int, side: int = THUMB_SIDE) -> float:
    """Scale factor (<= 1) that brings the longest side of an ``height x width`` image to at most ``side``."""
    return min(1.0, side / max(height, width, 1))


def sample_index(
    n_out: int, n_in: int, start: float = 0.0, step: float | None = None
) -> np.ndarray:
    """``(n_out,)`` nearest source indices in ``[0, n_in)`` of output pixel centres (``start`` + i * ``step``)."""
    step = n_in / n_out if step is None else step
    idx = np.floor(start + (np.arange(n_out) + 0.5) * step).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def shrink(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of bool masks ``(..., H, W)`` to ``(..., height, width)``."""
    ys = sample_index(height, masks.shape[-2])
    xs = sample_index(width, masks.shape[-1])
    return masks[..., ys, :][..., xs]


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """``(H, W, 3)`` uint8 -> JPEG bytes."""
    import io

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def shrink_photo(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a photo ``(H, W, 3)`` uint8 with a box filter (smooth, unlike the masks)."""
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def image_overlay_thumb(
    photo_small: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
    points: np.ndarray | None,
    labels: list[str],
    gt_masks: np.ndarray | None,
    scale: float,
) -> np.ndarray:
    """One selector's instances drawn on the thumbnail ``photo_small (h, w, 3)``.

    Args:
        masks: ``(K, H, W)`` bool full resolution; boxes: ``(K, 4)`` xyxy; points ``(K, 2)`` or None.
        gt_masks: ``(G, H, W)`` bool (outlined in white) or None. scale: thumbnail / original size.
    """
    h, w = photo_small.shape[:2]
    small = shrink(masks, h, w) if len(masks) else np.zeros((0, h, w), bool)
    gt_small = shrink(gt_masks, h, w) if gt_masks is not None and len(gt_masks) else None
    pts = None if points is None else (np.asarray(points, np.float64) + 0.5) * scale - 0.5
    layer = InstanceLayer(small, np.asarray(boxes, np.float64) * scale, pts, labels)
    return draw_overlay(photo_small, layer, gt_small)


def crop_box(boxes: np.ndarray, point: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """Square-ish crop ``[x1, y1, x2, y2]`` (ints, edge coordinates) around the union of ``boxes (K, 4)``.

    The union (and the point) is padded by 15 % per side and at least 8 px, then clipped to the image.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
    if point is not None:
        px, py = float(point[0]), float(point[1])
        b = np.vstack([b, [px, py, px + 1, py + 1]])
    if len(b) == 0:
        return np.array([0, 0, width, height], np.int64)
    x1, y1 = b[:, 0].min(), b[:, 1].min()
    x2, y2 = b[:, 2].max(), b[:, 3].max()
    pad_x, pad_y = max(8.0, 0.15 * (x2 - x1)), max(8.0, 0.15 * (y2 - y1))
    out = np.array([x1 - pad_x, y1 - pad_y, x2 + pad_x, y2 + pad_y])
    out = np.round(out).astype(np.int64)
    out[[0, 2]] = np.clip(out[[0, 2]], 0, width)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, height)
    if out[2] <= out[0] or out[3] <= out[1]:
        return np.array([0, 0, width, height], np.int64)
    return out


def proposal_strip(
    photo: np.ndarray,
    proposals: np.ndarray,
    crop: np.ndarray,
    picked: int | None,
    point: np.ndarray | None,
    gt_mask: np.ndarray | None,
    tile: int = TILE,
) -> np.ndarray:
    """A row of M tiles, ``(tile, M * tile, 3)`` uint8: the crop of ``photo`` with each proposal tinted.

    Args:
        photo: ``(H, W, 3)`` uint8. proposals: ``(M, H, W)`` bool. crop: ``[x1, y1, x2, y2]`` from
            :func:`crop_box`. picked: the primary selector's proposal (framed in yellow) or None.
        point: ``[x, y]`` (red dot) or None. gt_mask: ``(H, W)`` bool (white outline) or None.
    """
    x1, y1, x2, y2 = (int(v) for v in crop)
    ch, cw = y2 - y1, x2 - x1
    s = tile / max(ch, cw)
    th, tw = max(1, round(ch * s)), max(1, round(cw * s))
    ys = sample_index(th, ch) + y1
    xs = sample_index(tw, cw) + x1
    base = photo[ys][:, xs].astype(np.float32) * 0.85
    gt_edge = None
    if gt_mask is not None:
        gt_edge = mask_outline(gt_mask[ys][:, xs][None], width=1)
    m = proposals.shape[0]
    strip = np.full((tile, m * tile, 3), 24, np.uint8)
    oy, ox = (tile - th) // 2, (tile - tw) // 2
    for j in range(m):
        small = proposals[j][ys][:, xs]
        t = base.copy()
        t[small] = 0.45 * t[small] + 0.55 * TINT
        t[mask_outline(small[None], width=1)] = TINT
        if gt_edge is not None:
            t[gt_edge] = 255.0
        if point is not None:
            py = int(np.clip(round((float(point[1]) + 0.5 - y1) * s - 0.5), 0, th - 1))
            px = int(np.clip(round((float(point[0]) + 0.5 - x1) * s - 0.5), 0, tw - 1))
            t[max(0, py - 2) : py + 3, max(0, px - 2) : px + 3] = (255, 0, 0)
        x0 = j * tile + ox
        strip[oy : oy + th, x0 : x0 + tw] = np.clip(t, 0, 255).astype(np.uint8)
        if picked == j:
            strip[:3, j * tile : (j + 1) * tile] = PICK_COLOR
            strip[-3:, j * tile : (j + 1) * tile] = PICK_COLOR
            strip[:, j * tile : j * tile + 3] = PICK_COLOR
            strip[:, (j + 1) * tile - 3 : (j + 1) * tile] = PICK_COLOR
    return strip


def save_jpeg(path: Path, rgb: np.ndarray) -> int:
    """Write ``rgb`` as a JPEG atomically; returns its size in bytes."""
    data = encode_jpeg(rgb)
    atomic_write_bytes(path, data)
    return len(data)
