"""Tiny synthetic datasets and selector configs for the `sapnet select` tests (CPU, seconds per run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.select.config import SelectConfig
from stages.synthetic.generate import SyntheticConfig, SyntheticData, make_synthetic

TINY_DATA = {
    "num_images": 6,
    "height": 64,
    "width": 96,
    "object_size": (16, 24),
    "objects_per_image": (1, 3),
    "distractors": 2,
}
"""6 images of 96x64 with 1-3 objects each."""

TINY_MODEL = {
    "backbone": "resnet18",
    "weights": "none",
    "fpn_channels": 64,
    "fc_dim": 64,
    "short_side": 64,
    "max_size": 96,
    "batch_size": 2,
    "iters": 4,
    "warmup_iters": 2,
    "num_negatives": 16,
    "num_workers": 0,
    "progress": False,
    "device": "cpu",
}
"""A narrow resnet18 selector at the images' own size (one step is well under a second)."""


def tiny_data(root: Path, **overrides: Any) -> SyntheticData:
    """Write a tiny synthetic dataset + complete store under ``root``."""
    return make_synthetic(root, SyntheticConfig(**{**TINY_DATA, **overrides}))


def tiny_config(data: SyntheticData, out: Path, **overrides: Any) -> SelectConfig:
    """A validated tiny SelectConfig on ``data`` writing to ``out``."""
    fields = {"store": str(data.store), "images": str(data.images_dir), "out": str(out)}
    return SelectConfig(**{**fields, **TINY_MODEL, **overrides}).validate()
