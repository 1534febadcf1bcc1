"""The selector's files: the training checkpoint ``RUN_DIR/checkpoints/last.pt``, ``selector.pt``, and the
checks that let ``--resume`` continue only the run that wrote the checkpoint.

``last.pt`` holds the weights, the optimiser (momentum buffers), the RNG states, the position in the run
(iteration, epoch, batch), the resolved config, the categories, the world size and the identity of the proposal
store; ``selector.pt`` holds what prediction needs (weights, categories, backbone sizes, config). Both are
written atomically (``stages.common.io.atomic_write_bytes``).
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages import __version__
from stages.common.config import config_to_dict
from stages.common.errors import TrainingError
from stages.common.io import atomic_write_bytes
from stages.select.config import SelectConfig
from stages.select.model import SelectorNet

CHECKPOINT_FORMAT = "sapnet-selector-checkpoint"
SELECTOR_FORMAT = "sapnet-selector"
# Settings a resumed run must share with the run that wrote the checkpoint.
RESUME_KEYS = (
    "backbone", "fpn_channels", "fc_dim", "epochs", "iters", "batch_size", "lr", "seed", "short_side",
    "max_size", "flip", "use_pdg", "use_prm", "use_ppg", "use_npg", "pdg_mode", "pdg_power",
    "pdg_distance_power", "ppg_base", "num_negatives", "warmup_iters", "warmup_ratio", "lr_steps",
    "top1_box", "head_init", "psm_normalise",
)  # fmt: skip
# What ties a checkpoint to its proposal store (keys of ``stages.common.selections.store_identity``).
STORE_KEYS = ("source_sha256", "created_at", "num_proposals", "num_points")


def checkpoint_path(run_dir: Path) -> Path:
    """Where `sapnet select` keeps its training checkpoint: ``RUN_DIR/checkpoints/last.pt``."""
    return Path(run_dir) / "checkpoints" / "last.pt"


def rng_state() -> dict[str, Any]:
    """The torch / numpy / python RNG states, for an exact resume."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_payload(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` into memory, then one atomic write: a kill never leaves a half-written file."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _network_fields(net: SelectorNet, cfg: SelectConfig) -> dict[str, Any]:
    return {
        "num_classes": net.num_classes,
        "backbone": cfg.backbone,
        "fpn_channels": cfg.fpn_channels,
        "fc_dim": cfg.fc_dim,
    }


def selector_payload(
    net: SelectorNet, cfg: SelectConfig, categories: list[dict], iteration: int
) -> dict:
    """The ``selector.pt`` content: weights plus what prediction needs to rebuild the network."""
    return {
        "format": SELECTOR_FORMAT,
        "sapnet_version": __version__,
        "model": net.state_dict(),
        "categories": categories,
        **_network_fields(net, cfg),
        "config": config_to_dict(cfg),
        "iteration": iteration,
    }


def training_payload(
    net: SelectorNet,
    optimizer: torch.optim.Optimizer,
    cfg: SelectConfig,
    categories: list[dict],
    world_size: int,
    store: dict[str, Any] | None,
    position: tuple[int, int, int],
) -> dict[str, Any]:
    """The ``last.pt`` content at ``position = (iteration, epoch, batch)``: ``batch`` is the next batch of
    ``epoch`` to run (0 when the epoch is complete and ``epoch`` is the next one)."""
    iteration, epoch, batch = position
    return {
        "format": CHECKPOINT_FORMAT,
        "sapnet_version": __version__,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "epoch": epoch,
        "batch": batch,
        "rng": rng_state(),
        "config": config_to_dict(cfg),
        "categories": categories,
        "world_size": world_size,
        "store": store,
        **_network_fields(net, cfg),
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


def _check_store(ckpt: dict[str, Any], path: Path, store: dict[str, Any]) -> None:
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


def _check_settings(
    ckpt: dict[str, Any], cfg: SelectConfig, categories: list[dict], world: int, path: Path
) -> None:
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


def check_resume(
    run_dir: Path,
    cfg: SelectConfig,
    categories: list[dict],
    world: int,
    store: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The checkpoint ``--resume`` would continue from, verified; None without ``--resume`` or checkpoint.

    Raises TrainingError when the checkpoint cannot be read, is a ``selector.pt``, was trained on another
    store or with other settings. `run_select` calls it before writing anything into the run directory, so a
    refused resume leaves ``config.yaml`` and the selections as they were.
    """
    path = checkpoint_path(run_dir)
    if not cfg.resume or not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(
            f"cannot resume from {path}: it is a selector.pt, not a training checkpoint"
        )
    if store is not None:
        _check_store(ckpt, path, store)
    _check_settings(ckpt, cfg, categories, world, path)
    return ckpt
