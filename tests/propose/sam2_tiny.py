"""A reduced SAM 2.1 model for tests: the real ``hiera_t`` config and weights at a 256 px input instead of 1024.

Same architecture, parameter names and shapes as ``hiera_t`` (a ``hiera_t`` state dict loads into it), built by the
``sam2`` package's own builder with one hydra override, so tests run the real builder and predictor ~16x cheaper.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stages.propose.backends import sam2 as sam2_backend

TINY = "hiera_t_256"  # model name the tests register
TINY_VARIANT = sam2_backend.Sam2Variant(
    sam2_backend.MODELS["hiera_t"].config, ("++model.image_size=256",)
)


def register_tiny(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make ``--model hiera_t_256`` buildable for the duration of one test; returns its name."""
    monkeypatch.setitem(sam2_backend.MODELS, TINY, TINY_VARIANT)
    return TINY


def random_hiera_t(seed: int = 0) -> torch.nn.Module:
    """``hiera_t`` with random weights (its zero-initialised tensors randomised too, so all of them matter)."""
    torch.manual_seed(seed)
    model = sam2_backend.build_model("hiera_t")
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return model


def save_random_hiera_t(path: Path, seed: int = 0) -> Path:
    """Save :func:`random_hiera_t` like the official files (``{"model": state_dict}``) and return ``path``."""
    torch.save({"model": random_hiera_t(seed).state_dict()}, path)
    return path
