"""File helpers shared by all stages: atomic writes, JSON loading with clear errors, checksums, images."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stages.common.errors import InputError, OutputError

log = logging.getLogger(__name__)

SHA256_MEMO: dict[tuple[str, int, int], str] = {}
"""Digests already computed, keyed by (resolved path, size, mtime in ns): a changed file is hashed again."""


def _sha256_key(p: Path) -> tuple[str, int, int]:
    st = p.stat()
    return (str(p.resolve()), st.st_size, st.st_mtime_ns)


def remember_sha256(path: str | Path, digest: str) -> None:
    """Record the digest of a file just written (hashed while writing), so `sha256_file` does not read it."""
    SHA256_MEMO[_sha256_key(Path(path))] = digest


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks (memoised on path, size and modification time)."""
    p = Path(path)
    key = _sha256_key(p)
    if key not in SHA256_MEMO:
        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            while block := fh.read(chunk_size):
                digest.update(block)
        SHA256_MEMO[key] = digest.hexdigest()
    return SHA256_MEMO[key]


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


# ----------------------------------------------------------------------------- atomic writes
#
# A writer creates ``.<name>.<host>.<pid>.<random>.tmp`` next to the target, writes and fsyncs it, gives it the
# mode a plain ``open`` would (0666 & ~umask) and renames it over the target. A process killed in between leaves
# its temporary file behind; the next writer of the same target removes it when it is provably stale: written on
# this host by a process that no longer runs, or (other hosts of a shared folder, temporaries of older sapnet
# versions) untouched for ``STALE_TEMP_AGE_S``. A live concurrent writer's temporary file is never removed.

STALE_TEMP_AGE_S = 24 * 3600.0
_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
_cleaned: set[tuple[str, str]] = set()
_dot_entries: dict[str, list[Path]] = {}
"""Per folder, its hidden entries when this process first cleaned there (one listing per folder, not per
target: writing N files into one folder would otherwise list it N times)."""


def temp_name(name: str, kind: str = "tmp") -> str:
    """A fresh temporary name for target ``name`` that records this host and process id."""
    return f".{name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:
        return False
    return True


def is_stale_temp(entry: Path, name: str, now: float | None = None) -> bool:
    """Whether ``entry`` is a temporary of target ``name`` whose writer is gone (see the section comment).

    Recognised: ``.NAME.HOST.PID.RAND.tmp`` (this version, files and folders), ``.NAME.XXXXXXXX.tmp``
    (older files), ``.NAME.tmp-XXXXXXXX`` (older store folders), ``.NAME.trash-PID`` (stores being removed).
    """
    base = entry.name
    prefix = f".{name}."
    if not base.startswith(prefix):
        return False
    rest = base[len(prefix) :]
    try:
        age = (time.time() if now is None else now) - entry.lstat().st_mtime
    except FileNotFoundError:
        return False
    old = age > STALE_TEMP_AGE_S
    host = pid = None
    if rest.endswith((".tmp", ".trash")) and rest.count(".") >= 3:
        parts = rest.rsplit(".", 3)  # host may itself hold dots in foreign names
        host, pid_s = parts[0], parts[1]
        pid = int(pid_s) if pid_s.isdigit() else None
    elif rest.startswith("trash-") and rest[6:].isdigit():
        host, pid = _HOST, int(rest[6:])
    elif re.fullmatch(r"[A-Za-z0-9_]{8}\.tmp|tmp-[0-9a-f]{8}", rest):
        return old  # an older sapnet's temporary: no owner recorded
    else:
        return False
    if host == _HOST and pid is not None:
        return not _pid_alive(pid) or old
    return old


def clean_stale_temps(folder: str | Path, name: str, force: bool = False) -> list[Path]:
    """Remove the stale temporaries of target ``name`` in ``folder`` (once per process unless ``force``).

    The folder is listed once per process (``force`` lists it again): temporaries that appear later belong to
    writers that were alive after this process started, and a later run cleans them.

    Returns the removed paths. Never raises: cleaning is best effort.
    """
    folder = Path(folder)
    where = str(folder.absolute())
    key = (where, name)
    if key in _cleaned and not force:
        return []
    _cleaned.add(key)
    removed: list[Path] = []
    try:
        if force or where not in _dot_entries:
            _dot_entries[where] = [e for e in folder.iterdir() if e.name.startswith(".")]
    except OSError:
        return removed
    entries = [e for e in _dot_entries[where] if e.name.startswith(f".{name}.")]
    for entry in entries:
        if not is_stale_temp(entry, name):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
            log.info("removed a stale temporary file left by an interrupted run: %s", entry)
        except OSError:
            continue
    return removed


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_error(path: str | Path, err: OSError, what: str = "output") -> OutputError:
    """An :class:`OutputError` naming ``path`` and the reason of ``err`` in plain words."""
    reasons = {
        errno.ENOSPC: "no space left on the device (disk full)",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied (the folder is not writable)",
        errno.EPERM: "operation not permitted",
        errno.EISDIR: "it is a directory, expected a file path",
        errno.ENOTDIR: "a parent of it is a file, not a folder",
        errno.EEXIST: "it exists and is not a folder",
        errno.ENAMETOOLONG: "the name is too long",
    }
    reason = reasons.get(err.errno or -1, err.strerror or str(err))
    return OutputError(f"cannot write {what} {path}: {reason}")


