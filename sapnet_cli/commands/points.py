"""`sapnet points` (not implemented yet)."""

from __future__ import annotations

from stages.common.errors import NotImplementedYet


def points() -> None:
    """Not implemented yet: this stage has not landed."""
    raise NotImplementedYet("`sapnet points` is not implemented yet")
