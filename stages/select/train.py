"""Training loop of the selector: SGD, warm-up + step schedule, gradient clipping, checkpoints, exact resume.

Schedule (docs/method.md §11): lr = base x 0.1^(steps passed), steps at fractions 8/12 and 11/12 of the run (epochs
8 and 11 of 12), times a linear warm-up from 0.001 over the first 500 iterations (mmdet's "linear" warm-up).
The lr is a pure function of the iteration, so the scheduler state is the iteration count.

Determinism: the data order and flips depend only on (seed, epoch, image) and the negatives on (seed,
iteration, rank) (see ``data.py`` / ``forward.py``), and the model has no dropout, so a run resumed from
``RUN_DIR/checkpoints/last.pt`` (written at the end of every epoch, every ``checkpoint_interval`` iterations
and at the end) continues exactly as the uninterrupted run would have. The checkpoint also keeps the torch /
numpy / python RNG states and the optimiser's momentum buffers (``checkpoint.py``).

Reading order: `train_selector` builds a `_Trainer`, which restores a checkpoint (`_Trainer.__init__`), runs
epochs (`_Trainer.run_epoch`, one `_step` per batch, `_Trainer.record` for metrics and progress) and saves
(`_Trainer.save`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from stages.common.devices import DistInfo
from stages.common.errors import TrainingError
from stages.common.io import atomic_write_bytes, ensure_dir
from stages.select.checkpoint import (
    checkpoint_path,
    save_payload,
    selector_payload,
    set_rng_state,
    training_payload,
)
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

LOSS_KEYS = ("loss", "loss_psm", "loss_pos", "loss_neg")


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


def _training_module(
    net: SelectorNet, cfg: SelectConfig, device: torch.device, info: DistInfo
) -> torch.nn.Module:
    """The network with the method's losses, wrapped in DDP when a process group is active."""
    module = SelectorLoss(net, MethodOptions.from_config(cfg)).to(device)
    if not info.active:
        return module
    ddp_device = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=ddp_device, find_unused_parameters=True
    )


