"""`sapnet select` (not implemented yet)."""

from __future__ import annotations

from stages.common.errors import NotImplementedYet


def select() -> None:
    """Not implemented yet: this stage has not landed."""
    raise NotImplementedYet("`sapnet select` is not implemented yet")
