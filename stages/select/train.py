"""Training loop of the selector: SGD, warm-up + step schedule, gradient clipping, checkpoints, exact resume.

Schedule (docs/method.md §11): lr = base x 0.1^(steps passed), steps at fractions 8/12 and 11/12 of the run (epochs
8 and 11 of 12), times a linear warm-up from 0.001 over the first 500 iterations (mmdet's "linear" warm-up).
The lr is a pure function of the iteration, so the scheduler state is the iteration count.

Determinism: the data order and flips depend only on (seed, epoch, image) and the negatives on (seed,
iteration, rank) (see ``data.py`` / ``forward.py``), and the model has no dropout, so a run resumed from
``RUN_DIR/checkpoints/last.pt`` (written at the end of every epoch, every ``checkpoint_interval`` iterations
and at the end) continues exactly as the uninterrupted run would have. The checkpoint also keeps the torch /
numpy / python RNG states and the optimiser's momentum buffers.
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from stages import __version__
from stages.common.config import config_to_dict
from stages.common.devices import DistInfo
from stages.common.errors import TrainingError
from stages.common.io import atomic_write_bytes, ensure_dir
from stages.select.config import SelectConfig
from stages.select.data import (
    EpochBatchSampler,
    SelectDataset,
    batch_to_device,
    batches_per_epoch,
    collate,
)
from stages.select.forward import MethodOptions, SelectorLoss, iteration_generator
from stages.select.model import SelectorNet

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sapnet-selector-checkpoint"
SELECTOR_FORMAT = "sapnet-selector"
LOSS_KEYS = ("loss", "loss_psm", "loss_pos", "loss_neg")
# Settings a resumed run must share with the run that wrote the checkpoint.
RESUME_KEYS = (
    "backbone", "fpn_channels", "fc_dim", "epochs", "iters", "batch_size", "lr", "seed", "short_side",
    "max_size", "flip", "use_pdg", "use_prm", "use_ppg", "use_npg", "pdg_mode", "pdg_power",
    "pdg_distance_power", "ppg_base", "num_negatives", "warmup_iters", "warmup_ratio", "lr_steps",
    "top1_box", "head_init", "psm_normalise",
)  # fmt: skip


@dataclass
class TrainResult:
    """What training produced: the trained network (unwrapped) and a summary."""

    net: SelectorNet
    iterations: int
    epochs_done: float
    last_losses: dict[str, float] = field(default_factory=dict)
    images_per_second: float = 0.0
    resumed_from: int | None = None


def lr_at(iteration: int, base_lr: float, total_iters: int, cfg: SelectConfig) -> float:
    """The learning rate of (0-based) ``iteration``: step decay, then linear warm-up on top."""
    passed = sum(iteration >= int(round(s * total_iters)) for s in cfg.lr_steps)
    lr = base_lr * cfg.lr_gamma**passed
    if iteration < cfg.warmup_iters:
        k = (1.0 - iteration / cfg.warmup_iters) * (1.0 - cfg.warmup_ratio)
        lr *= 1.0 - k
    return lr


def total_iterations(cfg: SelectConfig, num_images: int, world_size: int) -> tuple[int, int]:
    """``(total iterations, iterations per epoch)`` of one rank."""
    per_epoch = batches_per_epoch(num_images, cfg.batch_size, world_size)
    return (cfg.iters if cfg.iters is not None else cfg.epochs * per_epoch), per_epoch


def build_optimizer(net: SelectorNet, cfg: SelectConfig) -> torch.optim.SGD:
    """SGD over the trainable parameters (weight decay on all of them, as mmdet's default)."""
    params = [p for p in net.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=0.0, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _save(obj: dict[str, Any], path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def selector_payload(
    net: SelectorNet, cfg: SelectConfig, categories: list[dict], iteration: int
) -> dict:
    """The ``selector.pt`` content: weights plus what prediction needs to rebuild the network."""
    return {
        "format": SELECTOR_FORMAT,
        "sapnet_version": __version__,
        "model": net.state_dict(),
        "categories": categories,
        "num_classes": net.num_classes,
        "backbone": cfg.backbone,
        "fpn_channels": cfg.fpn_channels,
        "fc_dim": cfg.fc_dim,
        "config": config_to_dict(cfg),
        "iteration": iteration,
    }


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a selector.pt / last.pt; TrainingError if it is not one."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise TrainingError(f"checkpoint {path} cannot be read: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (CHECKPOINT_FORMAT, SELECTOR_FORMAT):
        raise TrainingError(f"{path} is not a sapnet selector checkpoint (selector.pt or last.pt)")
    return ckpt


# What ties a checkpoint to its proposal store (keys of ``stages.common.selections.store_identity``).
STORE_KEYS = ("source_sha256", "created_at", "num_proposals", "num_points")


def _check_resume(
    ckpt: dict[str, Any],
    cfg: SelectConfig,
    categories: list[dict],
    world: int,
    path: Path,
    store: dict[str, Any] | None = None,
):
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(
            f"cannot resume from {path}: it is a selector.pt, not a training checkpoint"
        )
    if store is not None:
        made_from = ckpt.get("store")
        if not isinstance(made_from, dict):
            raise TrainingError(
                f"cannot resume from {path}: it does not record which proposal store it was trained on "
                "(written by an older sapnet); use a new --out directory to start over"
            )
        differs = [k for k in STORE_KEYS if made_from.get(k) != store.get(k)]
        if differs:
            raise TrainingError(
                f"cannot resume from {path}: it was trained on another proposal store "
                f"({made_from.get('path')}, differs in {', '.join(differs)}) than --store "
                f"{store.get('path')}; use a new --out directory for this store"
            )
    old = ckpt["config"]
    new = config_to_dict(cfg)
    diff = [k for k in RESUME_KEYS if old.get(k) != new.get(k)]
    if ckpt.get("world_size") != world:
        diff.append(f"world size ({ckpt.get('world_size')} -> {world})")
    if ckpt.get("categories") != categories:
        diff.append("categories")
    if diff:
        raise TrainingError(
            f"cannot resume from {path}: these settings differ from the interrupted run: {', '.join(diff)}. "
            "Use the same options, or a new --out directory to start over."
        )


def checkpoint_path(run_dir: Path) -> Path:
    """Where `sapnet select` keeps its training checkpoint: ``RUN_DIR/checkpoints/last.pt``."""
    return Path(run_dir) / "checkpoints" / "last.pt"


def check_resume(
    run_dir: Path,
    cfg: SelectConfig,
    categories: list[dict],
    world: int,
    store: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The checkpoint ``--resume`` would continue from, verified; None without ``--resume`` or checkpoint.

    Raises TrainingError when the checkpoint cannot be read, was trained on another store or with other
    settings. `run_select` calls it before writing anything into the run directory, so a refused resume
    leaves ``config.yaml`` and the selections as they were.
    """
    path = checkpoint_path(run_dir)
    if not cfg.resume or not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    _check_resume(ckpt, cfg, categories, world, path, store)
    return ckpt


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


class MetricsLog:
    """``metrics.jsonl``: one JSON line per iteration (rank 0 only); a resume drops lines past the checkpoint."""

    def __init__(self, path: Path, enabled: bool, keep_until: int | None):
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        ensure_dir(path.parent, "run directory")
        kept: list[str] = []
        if keep_until is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("iter", math.inf) <= keep_until:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode("utf-8"))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


def train_selector(
    net: SelectorNet,
    cfg: SelectConfig,
    dataset: SelectDataset,
    train_images: np.ndarray,
    run_dir: Path,
    categories: list[dict],
    device: torch.device,
    info: DistInfo,
    store: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``net`` in place on ``train_images`` (store image indices) and return it with a summary.

    Writes ``RUN_DIR/checkpoints/last.pt``, ``RUN_DIR/metrics.jsonl`` and, at the end, ``RUN_DIR/selector.pt``
    (rank 0). Raises TrainingError on a NaN/inf loss (naming the iteration; the last checkpoint is kept) and
    on running out of memory.
    """
    ckpt_path = checkpoint_path(run_dir)
    total, per_epoch = total_iterations(cfg, len(train_images), info.world_size)
    base_lr = cfg.base_lr(info.world_size)
    net.to(device)
    optimizer = build_optimizer(net, cfg)
    start_iter, epoch, start_batch, resumed = 0, 0, 0, None
    ckpt = check_resume(run_dir, cfg, categories, info.world_size, store)
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"])
        start_iter, epoch, start_batch = ckpt["iteration"], ckpt["epoch"], ckpt["batch"]
        resumed = start_iter
        log.info(
            "resuming from %s at iteration %d (epoch %d, batch %d)",
            ckpt_path,
            start_iter,
            epoch,
            start_batch,
        )
    elif cfg.resume:
        log.warning("--resume: no checkpoint at %s, starting from scratch", ckpt_path)
    metrics = MetricsLog(
        run_dir / "metrics.jsonl", info.is_main, keep_until=resumed if resumed else None
    )

    module = SelectorLoss(net, MethodOptions.from_config(cfg)).to(device)
    model: torch.nn.Module = module
    if info.active:
        ddp_device = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=ddp_device, find_unused_parameters=True
        )
    model.train()

    def save(epoch_: int, batch_: int, it_: int) -> None:
        if info.is_main:
            _save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "sapnet_version": __version__,
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "iteration": it_,
                    "epoch": epoch_,
                    "batch": batch_,
                    "rng": _rng_state(),
                    "config": config_to_dict(cfg),
                    "categories": categories,
                    "world_size": info.world_size,
                    "store": store,
                    "num_classes": net.num_classes,
                    "backbone": cfg.backbone,
                    "fpn_channels": cfg.fpn_channels,
                    "fc_dim": cfg.fc_dim,
                },
                ckpt_path,
            )

    progress = _progress(cfg, info, total, start_iter)
    it, last, seen, t_start = start_iter, {}, 0, time.perf_counter()
    saved_at = start_iter if resumed is not None else -1
    while it < total:
        sampler = EpochBatchSampler(
            train_images,
            cfg.batch_size,
            epoch,
            cfg.seed,
            info.rank,
            info.world_size,
            True,
            start_batch,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
        )
        batch_index = start_batch
        for batch in loader:
            t0 = time.perf_counter()
            losses = _step(
                model,
                optimizer,
                batch,
                device,
                cfg,
                info,
                it,
                lr_at(it, base_lr, total, cfg),
                ckpt_path,
            )
            it += 1
            batch_index += 1
            dt = time.perf_counter() - t0
            n_img = len(batch["size"]) * info.world_size
            seen += n_img
            last = {k: float(v) for k, v in losses.items()}
            record = {"iter": it, "epoch": epoch, "lr": lr_at(it - 1, base_lr, total, cfg), **last}
            record["images_per_s"] = n_img / max(dt, 1e-9)
            metrics.write(record)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(
                    loss=f"{last['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}"
                )
            if cfg.checkpoint_interval and it % cfg.checkpoint_interval == 0 and it < total:
                save(epoch, batch_index, it)
                saved_at = it
            if it >= total:
                break
        if batch_index >= per_epoch:  # the epoch is complete
            epoch, start_batch = epoch + 1, 0
            save(epoch, 0, it)
            saved_at = it
        else:
            start_batch = batch_index
    if saved_at != it:
        save(epoch, start_batch, it)
    if progress is not None:
        progress.close()
    if info.is_main:
        _save(selector_payload(net, cfg, categories, it), run_dir / "selector.pt")
    elapsed = time.perf_counter() - t_start
    return TrainResult(
        net=net,
        iterations=it,
        epochs_done=it / per_epoch,
        last_losses=last,
        images_per_second=seen / elapsed if elapsed > 0 else 0.0,
        resumed_from=resumed,
    )


def _progress(cfg: SelectConfig, info: DistInfo, total: int, start: int):
    if not (cfg.progress and info.is_main):
        return None
    from stages.common.progress import progress as progress_bar

    return progress_bar(total=total, initial=start, desc="select: train", unit="it")


def _step(
    model: torch.nn.Module,
    optimizer: torch.optim.SGD,
    batch: dict[str, Any],
    device: torch.device,
    cfg: SelectConfig,
    info: DistInfo,
    it: int,
    lr: float,
    ckpt_path: Path,
) -> dict[str, torch.Tensor]:
    """One SGD step; TrainingError on a non-finite loss or out of memory."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    try:
        batch = batch_to_device(batch, device)
        losses = model(
            batch["images"],
            batch["boxes"],
            batch["points"],
            batch["labels"],
            batch["size"],
            iteration_generator(cfg.seed, it, info.rank),
        )
        finite = torch.isfinite(losses["loss"]).to(torch.float32)
        if info.active:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1.0:
            kept = (
                f"the last good checkpoint is {ckpt_path}"
                if ckpt_path.is_file()
                else "no checkpoint yet"
            )
            parts = ", ".join(f"{k}={float(losses[k].detach()):.4g}" for k in LOSS_KEYS)
            raise TrainingError(
                f"training diverged: non-finite loss at iteration {it + 1} ({parts}); {kept}. "
                "Try a smaller --lr or check the proposals of this batch's images."
            )
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
    except (RuntimeError, MemoryError) as err:
        if isinstance(err, MemoryError) or _is_oom(err):
            raise TrainingError(
                f"out of memory at iteration {it + 1} on {device} (batch size {cfg.batch_size}, short side "
                f"{cfg.short_side}); try a smaller --batch-size or --short-side"
            ) from None
        raise
    return {k: v.detach() for k, v in losses.items()}
