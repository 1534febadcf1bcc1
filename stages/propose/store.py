"""The proposal store: a zarr v3 group holding M mask proposals for every annotated point.

Schema (``schema_version`` 1; rows = points, padded per work unit, see below)::

    STORE.zarr/                      attrs: sapnet_store {schema_version, sapnet_version, created_at},
                                            fingerprint {source_sha256, backend {...}, num_proposals,
                                            chunk_points}, backend, model, checkpoint_sha256,
                                            num_proposals (M), proposal_order [M strings], source_json,
                                            source_sha256, num_images, num_points, num_units, chunk_points (C)
      images/file_name   str    [I]     images/image_id  int64 [I]   images/height, width int32 [I]
      images/num_points  int32  [I]     images/row_start int64 [I]   images/unit int32 [I]
      images/status      uint8  [I]     0 pending, 1 done, 2 failed, 3 no points (written once complete)
      units/image_ptr    int64  [U+1]   images of unit u: image_ptr[u]:image_ptr[u+1]
      units/done         uint8  [U]     chunk 1: one file per unit, written last by the unit's writer
      points/ann_id      int64  [R]     -1 on padding rows
      points/image_index int32  [R]     -1 on padding rows
      points/category_id int32  [R]     points/xy float32 [R, 2]  ([x, y], pixel-index coordinates)
      proposals/boxes    float32 [R, M, 4]  tight xyxy box of each mask (edge coordinates)
      proposals/scores   float32 [R, M]     backend score (SAM: predicted IoU; classical: stability)
      proposals/area     int64   [R, M]     mask area in pixels
      proposals/rle      str     [R, M]     COCO compressed RLE counts; size = the image's [height, width]
      proposals/status   uint8   [R]        0 pending, 1 ok, 2 failed
      proposals/error    str     [R]        why a point failed ("" when ok)

Work units and concurrency: images are grouped, in order, into units of at most C points (C = chunk_points,
raised to the largest per-image count). Unit u owns rows ``[u*C, (u+1)*C)``, which is exactly one chunk of
every per-row array, so two writers never touch one chunk: a worker writes the whole chunk of each array, then
``units/done[u]`` (its own chunk). A unit without ``done`` is redone from scratch, which makes a killed run
resumable with a result identical to an uninterrupted one. Shard ``i/N`` takes the units ``u % N == i``.

Readers get the *compacted* view (padding rows removed, object order = image order then annotation order)
through :class:`ProposalStore`: ``boxes()`` reads every box of every point without decoding a mask.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from stages import __version__
from stages.common.annotations import PointSet
from stages.common.errors import StoreError, first_items
from stages.common.io import clean_stale_temps, ensure_dir, temp_name
from stages.common.masks import decode_rles

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUS_PENDING, STATUS_DONE, STATUS_FAILED, STATUS_EMPTY = 0, 1, 2, 3


# A zarr chunk temporary older than this belongs to a killed writer (see clean_partial_chunks).
PARTIAL_CHUNK_AGE_S = 3600.0


@dataclass
class ImageTable:
    """Per-image columns of a store (all images of the source JSON, in file order)."""

    file_name: list[str]
    image_id: np.ndarray
    height: np.ndarray
    width: np.ndarray
    num_points: np.ndarray

    def __len__(self) -> int:
        return len(self.file_name)


@dataclass
class ObjectTable:
    """Per-object columns (compacted: one entry per annotated point, in object order).

    ``rows`` maps each object to its store row; ``object_ptr (I + 1,)`` gives the objects of image i as
    ``object_ptr[i]:object_ptr[i + 1]``.
    """

    rows: np.ndarray
    ann_id: np.ndarray
    image_index: np.ndarray
    category_id: np.ndarray
    xy: np.ndarray
    object_ptr: np.ndarray

    def __len__(self) -> int:
        return int(self.ann_id.shape[0])


@dataclass
class UnitResult:
    """What a worker writes for one unit: arrays over the unit's ``n`` valid rows."""

    boxes: np.ndarray  # (n, M, 4) float32
    scores: np.ndarray  # (n, M) float32
    area: np.ndarray  # (n, M) int64
    rle: np.ndarray  # (n, M) object (str)
    status: np.ndarray  # (n,) uint8
    error: np.ndarray  # (n,) object (str)


