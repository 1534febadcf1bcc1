"""`sapnet evaluate` (not implemented yet)."""

from __future__ import annotations

from stages.common.errors import NotImplementedYet


def evaluate() -> None:
    """Not implemented yet: this stage has not landed."""
    raise NotImplementedYet("`sapnet evaluate` is not implemented yet")