class _Trainer:
    """One training run: where it is (iteration, epoch, next batch), the model and optimiser, its checkpoint,
    metrics and progress. `train_selector` is its only user."""

    def __init__(
        self,
        net: SelectorNet,
        cfg: SelectConfig,
        run_dir: Path,
        categories: list[dict],
        device: torch.device,
        info: DistInfo,
        store: dict[str, Any] | None,
        num_images: int,
        resume_from: dict[str, Any] | None,
    ):
        self.net, self.cfg, self.run_dir, self.categories = net, cfg, run_dir, categories
        self.device, self.info, self.store = device, info, store
        self.ckpt_path = checkpoint_path(run_dir)
        self.total, self.per_epoch = total_iterations(cfg, num_images, info.world_size)
        self.base_lr = cfg.base_lr(info.world_size)
        net.to(device)
        self.optimizer = build_optimizer(net, cfg)
        self.it, self.epoch, self.batch, self.resumed = 0, 0, 0, None
        self._restore(resume_from)
        self.saved_at = self.it if self.resumed is not None else -1
        self.metrics = MetricsLog(
            run_dir / "metrics.jsonl", info.is_main, keep_until=self.resumed or None
        )
        self.model = _training_module(net, cfg, device, info)
        self.model.train()
        self.progress = _progress(cfg, info, self.total, self.it)
        self.last: dict[str, float] = {}
        self.seen = 0

    def _restore(self, ckpt: dict[str, Any] | None) -> None:
        if ckpt is None:
            if self.cfg.resume:
                log.warning("--resume: no checkpoint at %s, starting from scratch", self.ckpt_path)
            return
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        self.it, self.epoch, self.batch = ckpt["iteration"], ckpt["epoch"], ckpt["batch"]
        self.resumed = self.it
        log.info(
            "resuming from %s at iteration %d (epoch %d, batch %d)",
            self.ckpt_path, self.it, self.epoch, self.batch,
        )  # fmt: skip

    def save(self) -> None:
        """Write ``last.pt`` at the current position (rank 0)."""
        if self.info.is_main:
            payload = training_payload(
                self.net, self.optimizer, self.cfg, self.categories, self.info.world_size,
                self.store, (self.it, self.epoch, self.batch),
            )  # fmt: skip
            save_payload(payload, self.ckpt_path)
        self.saved_at = self.it

    def loader(self, dataset: SelectDataset, train_images: np.ndarray) -> DataLoader:
        """This epoch's batches from the current batch on (data order depends on seed, epoch, rank only)."""
        cfg, info = self.cfg, self.info
        sampler = EpochBatchSampler(
            train_images, cfg.batch_size, self.epoch, cfg.seed, info.rank, info.world_size, True,
            self.batch,
        )  # fmt: skip
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def run_epoch(self, loader: DataLoader) -> None:
        """Run the rest of the current epoch (or up to the last iteration); checkpoint at the epoch's end and
        every ``checkpoint_interval`` iterations."""
        cfg = self.cfg
        for batch in loader:
            lr = lr_at(self.it, self.base_lr, self.total, cfg)
            t0 = time.perf_counter()
            losses = _step(
                self.model, self.optimizer, batch, self.device, cfg, self.info, self.it, lr,
                self.ckpt_path,
            )  # fmt: skip
            self.it += 1
            self.batch += 1
            self.record(lr, losses, len(batch["size"]) * self.info.world_size, t0)
            interval = cfg.checkpoint_interval
            if interval and self.it % interval == 0 and self.it < self.total:
                self.save()
            if self.it >= self.total:
                break
        if self.batch >= self.per_epoch:  # the epoch is complete
            self.epoch, self.batch = self.epoch + 1, 0
            self.save()

    def record(self, lr: float, losses: dict[str, torch.Tensor], n_img: int, t0: float) -> None:
        """One ``metrics.jsonl`` line and a progress tick for the iteration just run."""
        dt = time.perf_counter() - t0
        self.seen += n_img
        self.last = {k: float(v) for k, v in losses.items()}
        record = {"iter": self.it, "epoch": self.epoch, "lr": lr, **self.last}
        record["images_per_s"] = n_img / max(dt, 1e-9)
        self.metrics.write(record)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(
                loss=f"{self.last['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}"
            )

    def finish(self) -> None:
        """Save the final position (if not saved yet), close the progress bar, write ``selector.pt``."""
        if self.saved_at != self.it:
            self.save()
        if self.progress is not None:
            self.progress.close()
        if self.info.is_main:
            save_payload(
                selector_payload(self.net, self.cfg, self.categories, self.it),
                self.run_dir / "selector.pt",
            )


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
    resume_from: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``net`` in place on ``train_images`` (store image indices) and return it with a summary.

    Writes ``RUN_DIR/checkpoints/last.pt``, ``RUN_DIR/metrics.jsonl`` and, at the end, ``RUN_DIR/selector.pt``
    (rank 0). ``resume_from``: the checkpoint to continue from, as `check_resume` returned it after verifying
    it (the caller reads it once, before writing anything). Raises
    TrainingError on a NaN/inf loss (naming the iteration; the last checkpoint is kept) and on running out of
    memory.
    """
    trainer = _Trainer(
        net, cfg, run_dir, categories, device, info, store, len(train_images), resume_from
    )
    t_start = time.perf_counter()
    while trainer.it < trainer.total:
        trainer.run_epoch(trainer.loader(dataset, train_images))
    trainer.finish()
    elapsed = time.perf_counter() - t_start
    return TrainResult(
        net=net,
        iterations=trainer.it,
        epochs_done=trainer.it / trainer.per_epoch,
        last_losses=trainer.last,
        images_per_second=trainer.seen / elapsed if elapsed > 0 else 0.0,
        resumed_from=trainer.resumed,
    )