def plan_units(points_per_image: np.ndarray, chunk_points: int) -> tuple[np.ndarray, int]:
    """Group images (in order) into units of at most C points.

    Returns ``(image_ptr (U + 1,), C)`` with C raised to the largest per-image count. Images without points
    join the current unit. There is always at least one unit.
    """
    counts = np.asarray(points_per_image, dtype=np.int64)
    c = int(max(chunk_points, counts.max(initial=0), 1))
    starts = [0]
    filled = 0
    for i, n in enumerate(counts):
        if filled + n > c and filled > 0:
            starts.append(i)
            filled = 0
        filled += int(n)
    starts.append(len(counts))
    return np.asarray(starts, dtype=np.int64), c


class ProposalStore:
    """Read (and, for `sapnet propose`, write) a proposal store."""

    def __init__(self, path: str | Path, group: zarr.Group):
        self.path = Path(path)
        self.group = group

    # ----------------------------------------------------------------- open / create
    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> ProposalStore:
        """Open an existing store; StoreError if it is missing or not a sapnet store."""
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise StoreError(f"no proposal store at {path} (run `sapnet propose` first)")
        try:
            group = zarr.open_group(str(path), mode=mode)
        except Exception as err:  # zarr raises several types for broken metadata
            raise StoreError(f"cannot open proposal store {path}: {err}") from None
        meta = group.attrs.get("sapnet_store")
        if not isinstance(meta, dict):
            raise StoreError(f"{path} is a zarr store but not a sapnet proposal store")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {meta.get('schema_version')}, this sapnet reads "
                f"version {SCHEMA_VERSION}; re-run `sapnet propose --overwrite`"
            )
        return cls(path, group)

    @classmethod
    def create(
        cls,
        path: str | Path,
        points: PointSet,
        backend_fingerprint: dict[str, Any],
        num_proposals: int,
        proposal_order: list[str],
        chunk_points: int = 512,
        extra_attrs: dict[str, Any] | None = None,
    ) -> ProposalStore:
        """Create a store for ``points`` atomically (built in a temporary folder, then renamed).

        If another process created ``path`` first, that store is opened instead (the caller then checks its
        fingerprint).
        """
        path = Path(path)
        ensure_dir(path.parent, "folder of the proposal store")
        clean_stale_temps(path.parent, path.name)
        tmp = path.parent / temp_name(path.name)
        try:
            cls._build(
                tmp, points, backend_fingerprint, num_proposals, proposal_order, chunk_points
            )
            try:
                os.rename(tmp, path)
            except OSError:
                if not (path / "zarr.json").is_file():
                    raise
                log.info("store %s was created by another process; using it", path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(path, mode="r+")

    @staticmethod
    def _build(
        tmp: Path,
        points: PointSet,
        backend_fingerprint: dict[str, Any],
        m: int,
        proposal_order: list[str],
        chunk_points: int,
    ) -> None:
        n_img = len(points.images)
        counts = np.bincount(points.image_index, minlength=n_img).astype(np.int64)
        image_ptr, c = plan_units(counts, chunk_points)
        n_units = len(image_ptr) - 1
        rows_total = n_units * c
        unit_of_image = np.repeat(np.arange(n_units), np.diff(image_ptr)).astype(np.int32)
        # Row of each image's first point: unit start + points of earlier images of the same unit.
        obj_ptr = np.concatenate([[0], np.cumsum(counts)])
        unit_first_obj = obj_ptr[image_ptr[:-1]]
        row_start = unit_of_image.astype(np.int64) * c + (
            obj_ptr[:-1] - unit_first_obj[unit_of_image]
        )
        obj_rows = np.repeat(row_start, counts) + (
            np.arange(points.num_points) - np.repeat(obj_ptr[:-1], counts)
        )

        fingerprint = {
            "source_sha256": points.sha256,
            "backend": backend_fingerprint,
            "num_proposals": int(m),
            "chunk_points": int(chunk_points),
        }
        g = zarr.open_group(str(tmp), mode="w")
        g.attrs.update(
            {
                "sapnet_store": {
                    "schema_version": SCHEMA_VERSION,
                    "sapnet_version": __version__,
                    "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                    "created_unix": _dt.datetime.now(_dt.UTC).timestamp(),
                },
                "fingerprint": fingerprint,
                "backend": backend_fingerprint.get("name"),
                "model": backend_fingerprint.get("model"),
                "checkpoint_sha256": backend_fingerprint.get("checkpoint_sha256"),
                "num_proposals": int(m),
                "proposal_order": list(proposal_order),
                "source_json": str(points.source),
                "source_sha256": points.sha256,
                "num_images": n_img,
                "num_points": points.num_points,
                "num_units": n_units,
                "chunk_points": c,
                "categories": points.categories,
                "coordinates": {
                    "points": "[x, y] pixel-index coordinates (pixel centre = integer)",
                    "boxes": "xyxy, edge coordinates (pixel column c spans [c, c+1))",
                },
            }
        )
        img_chunk = max(n_img, 1)
        images = g.create_group("images")
        images.create_array("file_name", shape=(n_img,), chunks=(img_chunk,), dtype=str)[:] = (
            np.array([im.file_name for im in points.images], dtype=object)
        )
        for name, dtype, values in (
            ("image_id", "int64", [im.image_id for im in points.images]),
            ("height", "int32", [im.height for im in points.images]),
            ("width", "int32", [im.width for im in points.images]),
            ("num_points", "int32", counts),
            ("row_start", "int64", row_start),
            ("unit", "int32", unit_of_image),
        ):
            arr = images.create_array(name, shape=(n_img,), chunks=(img_chunk,), dtype=dtype)
            if n_img:
                arr[:] = np.asarray(values, dtype=dtype)
        images.create_array(
            "status", shape=(n_img,), chunks=(img_chunk,), dtype="uint8", fill_value=0
        )
        units = g.create_group("units")
        units.create_array("image_ptr", shape=(n_units + 1,), chunks=(n_units + 1,), dtype="int64")[
            :
        ] = image_ptr
        units.create_array("done", shape=(n_units,), chunks=(1,), dtype="uint8", fill_value=0)

        pts = g.create_group("points")
        full = {
            "ann_id": np.full(rows_total, -1, np.int64),
            "image_index": np.full(rows_total, -1, np.int32),
            "category_id": np.full(rows_total, -1, np.int32),
            "xy": np.zeros((rows_total, 2), np.float32),
        }
        full["ann_id"][obj_rows] = points.ann_id
        full["image_index"][obj_rows] = points.image_index
        full["category_id"][obj_rows] = points.category_id
        full["xy"][obj_rows] = points.xy
        for name, values in full.items():
            chunks = (c,) + values.shape[1:]
            fill = -1 if name != "xy" else 0.0
            pts.create_array(
                name, shape=values.shape, chunks=chunks, dtype=values.dtype, fill_value=fill
            )[:] = values

        props = g.create_group("proposals")
        for name, shape, dtype, fill in (
            ("boxes", (rows_total, m, 4), "float32", 0.0),
            ("scores", (rows_total, m), "float32", 0.0),
            ("area", (rows_total, m), "int64", 0),
            ("status", (rows_total,), "uint8", 0),
        ):
            props.create_array(
                name, shape=shape, chunks=(c,) + shape[1:], dtype=dtype, fill_value=fill
            )
        props.create_array("rle", shape=(rows_total, m), chunks=(c, m), dtype=str, fill_value="")
        props.create_array("error", shape=(rows_total,), chunks=(c,), dtype=str, fill_value="")

    # ----------------------------------------------------------------- metadata
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.group.attrs["fingerprint"])

    @property
    def num_proposals(self) -> int:
        return int(self.group.attrs["num_proposals"])

    @property
    def num_units(self) -> int:
        return int(self.group.attrs["num_units"])

    @property
    def chunk_points(self) -> int:
        return int(self.group.attrs["chunk_points"])

    @property
    def created_unix(self) -> float:
        return float(self.group.attrs["sapnet_store"].get("created_unix", 0.0))

    @cached_property
    def images(self) -> ImageTable:
        g = self.group["images"]
        return ImageTable(
            file_name=[str(s) for s in g["file_name"][:]],
            image_id=g["image_id"][:],
            height=g["height"][:],
            width=g["width"][:],
            num_points=g["num_points"][:],
        )

    @cached_property
    def unit_image_ptr(self) -> np.ndarray:
        return self.group["units/image_ptr"][:]

    @cached_property
    def objects(self) -> ObjectTable:
        g = self.group["points"]
        ann_id = g["ann_id"][:]
        rows = np.nonzero(ann_id >= 0)[0]
        image_index = g["image_index"][:][rows]
        counts = np.bincount(image_index, minlength=len(self.images))
        return ObjectTable(
            rows=rows,
            ann_id=ann_id[rows],
            image_index=image_index,
            category_id=g["category_id"][:][rows],
            xy=g["xy"][:][rows],
            object_ptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        )

    # ----------------------------------------------------------------- progress
    def units_done(self) -> np.ndarray:
        """``(U,)`` bool: which work units are complete."""
        return self.group["units/done"][:].astype(bool)

    def is_complete(self) -> bool:
        return bool(self.units_done().all())

    def pending_images(self) -> list[str]:
        """File names of images with points whose unit is not complete yet."""
        done = self.units_done()
        unit = self.group["images/unit"][:]
        pending = (~done[unit]) & (self.images.num_points > 0)
        return [self.images.file_name[i] for i in np.nonzero(pending)[0]]

    def require_complete(self) -> None:
        """StoreError listing the images not yet proposed, unless every unit is done."""
        missing = self.pending_images()
        if missing:
            shown = first_items(missing)
            raise StoreError(
                f"proposal store {self.path} is incomplete: {len(missing)} image(s) not proposed yet: "
                f"{shown}. Finish it by re-running the same `sapnet propose` command."
            )

    def image_status(self) -> np.ndarray:
        """``(I,)`` uint8 status per image (pending / done / failed / no points), derived from the units."""
        done = self.units_done()
        unit = self.group["images/unit"][:]
        status = np.where(done[unit], STATUS_DONE, STATUS_PENDING).astype(np.uint8)
        obj = self.objects
        failed_rows = self.group["proposals/status"][:][obj.rows] == STATUS_FAILED
        status[np.unique(obj.image_index[failed_rows])] = STATUS_FAILED
        status[self.images.num_points == 0] = STATUS_EMPTY
        return status

    def is_finalized(self) -> bool:
        """Whether the store is complete and ``images/status`` is already materialised (nothing to write)."""
        if not self.is_complete():
            return False
        return bool(np.array_equal(self.group["images/status"][:], self.image_status()))

    def reopen_for_writing(self) -> ProposalStore:
        """This store opened ``r+`` (a no-op when it already is); stale chunk temporaries are removed."""
        self.clean_partial_chunks()
        if not self.group.read_only:
            return self
        return ProposalStore.open(self.path, mode="r+")

    def clean_partial_chunks(self, min_age_s: float = PARTIAL_CHUNK_AGE_S) -> list[Path]:
        """Remove zarr's ``*.partial`` chunk temporaries left by a killed writer; returns them.

        zarr writes each chunk to ``KEY.<uuid>.partial`` and renames it; a chunk write takes well under a
        second, so a temporary untouched for ``min_age_s`` belongs to a dead writer, never to a live shard.
        """
        removed = []
        cutoff = time.time() - min_age_s
        for path in self.path.rglob("*.partial"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except OSError:
                continue
        if removed:
            log.info("removed %d stale chunk temporaries from %s", len(removed), self.path)
        return removed

    def finalize(self) -> bool:
        """Materialise ``images/status`` once every unit is done; returns completeness.

        Idempotent and write-free on a finalized store, so rerunning a finished command on a read-only copy
        reports "nothing to do" instead of failing.
        """
        if not self.is_complete():
            return False
        status = self.image_status()
        if not np.array_equal(self.group["images/status"][:], status):
            self.group["images/status"][:] = status
        return True

    # ----------------------------------------------------------------- readers (compacted)
    def _read_rows(self, name: str) -> np.ndarray:
        return self.group[f"proposals/{name}"][:][self.objects.rows]

    def boxes(self) -> np.ndarray:
        """``(P, M, 4)`` float32 xyxy boxes of every proposal (edge coordinates), without decoding masks."""
        return self._read_rows("boxes")

    def scores(self) -> np.ndarray:
        """``(P, M)`` float32 backend scores."""
        return self._read_rows("scores")

    def areas(self) -> np.ndarray:
        """``(P, M)`` int64 mask areas."""
        return self._read_rows("area")

    def point_status(self) -> np.ndarray:
        """``(P,)`` uint8: 0 pending, 1 ok, 2 failed."""
        return self._read_rows("status")

    def errors(self) -> list[tuple[int, str]]:
        """``[(ann_id, message)]`` of the points that failed (recorded under ``--on-error skip``)."""
        err = self._read_rows("error")
        return [(int(self.objects.ann_id[i]), str(err[i])) for i in np.nonzero(err != "")[0]]

    def rle(self, objects: np.ndarray | list[int] | None = None) -> np.ndarray:
        """``(k, M)`` object array of RLE counts strings of the given objects (all when None)."""
        rows = self.objects.rows if objects is None else self.objects.rows[np.asarray(objects)]
        arr = self.group["proposals/rle"]
        if len(rows) == 0:
            return np.zeros((0, self.num_proposals), dtype=object)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        return np.asarray(arr[lo:hi][rows - lo], dtype=object)

    def object_masks(self, obj: int) -> np.ndarray:
        """``(M, H, W)`` bool proposal masks of one object."""
        img = int(self.objects.image_index[obj])
        h, w = int(self.images.height[img]), int(self.images.width[img])
        return decode_rles([str(s) for s in self.rle([obj])[0]], h, w)

    def image_objects(self, image: int) -> slice:
        """The compacted object indices of image ``image`` as a slice."""
        ptr = self.objects.object_ptr
        return slice(int(ptr[image]), int(ptr[image + 1]))

    # ----------------------------------------------------------------- writer
    def unit_rows(self, unit: int) -> tuple[int, int]:
        """Row range ``[start, start + n)`` of the unit's valid rows."""
        c = self.chunk_points
        lo, hi = self.unit_image_ptr[unit], self.unit_image_ptr[unit + 1]
        n = int(self.images.num_points[lo:hi].sum())
        return unit * c, unit * c + n

    def write_unit(self, unit: int, result: UnitResult) -> None:
        """Write one unit's results (whole chunks) and then mark it done."""
        c, m = self.chunk_points, self.num_proposals
        start, stop = self.unit_rows(unit)
        n = stop - start
        if result.boxes.shape != (n, m, 4):
            raise ValueError(
                f"unit {unit}: expected boxes of shape {(n, m, 4)}, got {result.boxes.shape}"
            )

        def pad(values: np.ndarray, fill: Any, dtype: Any) -> np.ndarray:
            out = np.full((c,) + values.shape[1:], fill, dtype=dtype)
            out[:n] = values
            return out

        block = slice(unit * c, (unit + 1) * c)
        props = self.group["proposals"]
        props["boxes"][block] = pad(result.boxes, 0.0, np.float32)
        props["scores"][block] = pad(result.scores, 0.0, np.float32)
        props["area"][block] = pad(result.area, 0, np.int64)
        props["status"][block] = pad(result.status, 0, np.uint8)
        props["rle"][block] = pad(result.rle, "", object)
        props["error"][block] = pad(result.error, "", object)
        self.group["units/done"][unit : unit + 1] = np.ones(1, np.uint8)

    def count_images(self, units: list[int]) -> int:
        """How many images with at least one point the given units hold."""
        ptr, counts = self.unit_image_ptr, self.images.num_points
        return int(sum(np.count_nonzero(counts[ptr[u] : ptr[u + 1]]) for u in units))

    def units_for_shard(self, shard: int, num_shards: int) -> list[int]:
        """The work units of shard ``shard`` of ``num_shards`` (round-robin, disjoint, covering)."""
        return [u for u in range(self.num_units) if u % num_shards == shard]
