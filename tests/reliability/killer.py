"""Run the sapnet CLI and ``kill -9`` it at a chosen moment (a test helper, never part of the product).

Usage: ``python -m tests.reliability.killer MOMENT -- sapnet arguments...`` where MOMENT is

- ``create:PATTERN[:K]``: the K-th time (default 1) a file whose path contains PATTERN is created or opened for
  writing, right after the open (the file exists, 0 bytes written): "killed while writing it";
- ``rename:PATTERN[:K]``: the K-th time a file is renamed onto a path containing PATTERN, just before the
  rename (a writer's data is complete but not committed);
- ``never``: run without killing (the uninterrupted reference).

The process kills itself with SIGKILL, which no handler, ``finally`` block or atexit hook can intercept: the
same as ``kill -9`` from outside at that instant, but reproducible.
"""

from __future__ import annotations

import builtins
import io
import os
import signal
import sys

_counts: dict[str, int] = {}


def _hit(kind: str, pattern: str, k: int, path: object) -> None:
    try:
        text = os.fsdecode(path)  # type: ignore[arg-type]
    except TypeError:
        return
    if pattern not in text:
        return
    _counts[kind] = _counts.get(kind, 0) + 1
    if _counts[kind] == k:
        sys.stderr.write(f"killer: SIGKILL at {kind} of {text}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def install(moment: str) -> None:
    if moment == "never":
        return
    kind, _, rest = moment.partition(":")
    pattern, _, k_text = rest.partition(":")
    k = int(k_text) if k_text else 1
    if kind == "create":
        real_open, real_os_open = builtins.open, os.open

        def open_(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            if isinstance(mode, str) and any(c in mode for c in "wax+"):
                _hit(kind, pattern, k, file)
            return fh

        def os_open(path, flags, *args, **kwargs):
            fd = real_os_open(path, flags, *args, **kwargs)
            if flags & (os.O_WRONLY | os.O_RDWR):
                _hit(kind, pattern, k, path)
            return fd

        builtins.open = open_
        io.open = open_  # pathlib (zarr's chunk writes) opens through io.open
        os.open = os_open
    elif kind == "rename":
        real_replace, real_rename = os.replace, os.rename

        def replace(src, dst, *args, **kwargs):
            _hit(kind, pattern, k, dst)
            return real_replace(src, dst, *args, **kwargs)

        def rename(src, dst, *args, **kwargs):
            _hit(kind, pattern, k, dst)
            return real_rename(src, dst, *args, **kwargs)

        os.replace = replace
        os.rename = rename
    else:
        raise SystemExit(f"killer: unknown moment {moment!r}")


if __name__ == "__main__":
    moment, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: killer MOMENT -- ARGS..."
    install(moment)
    from sapnet_cli.app import main

    main(args)
