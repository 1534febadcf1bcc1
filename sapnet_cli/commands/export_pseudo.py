"""`sapnet export-pseudo` (not implemented yet)."""

from __future__ import annotations

from stages.common.errors import NotImplementedYet


def export_pseudo() -> None:
    """Not implemented yet: this stage has not landed."""
    raise NotImplementedYet("`sapnet export-pseudo` is not implemented yet")
