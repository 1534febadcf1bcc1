"""Progress bars that suit both a terminal and a log file.

On a terminal :func:`progress` is a plain tqdm bar. When the stream is not a terminal (a ``make reproduce``
log, a batch job's output file) the bar is replaced by a line every ``LOG_STEP_PERCENT`` percent (and at the
end), instead of thousands of carriage-return frames::

    select: train:  10%|█         | 6/60 [02:31<22:41, 25.2s/it, loss=1.37]

Every stage creates its bars here, so they all behave the same.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

LOG_STEP_PERCENT = 10
"""A line per this many percent of the total when writing to a file (also the first and last update)."""


class LogLines(tqdm):
    """tqdm that writes whole lines at every ``step`` percent and at the end, never carriage returns."""

    def __init__(self, *args: Any, step: int = LOG_STEP_PERCENT, **kwargs: Any) -> None:
        self._step = max(1, int(step))
        self._last_bucket = -1
        kwargs.setdefault("mininterval", 0)  # display() decides what is written
        kwargs.setdefault("ascii", True)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self.total:
            bucket = int(100 * self.n / self.total) // self._step
        else:  # unknown total: a line every 10 ** k items
            bucket = len(str(int(self.n)))
        if bucket == self._last_bucket and msg is None:
            return True
        self._last_bucket = bucket
        if self.n == 0 and self.total:  # the first line comes with the first update
            return True
        self.fp.write((msg or self.__str__()).strip() + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if self.disable:
            return
        if self.n != (self.total or self.n) or self._last_bucket < 0:
            self._last_bucket = -2  # always print the final state
            self.display()
        elif self.total and int(100 * self.n / self.total) // self._step != self._last_bucket:
            self.display()
        self.disable = True  # tqdm's own close would clear/redraw the line
        with self._lock:
            self._instances.discard(self)


def is_terminal(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    disable: bool = False,
    file: TextIO | None = None,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar on a terminal, :class:`LogLines` otherwise (same arguments as ``tqdm``)."""
    stream = file if file is not None else sys.stderr
    cls = tqdm if is_terminal(stream) else LogLines
    if cls is tqdm:
        kwargs.setdefault("dynamic_ncols", True)
    return cls(iterable, disable=disable, file=stream, **kwargs)
