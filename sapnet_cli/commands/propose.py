"""`sapnet propose` (not implemented yet)."""

from __future__ import annotations

from stages.common.errors import NotImplementedYet


def propose() -> None:
    """Not implemented yet: this stage has not landed."""
    raise NotImplementedYet("`sapnet propose` is not implemented yet")
