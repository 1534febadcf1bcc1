"""`run_propose`: fill a proposal store with M mask proposals per annotated point.

Resumable (finished work units are skipped; a killed unit is redone), shardable (``--shard I/N``, or RANK /
WORLD_SIZE under torchrun, or one worker per listed device, ``--devices``), and safe for many writers on one store
(see :mod:`stages.propose.store`). Devices, torchrun and the ``--devices`` workers are handled by
:mod:`stages.common.devices`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.annotations import (
    ON_ERROR,
    OnError,
    PointSet,
    load_points,
    missing_image_files,
)
from stages.common.config import (
    config_to_dict,
    option,
    save_resolved_config,
    sidecar_config_path,
)
from stages.common.devices import (
    check_parallel_options,
    parse_devices,
    resolve_device,
    resolve_devices,
    shard_of,
    spawn_workers,
)
from stages.common.errors import InputError, StoreError, first_items
from stages.common.io import read_image_rgb, sha256_file, temp_name
from stages.common.masks import encode_masks, masks_to_boxes
from stages.common.progress import progress as progress_bar
from stages.propose.backends import ProposalBackend, get_backend
from stages.propose.store import STATUS_DONE, STATUS_FAILED, ProposalStore, UnitResult

log = logging.getLogger(__name__)


@dataclass
class ProposeConfig:
    """Settings of `sapnet propose` (each field's help text is its ``--help`` line; M = 6 as SAPNet)."""

    annotations: Path = option(
        help="Points JSON (COCO instances with 'point': [x, y] per object).", metavar="PATH"
    )
    images: Path = option(help="Folder holding the images' file_name paths.", metavar="DIR")
    store: Path = option(help="Output zarr store (OUT.zarr); resumable.", metavar="PATH")
    backend: str = option(
        "sam",
        "sam (segment-anything), mobile-sam (needs the 'mobile' extra), sam2 (SAM 2.1, needs the "
        "'sam2' extra), classical (weight-free, for offline use and CI), or your own as "
        "package.module:factory.",
    )
    model: str | None = option(
        None,
        "sam: vit_h (default) | vit_l | vit_b; mobile-sam: vit_t; sam2: hiera_t | hiera_s | "
        "hiera_b+ | hiera_l (default hiera_l on CUDA, hiera_t on CPU).",
    )
    checkpoint: Path | None = option(
        None,
        "SAM checkpoint file. Default: $SAPNET_SAM_CHECKPOINT ($SAPNET_SAM2_CHECKPOINT for sam2), "
        "else the official file, downloaded once into the cache (checksum-verified).",
        metavar="PATH",
    )
    proposals_per_point: int = option(6, "M proposals per point (SAPNet uses 6: 3 point + 3 box).")
    device: str = option("auto", "auto (cuda when available, else cpu) | cpu | cuda | cuda:N.")
    shard: str | None = option(
        None,
        "I/N: process the I-th of N disjoint parts of the images, so N processes (GPUs or "
        "machines on a shared filesystem) fill one store. Under torchrun it comes from RANK/WORLD_SIZE.",
        metavar="I/N",
    )
    batch_points: int = option(
        64, "Points decoded together per SAM call (larger pays off on GPUs)."
    )
    precision: str | None = option(
        None,
        "fp32 | bf16 | fp16 (autocast, CUDA only) for the SAM backends. Default: fp32; sam2 on "
        "CUDA: bf16 (as SAM 2's official examples).",
    )
    overwrite: bool = option(
        False, "Replace a store made from other inputs or another backend.", flag="--overwrite"
    )
    on_error: str = option(
        "fail",
        "fail: stop at a bad annotation or image (finished work is kept); skip: record the "
        "problem in the store and the log, and go on.",
        choices=ON_ERROR,
    )
    chunk_points: int = option(
        512, "Points per work unit / zarr chunk (the granularity of resuming and sharding)."
    )
    devices: list[str] | None = option(
        None,
        "Comma-separated devices, e.g. 0,1,2,3 (= cuda:0..3) or cpu,cpu: one worker per device on "
        "this machine, each taking one shard (not with --shard or under torchrun).",
        from_cli=parse_devices,
        metavar="LIST",
    )
    progress: bool = option(True, "Show a progress bar.")


@dataclass
class ProposeSummary:
    """What one `run_propose` call did (for its shard)."""

    store: Path
    shard: tuple[int, int]
    images_done: int = 0
    images_skipped: int = 0
    images_failed: int = 0
    points: int = 0
    seconds: float = 0.0
    complete: bool = False
    failures: list[str] = field(default_factory=list)

    def add(self, outcome: ImageOutcome) -> None:
        """Count one image's outcome."""
        if outcome.error is None:
            self.images_done += 1
            self.points += outcome.points
        else:
            self.images_failed += 1
            self.failures.append(outcome.error)

    def line(self) -> str:
        i, n = self.shard
        state = "store complete" if self.complete else "store incomplete (other shards pending)"
        return (
            f"shard {i}/{n}: {self.images_done} image(s) done, {self.images_skipped} already done, "
            f"{self.images_failed} failed; {self.points} point(s) in {self.seconds:.1f} s; {state}"
        )


OVERWRITE_WAIT_S = 600.0


def _open_or_create(
    cfg: ProposeConfig, points: PointSet, backend: ProposalBackend, shard: tuple[int, int]
) -> ProposalStore:
    """Open the store if it matches these inputs; create it if absent; refuse a foreign one.

    With ``--overwrite`` only shard 0 replaces a foreign store; the other shards of the same run wait for
    the replacement to appear, so concurrent workers never delete each other's fresh store.
    """
    backend_fingerprint = backend.fingerprint()
    fingerprint = {
        "source_sha256": points.sha256,
        "backend": backend_fingerprint,
        "num_proposals": int(backend.num_proposals),
        "chunk_points": int(cfg.chunk_points),
    }
    path = Path(cfg.store)
    deadline = time.time() + OVERWRITE_WAIT_S
    while (path / "zarr.json").is_file():
        store = ProposalStore.open(path, mode="r")  # read-only until there is work to write
        if store.fingerprint == fingerprint:
            return store
        if not cfg.overwrite:
            diffs = [k for k in fingerprint if store.fingerprint.get(k) != fingerprint[k]]
            raise StoreError(
                f"{path} was made from other inputs or another backend (differs in: "
                f"{', '.join(diffs)}); use --overwrite to replace it or choose another --store"
            )
        if shard[0] == 0:
            log.warning("--overwrite: removing the existing store %s", path)
            _remove_store(path)
            break
        if time.time() > deadline:
            raise StoreError(f"gave up waiting for shard 0 to replace the store {path}")
        log.info("waiting for shard 0 to replace the store %s (--overwrite)", path)
        time.sleep(2.0)
    if path.exists() and not (path / "zarr.json").is_file():
        if path.is_file() or any(path.iterdir()):
            raise StoreError(f"{path} exists and is not a proposal store; choose another --store")
        path.rmdir()
    return ProposalStore.create(
        path,
        points,
        backend_fingerprint,
        backend.num_proposals,
        backend.proposal_order,
        chunk_points=cfg.chunk_points,
        extra_attrs={"propose_config": config_to_dict(cfg)},
    )


def _remove_store(path: Path) -> None:
    import shutil

    trash = path.with_name(temp_name(path.name, "trash"))
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


@dataclass
class ImageOutcome:
    """What happened to one image of a unit: its points were proposed, or it failed (``error``)."""

    points: int
    error: str | None = None


def _empty_unit_result(store: ProposalStore, unit: int) -> UnitResult:
    m = store.num_proposals
    start, stop = store.unit_rows(unit)
    n = stop - start
    return UnitResult(
        boxes=np.zeros((n, m, 4), np.float32),
        scores=np.zeros((n, m), np.float32),
        area=np.zeros((n, m), np.int64),
        rle=np.full((n, m), "", dtype=object),
        status=np.zeros(n, np.uint8),
        error=np.full(n, "", dtype=object),
    )


def _propose_unit(
    store: ProposalStore,
    unit: int,
    points: PointSet,
    backend: ProposalBackend,
    images_dir: Path,
    on_error: OnError,
    res: UnitResult,
) -> Iterator[ImageOutcome]:
    """Run the backend on every image of one unit, filling ``res``; yields one outcome per image.

    The caller keeps the progress bar and the summary; an unreadable image raises under ``on_error="fail"``
    and is recorded in ``res`` (and yielded with its error) under ``"skip"``.
    """
    m = store.num_proposals
    ptr = points.image_ptr()
    lo, hi = int(store.unit_image_ptr[unit]), int(store.unit_image_ptr[unit + 1])
    offset = 0
    for i in range(lo, hi):
        record = points.images[i]
        k = int(ptr[i + 1] - ptr[i])
        if k == 0:
            continue
        sl = slice(offset, offset + k)
        offset += k
        try:
            image = read_image_rgb(images_dir / record.file_name)
            if image.shape[:2] != (record.height, record.width):
                raise InputError(
                    f"image file {images_dir / record.file_name} is {image.shape[1]}x{image.shape[0]} "
                    f"but the annotations say {record.width}x{record.height} (image id {record.image_id}; "
                    "sizes are those of the upright image, after its EXIF orientation)"
                )
        except InputError as err:
            if on_error == "fail":
                raise
            log.warning("skipped image: %s", err)
            res.status[sl] = STATUS_FAILED
            res.error[sl] = str(err)
            yield ImageOutcome(0, str(err))
            continue
        for batch in backend.propose(image, points.xy[ptr[i] : ptr[i + 1]]):
            b = batch.masks.shape[0]
            rows = slice(sl.start + batch.start, sl.start + batch.start + b)
            flat = batch.masks.reshape(b * m, *batch.masks.shape[2:])
            res.boxes[rows] = masks_to_boxes(flat).reshape(b, m, 4)
            res.area[rows] = flat.reshape(b * m, -1).sum(axis=1).reshape(b, m)
            res.rle[rows] = np.array(encode_masks(flat), dtype=object).reshape(b, m)
            res.scores[rows] = batch.scores
        res.status[sl] = STATUS_DONE
        yield ImageOutcome(k)


def _make_backend(cfg: ProposeConfig) -> ProposalBackend:
    return get_backend(
        cfg.backend,
        num_proposals=cfg.proposals_per_point,
        device=str(resolve_device(cfg.device)),
        model=cfg.model,
        checkpoint=str(cfg.checkpoint) if cfg.checkpoint else None,
        batch_points=cfg.batch_points,
        precision=cfg.precision,
    )


def _already_done(cfg: ProposeConfig, shard: tuple[int, int], t0: float) -> ProposeSummary | None:
    """The summary of a resume with nothing to do, found WITHOUT parsing the annotations; else None.

    The store's fingerprint holds the annotation file's checksum, so a complete store made from the same
    file, backend, M and chunking is recognised from a checksum and the store's ``units/done``: on COCO
    train2017 that is seconds, where parsing and validating the points JSON takes minutes. Anything else
    (no store, another file or backend, work left, ``--overwrite``) returns None and takes the full path.
    """
    path = Path(cfg.store)
    if cfg.overwrite or not (path / "zarr.json").is_file():
        return None
    store = ProposalStore.open(path)
    fp = store.fingerprint
    if (
        fp.get("num_proposals") != cfg.proposals_per_point
        or fp.get("chunk_points") != cfg.chunk_points
        or fp.get("source_sha256") != sha256_file(cfg.annotations)
    ):
        return None
    mine = store.units_for_shard(*shard)
    done = store.units_done()
    if not all(done[u] for u in mine):
        return None
    if fp.get("backend") != _make_backend(cfg).fingerprint():
        return None
    summary = ProposeSummary(store=path, shard=shard, images_skipped=store.count_images(mine))
    log.info("nothing to do: all %d unit(s) of shard %d/%d are already done", len(mine), *shard)
    # Write only when images/status is not materialised yet: a finished store may be a read-only copy.
    if not store.is_finalized():
        store = store.reopen_for_writing()
    summary.complete = store.finalize()
    summary.seconds = time.time() - t0
    log.info("%s", summary.line())
    return summary


def _check_options(cfg: ProposeConfig) -> None:
    """Option values, the images folder and the annotations file exist (InputError if not)."""
    if cfg.proposals_per_point < 1:
        raise InputError("--proposals-per-point must be >= 1")
    if cfg.batch_points < 1:
        raise InputError("--batch-points must be >= 1")
    if not Path(cfg.images).is_dir():
        raise InputError(f"--images {cfg.images} is not a directory")
    if not Path(cfg.annotations).is_file():
        raise InputError(f"annotations file not found: {cfg.annotations}")


def _load_inputs(cfg: ProposeConfig) -> PointSet:
    """The points, checked, and the presence of their images (InputError if bad)."""
    images_dir = Path(cfg.images)
    points = load_points(cfg.annotations, on_error=cfg.on_error)
    # Counts from the CSR offsets, not a scan of every point per image (O(I * P): minutes at COCO scale).
    per_image = np.diff(points.image_ptr())
    with_points = [img for img in points.images if per_image[img.index] > 0]
    missing = missing_image_files(with_points, images_dir)
    if missing and cfg.on_error == "fail":
        raise InputError(
            f"{len(missing)} image file(s) missing under {images_dir}: "
            + first_items(img.file_name for img in missing)
            + " (use --on-error skip to record them as failed and go on)"
        )
    return points


def run_propose(cfg: ProposeConfig) -> ProposeSummary:
    """Fill ``cfg.store`` with proposals for the points of this process's shard.

    With ``cfg.devices`` (e.g. ``"0,1"`` or ``["cuda:0", "cuda:1"]``) one worker process per device is started
    and each takes shard ``i/len(devices)``; the summaries are combined. Inputs and devices are checked before
    any worker starts, and a worker's error is raised here with its own type and exit code.
    """
    check_parallel_options(cfg.devices, cfg.shard)
    if cfg.devices:
        return _run_multi_device(cfg)
    t0 = time.time()
    shard, num_shards = shard_of(cfg.shard)
    resolve_device(cfg.device)  # an unavailable device stops here, before any work
    _check_options(cfg)
    images_dir = Path(cfg.images)
    done_already = _already_done(cfg, (shard, num_shards), t0)
    if done_already is not None:
        return done_already
    points = _load_inputs(cfg)

    backend = _make_backend(cfg)
    store = _open_or_create(cfg, points, backend, (shard, num_shards))
    if shard == 0:
        save_resolved_config(cfg, sidecar_config_path(cfg.store))
    summary = ProposeSummary(store=Path(cfg.store), shard=(shard, num_shards))
    mine = store.units_for_shard(shard, num_shards)
    done = store.units_done()
    todo = [u for u in mine if not done[u]]
    summary.images_skipped = store.count_images([u for u in mine if done[u]])
    if not mine:
        log.info("shard %d/%d has no work (the store has %d unit(s))", shard, num_shards, len(done))
    elif not todo:
        log.info(
            "nothing to do: all %d unit(s) of shard %d/%d are already done",
            len(mine),
            shard,
            num_shards,
        )
    else:
        log.info(
            "proposing %d image(s) in %d unit(s) with backend %s (M=%d) into %s",
            store.count_images(todo),
            len(todo),
            cfg.backend,
            store.num_proposals,
            cfg.store,
        )
    if todo or not store.is_finalized():
        store = store.reopen_for_writing()
    with progress_bar(
        total=store.count_images(todo),
        desc=f"propose {shard}/{num_shards}",
        unit="img",
        disable=not cfg.progress,
    ) as bar:
        for unit in todo:
            result = _empty_unit_result(store, unit)
            for outcome in _propose_unit(
                store, unit, points, backend, images_dir, cfg.on_error, result
            ):
                summary.add(outcome)
                bar.update(1)
                if outcome.error is None:
                    elapsed = max(float(bar.format_dict.get("elapsed", 0.0)), 1e-6)
                    bar.set_postfix(points_per_s=f"{summary.points / elapsed:.1f}")
            store.write_unit(unit, result)
    summary.complete = store.finalize()
    summary.seconds = time.time() - t0
    log.info("%s", summary.line())
    return summary


def _worker(rank: int, cfg: ProposeConfig, devices: list[str]) -> dict[str, Any]:
    cfg = dataclasses.replace(
        cfg, devices=None, device=devices[rank], shard=f"{rank}/{len(devices)}", progress=rank == 0
    )
    return dataclasses.asdict(run_propose(cfg))


def _run_multi_device(cfg: ProposeConfig) -> ProposeSummary:
    devices = parse_devices(cfg.devices or [])
    resolve_devices(devices)
    _check_options(cfg)
    _load_inputs(cfg)
    t0 = time.time()
    parts = spawn_workers(_worker, (cfg, devices), len(devices))
    total = ProposeSummary(store=Path(cfg.store), shard=(0, 1))
    for part in parts:
        total.images_done += part["images_done"]
        total.images_skipped += part["images_skipped"]
        total.images_failed += part["images_failed"]
        total.points += part["points"]
        total.failures += part["failures"]
    total.complete = ProposalStore.open(cfg.store).is_complete()
    total.seconds = time.time() - t0
    return total
