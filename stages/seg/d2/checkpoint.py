"""Checkpoints of train-seg that survive ``kill -9``: atomic saves, and verification before they are used.

detectron2's checkpointer writes ``model_XXXXXXX.pth`` / ``model_final.pth`` in place and then the
``last_checkpoint`` tag, so a process killed mid-write leaves a truncated or empty file that a later
``--resume`` or ``--eval-only`` would trust. :class:`AtomicCheckpointer` writes both through
:func:`stages.common.io.atomic_write` (temporary file, fsync, rename); :func:`verify_checkpoint` and
:func:`check_resume` refuse a broken file with a :class:`TrainingError` (exit 4) naming it, before the run
writes anything into its output folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from stages.common.errors import TrainingError
from stages.common.io import atomic_write, atomic_write_bytes
from stages.seg.d2 import compat

compat.apply()

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402

log = logging.getLogger(__name__)
LAST_CHECKPOINT = "last_checkpoint"


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose ``save`` and ``last_checkpoint`` tag are atomic writes."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda fh: torch.save(data, fh))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_bytes(
            os.path.join(self.save_dir, LAST_CHECKPOINT), last_filename_basename.encode("utf-8")
        )


def load_mapped(path: Path) -> Any:
    """``torch.load`` of a checkpoint on CPU, memory-mapped (not copied) where the file's format allows."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=False)


def verify_checkpoint(path: str | Path, what: str = "checkpoint", need_state: bool = False) -> None:
    """TrainingError unless ``path`` is a readable detectron2 checkpoint holding a ``model`` state.

    ``need_state`` also asks for ``iteration`` (what ``--resume`` continues from). The file is memory-mapped,
    not copied, so a large checkpoint costs little to check.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise TrainingError(
            f"{what} {path} is empty (0 bytes): a run was killed while writing it; delete it, or "
            "train again with a new --out"
        )
    try:
        data = load_mapped(path)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise TrainingError(
            f"{what} {path} cannot be read ({type(err).__name__}: {err}); it is truncated or not a "
            "checkpoint: delete it, or train again with a new --out"
        ) from None
    if not isinstance(data, dict) or "model" not in data:
        raise TrainingError(
            f"{what} {path} holds no 'model' weights: it is not a train-seg checkpoint"
        )
    if need_state and "iteration" not in data:
        raise TrainingError(f"{what} {path} records no 'iteration': it cannot be resumed from")


def check_resume(out_dir: str | Path) -> Path | None:
    """The checkpoint ``--resume`` would continue from in ``out_dir``, verified (None when there is none).

    Without a ``last_checkpoint`` tag training starts from scratch; an existing ``model_final.pth`` is then
    checked too, so a truncated final model is reported instead of being silently kept.
    """
    out_dir = Path(out_dir)
    tag = out_dir / LAST_CHECKPOINT
    if tag.is_file():
        try:
            name = tag.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise TrainingError(f"checkpoint tag {tag} cannot be read: {err}") from None
        if not name:
            raise TrainingError(f"checkpoint tag {tag} is empty: a run was killed while writing it")
        path = out_dir / name
        verify_checkpoint(path, f"last checkpoint (named in {tag})", need_state=True)
        return path
    final = out_dir / "model_final.pth"
    if final.exists():
        verify_checkpoint(final, "final model")
    return None
