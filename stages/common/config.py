"""Typed stage configs: conversion to plain dicts, config files (YAML/JSON) and saving the resolved config.

Every stage writes the configuration it actually ran with next to its output, so a result can always be traced
back to its settings.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

import yaml

from stages import __version__
from stages.common.errors import InputError
from stages.common.io import atomic_write_bytes


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-friendly dict (paths become strings, tuples lists)."""
    raw = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return json.loads(json.dumps(raw, default=str))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (InputError on a missing or malformed file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"config file {path} is not valid YAML/JSON: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping of option names to values")
    return data


def apply_overrides(cfg: Any, overrides: dict[str, Any], source: str = "config file") -> Any:
    """Return a copy of dataclass ``cfg`` with ``overrides`` applied; unknown keys raise InputError."""
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InputError(
            f"unknown option(s) in {source}: {', '.join(unknown)}; known: {sorted(names)}"
        )
    return dataclasses.replace(cfg, **overrides)


def run_metadata() -> dict[str, Any]:
    """Version and environment facts recorded beside every output."""
    import torch

    return {
        "sapnet_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def save_resolved_config(cfg: Any, path: str | Path, **extra: Any) -> Path:
    """Write ``cfg`` (plus metadata and ``extra``) as YAML to ``path`` atomically; returns the path."""
    doc = {"config": config_to_dict(cfg), "meta": run_metadata(), **extra}
    text = yaml.safe_dump(json.loads(json.dumps(doc, default=str)), sort_keys=False)
    atomic_write_bytes(path, text.encode("utf-8"))
    return Path(path)


def sidecar_config_path(output: str | Path) -> Path:
    """Where the resolved config of a single-file output lives: ``OUT.json`` -> ``OUT.config.yaml``."""
    output = Path(output)
    return output.with_name(output.stem + ".config.yaml")
