"""File helpers shared by all stages: atomic writes, JSON loading with clear errors, checksums, images."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from stages.common.errors import InputError


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def load_json(path: str | Path, what: str = "JSON file") -> Any:
    """Load a JSON file; unreadable or invalid files raise InputError naming the file and the position."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory, expected a file") from None
    except PermissionError:
        raise InputError(f"{what} {path} is not readable (permission denied)") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {path} is not UTF-8 text: {err}") from None
    except json.JSONDecodeError as err:
        raise InputError(
            f"{what} {path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a temporary file in the same folder as ``path``, fsync, then rename it over ``path``.

    A failure at any point removes the temporary file and leaves ``path`` as it was (absent or the old file),
    never a partial file. ``write`` streams, so large outputs need not fit in memory as one string.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(
    path: str | Path, obj: Any, indent: int | None = None, compact: bool = False
) -> None:
    """Stream ``obj`` as UTF-8 JSON (NumPy scalars allowed) into ``path`` atomically.

    ``compact`` drops the spaces after separators (smaller files, e.g. large pseudo-label JSONs).
    """
    separators = (",", ":") if compact else None

    def write(fh: IO[bytes]) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", write_through=True)
        json.dump(obj, text, indent=indent, separators=separators, default=_json_default)
        text.flush()
        text.detach()

    atomic_write(path, write)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB; missing or undecodable files raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file missing: {path}")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"image file {path} cannot be decoded: {err}") from None
