"""Error types that the CLI maps to exit codes.

Every error message should name the file, the record (image / annotation id) and the problem, so a user can fix
the input without reading a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class SapnetError(Exception):
    """Base class of all expected, user-facing failures (exit code 1)."""

    exit_code = 1


class InputError(SapnetError):
    """A bad input file or record: unreadable/invalid JSON, missing keys, unknown ids, bad points (exit 2)."""

    exit_code = 2


class StoreError(SapnetError):
    """A proposal store that is missing, incomplete or made from other inputs (exit 3)."""

    exit_code = 3


class TrainingError(SapnetError):
    """Training could not go on: NaN/inf loss, out of memory, broken checkpoint (exit 4)."""

    exit_code = 4


class DependencyError(SapnetError):
    """An optional dependency or model file is not available (exit 5)."""

    exit_code = 5


class DeviceUnavailableError(DependencyError):
    """A requested device is not on this machine: CUDA without a usable GPU, or ``cuda:N`` beyond the
    device count (exit 5, like every missing dependency; raised only by :mod:`stages.common.devices`)."""


MAX_LISTED = 10
"""How many items an error message lists before "... and N more"."""


class OutputError(InputError):
    """An output that cannot be written: read-only folder, disk full, ``--out`` of the wrong kind (exit 2).

    The message names the output path and the reason; nothing half-written is left behind.
    """

    exit_code = 2


def first_items(items: Iterable[Any], sep: str = ", ", limit: int = MAX_LISTED) -> str:
    """The first ``limit`` items joined by ``sep``, then ``... and N more`` when there are more.

    ``first_items(range(12))`` -> ``"0, 1, ..., 9, ... and 2 more"``; use ``sep="\\n  "`` for one per line.
    """
    items = [str(i) for i in items]
    shown = sep.join(items[:limit])
    return shown + (f"{sep}... and {len(items) - limit} more" if len(items) > limit else "")
