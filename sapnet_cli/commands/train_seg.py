"""`sapnet train-seg` (not implemented yet)."""

from __future__ import annotations

from stages.common.errors import NotImplementedYet


def train_seg() -> None:
    """Not implemented yet: this stage has not landed."""
    raise NotImplementedYet("`sapnet train-seg` is not implemented yet")