def ensure_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create folder ``path`` (and parents); OutputError naming it when it cannot be (a file, read-only...)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot write {what} {path}: a parent of it is a file") from None
    except OSError as err:
        raise output_error(path, err, what) from None
    return path


def check_output_path(path: str | Path, kind: str = "file", what: str = "output") -> Path:
    """OutputError unless ``path`` can become a file (``kind="file"``) or folder (``"dir"``); creates nothing.

    Stages call it for every output before doing any work, so a wrong ``--out`` (a directory where a file is
    meant, a file in the way of a folder, a read-only location) fails at once and before any output is written.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if kind == "file" and path.is_dir():
            raise OutputError(
                f"cannot write {what} {path}: it is a directory, expected a file path"
            )
        if kind == "dir" and not path.is_dir():
            raise OutputError(f"cannot write {what} {path}: it exists and is not a folder")
    chain = ([path.absolute()] if kind == "dir" else []) + list(path.absolute().parents)
    for folder in chain:
        if folder.exists():
            if not folder.is_dir():
                raise OutputError(f"cannot write {what} {path}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OutputError(
                    f"cannot write {what} {path}: the folder {folder} is not writable "
                    "(read-only file system or permission denied)"
                )
            break
    return path


def _check_target(path: Path) -> None:
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory, expected a file path")
    if path.exists() and not path.is_file():
        raise OutputError(f"cannot write {path}: it exists and is not a regular file")


def _write_temp(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path``'s content into a fresh fsynced temporary next to it (mode 0666 & ~umask); returns it."""
    _check_target(path)
    ensure_dir(path.parent, "output folder")
    clean_stale_temps(path.parent, path.name)
    tmp = path.parent / temp_name(path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise output_error(path, err) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            os.fsync(fh.fileno())
    except BaseException as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise output_error(path, exc) from None
        raise
    return tmp


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a temporary file in the same folder as ``path``, fsync, then rename it over ``path``.

    A failure at any point removes the temporary file and leaves ``path`` as it was (absent or the old file),
    never a partial file. ``write`` streams, so large outputs need not fit in memory as one string. The file
    gets mode ``0666 & ~umask`` like a plain ``open``; stale temporaries of killed writers are removed (see
    :func:`is_stale_temp`). OS errors (disk full, read-only folder, a directory in the way) raise
    :class:`OutputError` naming ``path``.
    """
    atomic_write_many([(Path(path), write)])


def atomic_write_many(items: list[tuple[Path, Callable[[IO[bytes]], None]]]) -> None:
    """Write several files as one unit: every temporary first, then the renames.

    If any file cannot be written (disk full, permissions...) no target is touched and every temporary is
    removed, so a set of outputs is never a mix of old and new files.
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for path, write in items:
            temps.append((Path(path), _write_temp(Path(path), write)))
        for path, tmp in temps:
            try:
                os.replace(tmp, path)
            except OSError as err:
                raise output_error(path, err) from None
        for folder in {path.parent for path, _ in temps}:
            _fsync_dir(folder)
    except BaseException:
        for _, tmp in temps:
            if tmp.exists():
                _unlink_quietly(tmp)
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
    atomic_write(path, json_writer(obj, indent, compact))


def json_writer(
    obj: Any, indent: int | None = None, compact: bool = False
) -> Callable[[IO[bytes]], None]:
    """A ``write(fh)`` callback streaming ``obj`` as UTF-8 JSON (for :func:`atomic_write_many`)."""
    separators = (",", ":") if compact else None

    def write(fh: IO[bytes]) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", write_through=True)
        json.dump(obj, text, indent=indent, separators=separators, default=json_default)
        text.flush()
        text.detach()

    return write


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


EXIF_ORIENTATION_TAG = 0x0112


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 (as stored) when absent or unreadable."""
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # broken EXIF blocks raise several types; treat as "as stored"
        return 1
    return value if 1 <= value <= 8 else 1


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB, upright: its EXIF orientation is applied.

    Every stage reads images through this function and detectron2's ``read_image`` (train-seg) applies the
    same EXIF orientation, so ``height``/``width`` in the JSON files and every mask refer to the upright image.
    Missing or undecodable files raise InputError.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file missing: {path}")
    try:
        with Image.open(path) as img:
            if exif_orientation(img) != 1:
                img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"image file {path} cannot be decoded: {err}") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of the upright image (EXIF orientation applied) from the file header only.

    Raises InputError for a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file missing: {path}")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if exif_orientation(img) in (5, 6, 7, 8):  # transposed or rotated by 90/270 degrees
                w, h = h, w
    except Exception as err:  # PIL raises several types for broken headers
        raise InputError(f"image file {path} cannot be read: {err}") from None
    return h, w
