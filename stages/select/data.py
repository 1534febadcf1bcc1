"""Selector data: store images resized / flipped / normalised / padded, their objects' proposal boxes and points.

Only boxes are read from the proposal store (``store.boxes()``); masks are never decoded. Coordinates:

- boxes ``(n, M, 4)`` xyxy in edge coordinates of the resized image (original boxes x ``(sx, sy)``);
- points ``(n, 2)`` ``[x, y]`` in the SAME edge coordinates: ``(xy + 0.5) * (sx, sy)`` (the store holds
  pixel-index points, pixel centre = integer);
- a horizontal flip maps ``x -> W - x`` (boxes swap x1/x2), W = the resized width.

Randomness is a pure function of ``(seed, epoch, image)``: the epoch's order comes from a ``torch.Generator``
seeded with ``seed + epoch`` and each image's flip from ``numpy.random.default_rng([seed, epoch, image])``,
so any epoch (or any batch of it, for a resumed run) is reproduced exactly, with or without worker processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from stages.common.errors import InputError
from stages.common.io import read_image_rgb

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32


@dataclass
class StoreArrays:
    """The per-image and per-object arrays the selector needs, copied out of a store (picklable).

    ``labels`` are contiguous class indices (the position of the category in the store's categories);
    ``usable`` marks objects whose proposals were made (failed points are left out of training).
    """

    file_names: list[str]
    heights: np.ndarray  # (I,)
    widths: np.ndarray  # (I,)
    object_ptr: np.ndarray  # (I + 1,)
    boxes: np.ndarray  # (P, M, 4) float32, original-image edge coordinates
    xy: np.ndarray  # (P, 2) float32 pixel-index points
    labels: np.ndarray  # (P,) int64
    usable: np.ndarray  # (P,) bool

    def image_objects(self, image: int) -> np.ndarray:
        """Indices of the usable objects of ``image``."""
        lo, hi = int(self.object_ptr[image]), int(self.object_ptr[image + 1])
        idx = np.arange(lo, hi)
        return idx[self.usable[lo:hi]]

    def trainable_images(self) -> np.ndarray:
        """Images with at least one usable object (the only ones training and prediction visit)."""
        n_img = len(self.object_ptr) - 1
        image_of = np.repeat(np.arange(n_img), np.diff(self.object_ptr))
        counts = np.bincount(image_of[self.usable], minlength=n_img)
        return np.nonzero(counts > 0)[0]


def category_labels(categories: list[dict[str, Any]]) -> dict[int, int]:
    """Map category id -> contiguous class index (the order of the store's ``categories`` list)."""
    return {int(c["id"]): i for i, c in enumerate(categories)}


def load_store_arrays(store: Any) -> StoreArrays:
    """Read the images table, objects, boxes and point status of a (complete) proposal store."""
    from stages.propose.store import STATUS_DONE

    cat_to_label = category_labels(store.attrs["categories"])
    obj = store.objects
    unknown = sorted(set(np.unique(obj.category_id).tolist()) - set(cat_to_label))
    if unknown:
        raise InputError(
            f"store {store.path}: objects with category ids {unknown} not in its categories"
        )
    labels = np.array([cat_to_label[int(c)] for c in obj.category_id], dtype=np.int64)
    return StoreArrays(
        file_names=list(store.images.file_name),
        heights=np.asarray(store.images.height, dtype=np.int64),
        widths=np.asarray(store.images.width, dtype=np.int64),
        object_ptr=np.asarray(obj.object_ptr, dtype=np.int64),
        boxes=np.asarray(store.boxes(), dtype=np.float32),
        xy=np.asarray(obj.xy, dtype=np.float32),
        labels=labels,
        usable=store.point_status() == STATUS_DONE,
    )


def resized_shape(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int]:
    """``(h, w)`` after scaling so the short side is ``short_side`` and the long side <= ``max_size``."""
    scale = min(short_side / min(height, width), max_size / max(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


class SelectDataset(Dataset):
    """Items are keyed by ``(epoch, image)``; the epoch only seeds the flip.

    Each item: ``image (3, h, w)`` float32 normalised; ``boxes (n, M, 4)``, ``points (n, 2)``, ``labels (n,)``,
    ``objects (n,)`` (store object indices); ``image_index``; ``scale (sx, sy)``; ``size (h, w)``; ``flipped``.
    """

    def __init__(
        self,
        arrays: StoreArrays,
        images_dir: str | Path,
        short_side: int,
        max_size: int,
        flip_prob: float = 0.0,
        seed: int = 0,
    ):
        self.arrays = arrays
        self.images_dir = Path(images_dir)
        self.short_side = short_side
        self.max_size = max_size
        self.flip_prob = flip_prob
        self.seed = seed

    def __len__(self) -> int:
        return len(self.arrays.file_names)

    def flipped(self, epoch: int, image: int) -> bool:
        """Whether ``image`` is flipped in ``epoch`` (deterministic)."""
        if self.flip_prob <= 0.0:
            return False
        return bool(np.random.default_rng([self.seed, epoch, image]).random() < self.flip_prob)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, image = int(key[0]), int(key[1])
        a = self.arrays
        path = self.images_dir / a.file_names[image]
        rgb = read_image_rgb(path)
        h0, w0 = int(a.heights[image]), int(a.widths[image])
        if rgb.shape[:2] != (h0, w0):
            raise InputError(
                f"image {path} is {rgb.shape[1]}x{rgb.shape[0]} but the proposal store records "
                f"{w0}x{h0}: the --images folder does not match the store"
            )
        h, w = resized_shape(h0, w0, self.short_side, self.max_size)
        img = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)
        if (h, w) != (h0, w0):
            img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
        std = torch.tensor(PIXEL_STD).view(3, 1, 1)
        img = (img - mean) / std
        sx, sy = w / w0, h / h0
        objs = a.image_objects(image)
        scale = np.array([sx, sy, sx, sy], dtype=np.float32)
        boxes = a.boxes[objs] * scale
        points = (a.xy[objs] + 0.5) * scale[:2]
        flip = self.flipped(epoch, image)
        if flip:
            img = img.flip(-1)
            boxes = np.stack(
                [w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0], boxes[..., 3]], -1
            )
            points = np.stack([w - points[:, 0], points[:, 1]], -1)
        return {
            "image": img,
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)),
            "labels": torch.from_numpy(a.labels[objs]),
            "objects": torch.from_numpy(objs.astype(np.int64)),
            "image_index": image,
            "scale": (sx, sy),
            "size": (h, w),
            "flipped": flip,
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad images to a common size rounded up to a multiple of 32 (zeros bottom/right) and batch them."""
    hmax = max(it["image"].shape[1] for it in items)
    wmax = max(it["image"].shape[2] for it in items)
    hp = int(math.ceil(hmax / SIZE_DIVISOR) * SIZE_DIVISOR)
    wp = int(math.ceil(wmax / SIZE_DIVISOR) * SIZE_DIVISOR)
    images = items[0]["image"].new_zeros((len(items), 3, hp, wp))
    for i, it in enumerate(items):
        images[i, :, : it["image"].shape[1], : it["image"].shape[2]] = it["image"]
    batch: dict[str, Any] = {"images": images}
    for key in ("boxes", "points", "labels", "objects", "image_index", "scale", "size", "flipped"):
        batch[key] = [it[key] for it in items]
    return batch


def batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a collated batch to ``device``."""
    out = dict(batch)
    out["images"] = batch["images"].to(device, non_blocking=True)
    for key in ("boxes", "points", "labels", "objects"):
        out[key] = [t.to(device, non_blocking=True) for t in batch[key]]
    return out


class EpochBatchSampler:
    """Deterministic, shardable batches of ``(epoch, image)`` keys for one epoch.

    The epoch's order is ``torch.randperm`` with a generator seeded by ``seed + epoch`` (or the given order
    when ``shuffle`` is off). Like ``DistributedSampler`` the order is padded (wrapping round) to a multiple of
    ``world_size`` and rank r takes positions ``r, r + world, ...``. ``start_batch`` skips the first batches
    (a run resumed in the middle of an epoch).
    """

    def __init__(
        self,
        images: np.ndarray,
        batch_size: int,
        epoch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start_batch: int = 0,
    ):
        self.images = np.asarray(images, dtype=np.int64)
        self.batch_size = batch_size
        self.epoch = epoch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.start_batch = start_batch

    def shard(self) -> np.ndarray:
        """The images of this rank, in this epoch's order."""
        n = len(self.images)
        if n == 0:
            return self.images
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = self.images[torch.randperm(n, generator=g).numpy()]
        else:
            order = self.images
        total = int(math.ceil(n / self.world_size)) * self.world_size
        order = np.resize(order, total)  # wraps round like DistributedSampler's padding
        return order[self.rank :: self.world_size]

    def __iter__(self):
        shard = self.shard()
        for b in range(self.start_batch, len(self)):
            chunk = shard[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in chunk]

    def __len__(self) -> int:
        return batches_per_epoch(len(self.images), self.batch_size, self.world_size)


def batches_per_epoch(num_images: int, batch_size: int, world_size: int = 1) -> int:
    """Iterations per epoch of one rank (the last batch may be smaller)."""
    per_rank = int(math.ceil(num_images / world_size))
    return int(math.ceil(per_rank / batch_size))


def rois_from_boxes(boxes: list[Tensor]) -> Tensor:
    """Per-image ``(n_b, K, 4)`` or ``(k_b, 4)`` boxes -> ``(sum, 5)`` RoIs ``[batch_index, x1, y1, x2, y2]``."""
    flat = [b.reshape(-1, 4) for b in boxes]
    idx = torch.cat(
        [
            torch.full((f.shape[0], 1), float(i), dtype=f.dtype, device=f.device)
            for i, f in enumerate(flat)
        ]
    )
    return torch.cat([idx, torch.cat(flat)], dim=1)
