"""PNG overlays of pseudo labels (Pillow, NumPy, scipy.ndimage, scikit-image): masks per instance, boxes, points, class names,
optional GT outlines, and a grid that compares selectors on the same image.

Coordinates: masks ``(K, H, W)`` bool; boxes xyxy in edge coordinates; points ``[x, y]`` pixel-index
coordinates. An instance keeps its colour across selectors (colour = object order in the image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from skimage.color import hsv2rgb

from stages.common.io import atomic_write

TITLE_HEIGHT = 22
GT_COLOR = (255, 255, 255)


@dataclass
class InstanceLayer:
    """What one selector shows on one image: K instances.

    Attributes:
        masks: ``(K, H, W)`` bool. boxes: ``(K, 4)`` xyxy. points: ``(K, 2)`` ``[x, y]`` or None.
        labels: K class names.
    """

    masks: np.ndarray
    boxes: np.ndarray
    points: np.ndarray | None
    labels: list[str]


def instance_colors(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 distinct, saturated colours (golden-ratio hue steps, HSV with S=0.75, V=1)."""
    hsv = np.stack([(np.arange(n) * 0.618033988749895) % 1.0, np.full(n, 0.75), np.ones(n)], axis=1)
    return np.round(hsv2rgb(hsv.reshape(1, n, 3)).reshape(n, 3) * 255).astype(np.uint8)


_CROSS_PER_MASK = ndimage.generate_binary_structure(2, 1)[None]
"""4-neighbourhood within each mask of a ``(K, H, W)`` stack (never across masks)."""


def mask_outline(masks: np.ndarray, width: int = 2) -> np.ndarray:
    """``(H, W)`` bool: pixels of any mask within ``width`` pixels of that mask's border (4-neighbourhood)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.shape[0] == 0:
        return np.zeros(masks.shape[1:], dtype=bool)
    eroded = ndimage.binary_erosion(masks, _CROSS_PER_MASK, iterations=width, border_value=0)
    return (masks & ~eroded).any(axis=0)


def top_instance(masks: np.ndarray) -> np.ndarray:
    """``(H, W)`` int64 index of the last mask covering each pixel, -1 where none does."""
    masks = np.asarray(masks, dtype=bool)
    k = masks.shape[0]
    if k == 0:
        return np.full(masks.shape[1:], -1, dtype=np.int64)
    last = k - 1 - np.argmax(masks[::-1], axis=0)
    return np.where(masks.any(axis=0), last, -1)


def draw_overlay(
    image: np.ndarray,
    layer: InstanceLayer,
    gt_masks: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Blend coloured masks into ``image (H, W, 3)`` uint8 and draw boxes, points, names and GT outlines.

    Returns a new ``(H, W, 3)`` uint8 array of the image's size.
    """
    h, w = image.shape[:2]
    k = layer.masks.shape[0]
    colors = instance_colors(k)
    out = image.astype(np.float32)
    label = top_instance(layer.masks)
    covered = label >= 0
    out[covered] = (1 - alpha) * out[covered] + alpha * colors[label[covered]].astype(np.float32)
    out[mask_outline(layer.masks, width=1)] *= 0.5
    if gt_masks is not None and len(gt_masks):
        out[mask_outline(gt_masks, width=2)] = GT_COLOR
    pil = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    radius = max(3, min(h, w) // 150)
    for j in range(k):
        color = tuple(int(c) for c in colors[j])
        x1, y1, x2, y2 = (float(v) for v in layer.boxes[j])
        if x2 > x1 and y2 > y1:
            # the last pixel is x2 - 1; a box under one pixel wide (scaled thumbnails) stays one pixel
            draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=2)
            draw.text(
                (x1 + 3, y1 + 2),
                layer.labels[j],
                fill=color,
                font=font,
                stroke_width=1,
                stroke_fill=(0, 0, 0),
            )
        if layer.points is not None:
            px, py = float(layer.points[j, 0]) + 0.5, float(layer.points[j, 1]) + 0.5
            draw.ellipse(
                [px - radius, py - radius, px + radius, py + radius],
                fill=(255, 0, 0),
                outline=(255, 255, 255),
            )
    return np.asarray(pil)


def compose_grid(tiles: list[np.ndarray], titles: list[str], columns: int = 3) -> np.ndarray:
    """Tiles ``(H, W, 3)`` uint8 of one size in a grid, each under a title bar -> one uint8 image."""
    h, w = tiles[0].shape[:2]
    cols = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // cols)
    cell_h = h + TITLE_HEIGHT
    canvas = Image.new("RGB", (cols * w, rows * cell_h), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for n, (tile, title) in enumerate(zip(tiles, titles, strict=True)):
        r, c = divmod(n, cols)
        canvas.paste(Image.fromarray(tile), (c * w, r * cell_h + TITLE_HEIGHT))
        draw.text((c * w + 6, r * cell_h + 4), title, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def choose_images(num_objects: np.ndarray, count: int) -> np.ndarray:
    """Deterministic choice of ``count`` images with objects: the most crowded first, ties by index."""
    num_objects = np.asarray(num_objects)
    order = np.lexsort((np.arange(len(num_objects)), -num_objects))
    order = order[num_objects[order] > 0]
    return order[:count]


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W, 3)`` uint8 array as PNG, atomically (parent folders created)."""
    path = Path(path)
    atomic_write(path, lambda fh: Image.fromarray(array).save(fh, format="PNG", compress_level=1))
    return path


def write_image_overlays(
    out_dir: str | Path,
    stem: str,
    image: np.ndarray,
    layers: dict[str, InstanceLayer],
    gt_masks: np.ndarray | None = None,
) -> list[Path]:
    """``STEM.<selector>.png`` per selector and, with several selectors, ``STEM.grid.png`` comparing them."""
    out_dir = Path(out_dir)
    tiles = {name: draw_overlay(image, layer, gt_masks) for name, layer in layers.items()}
    paths = [save_png(tile, out_dir / f"{stem}.{name}.png") for name, tile in tiles.items()]
    if len(tiles) > 1:
        grid = compose_grid(list(tiles.values()), list(tiles.keys()))
        paths.append(save_png(grid, out_dir / f"{stem}.grid.png"))
    return paths
