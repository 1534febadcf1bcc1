"""Error types that the CLI maps to exit codes.

Every error message should name the file, the record (image / annotation id) and the problem, so a user can fix
the input without reading a traceback.
"""

from __future__ import annotations


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


class NotImplementedYet(SapnetError):
    """A stage whose implementation has not landed yet (exit 6); never a silent success."""

    exit_code = 6


class OutputError(InputError):
    """An output that cannot be written: read-only folder, disk full, ``--out`` of the wrong kind (exit 2).

    The message names the output path and the reason; nothing half-written is left behind.
    """

    exit_code = 2
