"""Stream a COCO-style JSON object: its big top-level lists one element at a time, never the whole document.

``json.load`` of COCO train2017 pseudo labels with auxiliary masks (over a GB of text) builds several GB of
Python objects at once; :func:`iter_top_level` yields ``(key, value, is_element)``: for the keys in
``list_keys`` whose value is a list, first ``(key, [], False)`` (the list starts; so empty lists are seen too)
and then one ``(key, element, True)`` per element; for every other key ``(key, value, False)``. Each value is decoded by the C JSON decoder (``json.JSONDecoder.raw_decode``) from a
text buffer refilled from the file, so memory is one buffer plus the current element.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from stages.common.errors import InputError

READ_CHARS = 1 << 22
_WS = " \t\n\r"


class _Reader:
    """A text buffer over a file, with the C decoder for one value at a time."""

    def __init__(self, fh: IO[str], path: Path):
        self.fh, self.path = fh, path
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()
        self.consumed = 0  # characters dropped from the buffer so far (for error positions)

    def _fill(self, at_least: int = READ_CHARS) -> bool:
        if self.eof:
            return False
        data = self.fh.read(max(READ_CHARS, at_least))
        if not data:
            self.eof = True
            return False
        self.consumed += self.pos
        self.buf = self.buf[self.pos :] + data
        self.pos = 0
        return True

    def error(self, what: str) -> InputError:
        return InputError(
            f"{self.path}: invalid JSON ({what} at character {self.consumed + self.pos})"
        )

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file), not consumed."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def take(self, allowed: str) -> str:
        ch = self.peek()
        if not ch or ch not in allowed:
            raise self.error(f"expected one of {allowed!r}, found {ch or 'the end of the file'!r}")
        self.pos += 1
        return ch

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if self._fill(at_least=len(self.buf)):
                    continue  # the value runs past the buffer: read more and decode again
                raise self.error(err.msg) from None
            if end == len(self.buf) and self._fill():
                continue  # a number at the buffer's end may continue in the next read
            self.pos = end
            return obj


def iter_top_level(
    path: str | Path, list_keys: tuple[str, ...] = ("images", "annotations")
) -> Iterator[tuple[str, Any, bool]]:
    """Yield the top-level members of the JSON object in ``path`` in file order (see the module docstring).

    Raises:
        InputError: unreadable file, not a JSON object, or invalid JSON (with the character position).
    """
    path = Path(path)
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    with fh:
        r = _Reader(fh, path)
        try:
            if r.peek() != "{":
                raise InputError(f"{path}: expected a COCO instances object (a JSON object)")
            r.take("{")
            if r.peek() == "}":
                return
            while True:
                key = r.value()
                if not isinstance(key, str):
                    raise r.error("expected a string key")
                r.take(":")
                if key in list_keys and r.peek() == "[":
                    r.take("[")
                    yield key, [], False
                    if r.peek() == "]":
                        r.take("]")
                    else:
                        while True:
                            yield key, r.value(), True
                            if r.take(",]") == "]":
                                break
                else:
                    yield key, r.value(), False
                if r.take(",}") == "}":
                    break
            if r.peek():
                raise r.error("extra data after the object")
        except UnicodeDecodeError as err:
            raise InputError(f"{path}: not UTF-8 text ({err})") from None
