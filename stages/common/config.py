"""One configuration mechanism for every stage: typed dataclasses merged with OmegaConf.

Every stage has one dataclass config (``PointsConfig``, ``ProposeConfig``, ``SelectConfig``, ``ExportConfig``,
``EvaluateConfig``, ``TrainSegConfig``, ``BenchSyntheticConfig``). A field's default and its description are
written once, in that dataclass, with :func:`option`; the command line (:mod:`sapnet_cli.options`) builds its
options and ``--help`` from there. :func:`resolve_config` merges, lowest priority first:

1. the dataclass defaults,
2. a YAML/JSON config file (``--config FILE``; a resolved config written by an earlier run is accepted too),
3. the options given on the command line,
4. ``--opts KEY VALUE ...`` pairs (dotted keys for nested fields, values parsed as YAML),

through OmegaConf structured configs, so an unknown key or a value of the wrong type is an
:class:`~stages.common.errors.InputError` naming the key. The stage's ``validate()`` then checks the values
that depend on each other (it never changes them). Every stage writes the configuration it actually ran with
next to its output (:func:`save_resolved_config`), so a result can always be traced back to its settings.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stages import __version__
from stages.common.errors import InputError
from stages.common.io import atomic_write_bytes

T = TypeVar("T")

REQUIRED: Any = dataclasses.MISSING
"""Default of a field that has none: it must come from the config file or the command line."""


def option(
    default: Any = REQUIRED,
    help: str = "",
    *,
    flag: str | None = None,
    choices: Iterable[str] | None = None,
    factory: Callable[[], Any] | None = None,
    from_cli: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A config field that is also a command-line option: its default and help text, written once.

    Args:
        default: the default value (:data:`REQUIRED` when the value must be given).
        help: the ``--help`` text (the default is appended by the command line).
        flag: the option's name(s) when not ``--field-name`` (bools: ``--x/--no-x``, the default form).
        choices: allowed values of a string field (checked by :func:`resolve_config`, listed in ``--help``).
        factory: default factory for mutable defaults (lists).
        from_cli: converts the command-line string to the field value (e.g. a comma-separated list).
        metavar: the value's name in ``--help``.
        cli: False for a setting that only the config file and ``--opts`` change.
    """
    metadata = {
        "help": help,
        "flag": flag,
        "choices": tuple(choices) if choices is not None else None,
        "from_cli": from_cli,
        "metavar": metavar,
        "cli": cli,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------- field tables


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One leaf setting of a config: its dotted key, type and :func:`option` metadata."""

    key: str
    """Dotted path, e.g. ``thresholds.local_iou``."""
    type: Any
    """The resolved annotation (``int | None``, ``tuple[float, ...]``...)."""
    field: dataclasses.Field

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.field.metadata)

    @property
    def help(self) -> str:
        return self.field.metadata.get("help", "")

    @property
    def choices(self) -> tuple[str, ...] | None:
        return self.field.metadata.get("choices")

    @property
    def on_cli(self) -> bool:
        return bool(self.field.metadata.get("cli", False)) and "help" in self.field.metadata

    @property
    def required(self) -> bool:
        return (
            self.field.default is dataclasses.MISSING
            and self.field.default_factory is dataclasses.MISSING
        )

    @property
    def default(self) -> Any:
        if self.field.default is not dataclasses.MISSING:
            return self.field.default
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return None

    @property
    def flag(self) -> str:
        """The option declaration, e.g. ``--batch-size`` or ``--pdg/--no-pdg``."""
        flag = self.field.metadata.get("flag")
        if flag:
            return flag
        dashed = "--" + self.name.replace("_", "-")
        if strip_optional(self.type) is bool:
            return f"{dashed}/--no-{self.name.replace('_', '-')}"
        return dashed

    @property
    def option_name(self) -> str:
        """The first option name, for messages (``--pdg/--no-pdg`` -> ``--pdg``)."""
        return self.flag.split("/")[0]


def strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def fields_of(schema: type, prefix: str = "") -> list[FieldInfo]:
    """Every leaf field of the dataclass ``schema`` (nested dataclasses flattened to dotted keys)."""
    hints = typing.get_type_hints(schema)
    out: list[FieldInfo] = []
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        inner = strip_optional(tp)
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            out += fields_of(inner, prefix=f"{prefix}{f.name}.")
        else:
            out.append(FieldInfo(f"{prefix}{f.name}", tp, f))
    return out


# ------------------------------------------------------------------------------------- config files


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (InputError on a missing or malformed file).

    A resolved config written by an earlier run (``{config: ..., meta: ...}``) gives its ``config`` part, so
    ``--config RUN/config.yaml`` repeats that run's settings.
    """
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
    if set(data) >= {"config", "meta"} and isinstance(data["config"], dict):
        data = data["config"]
    return _normalise_keys(data)


def _normalise_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Config-file keys may be written with dashes, like the options (``batch-size``)."""
    return {
        str(k).replace("-", "_"): (_normalise_keys(v) if isinstance(v, dict) else v)
        for k, v in data.items()
    }


def parse_opts(tokens: list[str]) -> list[tuple[str, str]]:
    """``--opts`` tokens as ``(KEY, VALUE)`` pairs, as detectron2's tools read them.

    Pairs are ``KEY VALUE`` (``--opts SOLVER.BASE_LR 0.02 seed 3``); a ``KEY=VALUE`` token is one pair too.
    InputError when a key has no value.
    """
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        key, eq, value = token.partition("=")
        if eq and key and not key[0].isdigit() and " " not in key:
            pairs.append((key, value))
            i += 1
            continue
        if i + 1 >= len(tokens):
            raise InputError(f"--opts: '{token}' has no value (give KEY VALUE pairs)")
        pairs.append((token, tokens[i + 1]))
        i += 2
    return pairs


# -------------------------------------------------------------------------------------------- merging


def resolve_config(
    schema: type[T],
    config_file: str | Path | None = None,
    cli: dict[str, Any] | None = None,
    opts: list[tuple[str, str]] | None = None,
) -> T:
    """Merge defaults < ``config_file`` < ``cli`` < ``opts`` into a validated ``schema`` instance.

    ``cli`` maps dotted keys to values that were given on the command line (leave out what was not given);
    ``opts`` holds ``(KEY, VALUE)`` string pairs (:func:`parse_opts`), whose values are read as YAML.
    Raises InputError naming the key for unknown keys, wrong types, values outside ``choices`` and
    required settings that no level gave; then runs ``schema.validate()`` if it has one.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    fields = {f.key: f for f in fields_of(schema)}
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((f"config file {config_file}", load_config_file(config_file)))
    if cli:
        layers.append(("the command line", _nest(cli)))
    if opts:
        dotted = OmegaConf.to_container(OmegaConf.from_dotlist([f"{k}={v}" for k, v in opts]))
        layers.append(("--opts", dotted))  # type: ignore[arg-type]

    merged = OmegaConf.structured(schema)
    mappings = [k for k, f in fields.items() if typing.get_origin(strip_optional(f.type)) is dict]
    for source, layer in layers:
        _check_layer(layer, fields, source)
        try:
            for (
                key
            ) in mappings:  # a mapping given at a level replaces the lower level's, like a list
                if _has_key(layer, key):
                    OmegaConf.update(merged, key, {}, merge=False)
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            raise InputError(_omegaconf_message(err, source, fields)) from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        names = ", ".join(f"{k} ({fields[k].option_name})" if k in fields else k for k in missing)
        raise InputError(
            f"missing required setting(s): {names}; give them as options or in --config"
        )
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise InputError(_omegaconf_message(err, "the merged config", fields)) from None
    except (ValueError, TypeError) as err:  # a __post_init__ check of the dataclass
        raise InputError(f"config: {err}") from None
    _restore_tuples(cfg)
    check_choices(cfg)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg  # type: ignore[return-value]


def check_choices(cfg: Any) -> None:
    """InputError naming the key when a field declared with ``choices`` holds another value."""
    for f in fields_of(type(cfg)):
        value = _get(cfg, f.key)
        if f.choices and value is not None and value not in f.choices:
            raise InputError(
                f"{f.key} ({f.option_name}) must be one of {', '.join(f.choices)}; got {value!r}"
            )


def _has_key(data: dict[str, Any], key: str) -> bool:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _flatten(
    data: dict[str, Any], prefix: str = "", leaves: frozenset[str] = frozenset()
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and f"{prefix}{key}" not in leaves:
            out.update(_flatten(value, f"{prefix}{key}.", leaves))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_layer(layer: dict[str, Any], fields: dict[str, FieldInfo], source: str) -> None:
    """Unknown keys and non-bool values for bool fields (OmegaConf would turn 3 into True)."""
    mappings = frozenset(
        k for k, f in fields.items() if typing.get_origin(strip_optional(f.type)) is dict
    )
    for key, value in _flatten(layer, leaves=mappings).items():
        info = fields.get(key)
        if info is None:
            if any(k.startswith(key + ".") for k in fields) and value in ({}, None):
                continue
            near = [k for k in fields if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise InputError(
                f"unknown setting '{key}' in {source}{hint}; known: {', '.join(sorted(fields))}"
            )
        if strip_optional(info.type) is bool and not isinstance(value, bool):
            if not (value is None and info.type is not bool):
                raise InputError(f"{key} in {source} must be true or false; got {value!r}")


def _omegaconf_message(err: Any, source: str, fields: dict[str, FieldInfo]) -> str:
    key = getattr(err, "full_key", None) or "?"
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    flag = f" ({fields[key].option_name})" if key in fields else ""
    return f"{key}{flag} in {source}: {first}"


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _restore_tuples(cfg: Any) -> None:
    """OmegaConf returns lists for ``tuple`` fields; give the dataclass its tuples back."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _restore_tuples(value)
        elif isinstance(value, list) and typing.get_origin(strip_optional(hints[f.name])) is tuple:
            object.__setattr__(cfg, f.name, _to_tuple(value))


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value


# ------------------------------------------------------------------------------------------- saving


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-friendly dict (paths become strings, tuples lists)."""
    raw = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return json.loads(json.dumps(raw, default=str))


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
    """Write ``cfg`` (plus metadata and ``extra``) as YAML to ``path`` atomically; returns the path.

    The file can be given back with ``--config`` to repeat the run (its ``config`` part is read).
    """
    doc = {"config": config_to_dict(cfg), "meta": run_metadata(), **extra}
    text = yaml.safe_dump(json.loads(json.dumps(doc, default=str)), sort_keys=False)
    atomic_write_bytes(path, text.encode("utf-8"))
    return Path(path)


def sidecar_config_path(output: str | Path) -> Path:
    """Where the resolved config of a single-file output lives: ``OUT.json`` -> ``OUT.config.yaml``."""
    output = Path(output)
    return output.with_name(output.stem + ".config.yaml")
