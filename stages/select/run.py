"""`run_select`: validate the store and images, train (or load) the selector, predict, write the run directory.

Run directory (``--out``)::

    config.yaml            resolved configuration (+ store identity, world size, lr used)
    metrics.jsonl          one line per training iteration (losses, lr, images/s)
    checkpoints/last.pt    the latest training checkpoint (``--resume`` continues from it)
    selector.pt            the trained selector (weights + categories + architecture), for --predict-only
    selections.npz/.json   per-object selections (``stages.common.selections``)

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised through
:mod:`stages.common.devices` (nccl on CUDA, gloo on CPU), each rank trains on its shard of the images inside
DDP, prediction is sharded and gathered on rank 0, and only rank 0 writes files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from stages.common.config import config_to_dict, save_resolved_config
from stages.common.devices import DistInfo, dist_info, process_group, resolve_device
from stages.common.errors import InputError, TrainingError, first_items
from stages.common.io import check_output_path, ensure_dir, image_size
from stages.common.selections import Selections, save_selections, store_identity
from stages.select.checkpoint import check_resume, load_checkpoint
from stages.select.config import SelectConfig
from stages.select.data import SelectDataset, StoreArrays, load_store_arrays
from stages.select.forward import MethodOptions
from stages.select.model import SelectorNet, build_model
from stages.select.predict import predict_store
from stages.select.train import train_selector

log = logging.getLogger(__name__)


@dataclass
class SelectResult:
    """Summary of a `sapnet select` run."""

    run_dir: Path
    selections: Path | None
    selector: Path
    num_images: int
    num_objects: int
    num_failed_objects: int
    iterations: int
    seconds: float
    last_losses: dict[str, float] = field(default_factory=dict)
    images_per_second: float = 0.0
    resumed_from: int | None = None


def _listed(names: list[str]) -> str:
    return first_items(names)


def check_images(arrays: StoreArrays, images_dir: Path, image_indices: np.ndarray) -> None:
    """InputError unless every image of ``image_indices`` exists in ``images_dir`` with the store's size.

    Sizes are read from the file headers (no decoding), with the EXIF orientation applied.
    """
    if not images_dir.is_dir():
        raise InputError(f"--images {images_dir} is not a directory")
    missing, wrong = [], []
    for i in image_indices:
        name = arrays.file_names[i]
        path = images_dir / name
        if not path.is_file():
            missing.append(name)
            continue
        h, w = image_size(path)  # upright size: EXIF orientation applied, as every stage reads it
        if (h, w) != (int(arrays.heights[i]), int(arrays.widths[i])):
            wrong.append(f"{name} is {w}x{h}, store says {arrays.widths[i]}x{arrays.heights[i]}")
    if missing:
        raise InputError(
            f"{len(missing)} image(s) of the proposal store are missing from {images_dir}: {_listed(missing)}"
        )
    if wrong:
        raise InputError(
            f"the images in {images_dir} do not match the proposal store ({len(wrong)} differ in size): "
            f"{_listed(wrong)}"
        )


def load_selector(path: str | Path, categories: list[dict]) -> tuple[SelectorNet, dict[str, Any]]:
    """Rebuild the selector of a selector.pt / last.pt; TrainingError if its classes differ from the store."""
    ckpt = load_checkpoint(path)
    if ckpt["categories"] != categories:
        raise TrainingError(
            f"checkpoint {path} was trained on other categories than the store's "
            f"({len(ckpt['categories'])} vs {len(categories)}); use a selector trained on this data"
        )
    net = SelectorNet(ckpt["num_classes"], ckpt["backbone"], ckpt["fpn_channels"], ckpt["fc_dim"])
    net.load_state_dict(ckpt["model"])
    return net, ckpt


def run_select(cfg: SelectConfig) -> SelectResult:
    """Run `sapnet select` end to end (see the module docstring); returns a summary."""
    t0 = time.perf_counter()
    cfg.validate()
    info = dist_info()
    device = resolve_device(cfg.device, info)
    with process_group(device, info):
        return _run(cfg, info, device, t0)


def _run(cfg: SelectConfig, info: DistInfo, device: torch.device, t0: float) -> SelectResult:
    from stages.propose.store import ProposalStore

    store = ProposalStore.open(cfg.store)
    store.require_complete()
    categories = list(store.attrs["categories"])
    arrays = load_store_arrays(store)
    images = arrays.trainable_images()
    run_dir = Path(cfg.out)
    if info.is_main:
        check_output_path(run_dir, "dir", "run directory (--out)")
    check_images(arrays, Path(cfg.images), images)
    if len(images) == 0:
        raise InputError(f"proposal store {store.path} has no object with proposals to train on")
    ident = store_identity(store)
    loaded = load_selector(cfg.checkpoint, categories) if cfg.predict_only else None
    # Every rank continues from the same checkpoint, read once here; a foreign or mismatched one is refused
    # before anything is written.
    resume_from = None
    if not cfg.predict_only:
        resume_from = check_resume(run_dir, cfg, categories, info.world_size, ident)
    if info.is_main:
        ensure_dir(run_dir, "run directory (--out)")
        save_resolved_config(
            cfg,
            run_dir / "config.yaml",
            store=ident,
            world_size=info.world_size,
            lr_used=cfg.base_lr(info.world_size),
            device=str(device),
        )
    opts = MethodOptions.from_config(cfg)
    train = None
    if loaded is not None:
        net, ckpt = loaded
        iterations = int(ckpt.get("iteration", 0))
    else:
        torch.manual_seed(cfg.seed)
        net = build_model(
            len(categories), cfg.backbone, cfg.weights, cfg.fpn_channels, cfg.fc_dim, cfg.head_init
        )
        train_set = SelectDataset(
            arrays, cfg.images, cfg.short_side, cfg.max_size, cfg.flip, cfg.seed
        )
        train = train_selector(
            net,
            cfg,
            train_set,
            images,
            run_dir,
            categories,
            device,
            info,
            store=ident,
            resume_from=resume_from,
        )
        net, iterations = train.net, train.iterations
    test_set = SelectDataset(arrays, cfg.images, cfg.short_side, cfg.max_size, 0.0, cfg.seed)
    preds = predict_store(
        net, arrays, test_set, images, opts, device, cfg.batch_size, cfg.num_workers,
        info.rank, info.world_size, cfg.progress,
    )  # fmt: skip
    selections_path = None
    if info.is_main and preds is not None:
        sel = Selections(
            ann_id=store.objects.ann_id.astype(np.int64),
            **{k: getattr(preds, k) for k in preds.__dataclass_fields__},
            meta={
                "store": store_identity(store),
                "config": config_to_dict(cfg),
                "flags": cfg.flags(),
                "selector": str(cfg.checkpoint if cfg.predict_only else run_dir / "selector.pt"),
                "iterations": iterations,
                "failed_objects": [int(a) for a in store.objects.ann_id[~arrays.usable]],
                "categories": categories,
            },
        )
        selections_path = save_selections(sel, run_dir)
    if info.active:
        dist.barrier()
    return SelectResult(
        run_dir=run_dir,
        selections=selections_path,
        selector=Path(cfg.checkpoint) if cfg.predict_only else run_dir / "selector.pt",
        num_images=len(images),
        num_objects=int(arrays.usable.sum()),
        num_failed_objects=int((~arrays.usable).sum()),
        iterations=iterations,
        seconds=time.perf_counter() - t0,
        last_losses=train.last_losses if train else {},
        images_per_second=train.images_per_second if train else 0.0,
        resumed_from=train.resumed_from if train else None,
    )
