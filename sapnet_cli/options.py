"""Command-line options built from a stage's typed config: one declaration per setting, in the config.

:func:`config_command` turns a dataclass config (fields declared with :func:`stages.common.config.option`)
into a Typer command: one option per field (name, type, default and help text taken from the field), plus
``--config FILE`` and ``--opts KEY VALUE ...``. Only the options actually given on the command line override
the config file (click's parameter source tells them apart from defaults), and
:func:`stages.common.config.resolve_config` does the merging and the checks.

To add a setting to a stage, add a field to its config with ``option(default, "help")``; nothing here changes.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperCommand

from stages.common.config import FieldInfo, fields_of, parse_opts, resolve_config, strip_optional

OPTS = "--opts"

CONFIG_HELP = (
    "YAML/JSON file with any of this command's settings (the keys of the config.yaml it writes; a saved "
    "config.yaml repeats that run). Options given on the command line win over the file."
)
OPTS_HELP = (
    "Settings as KEY VALUE pairs (or KEY=VALUE), applied after everything else, as in detectron2's tools; "
    "everything after --opts is read as pairs, so put it last. Keys are the config keys (dotted for "
    "nested ones), e.g. --opts warmup_iters 100."
)


class SapnetCommand(TyperCommand):
    """A Typer command whose ``--opts`` takes every token after it (argparse ``REMAINDER``, as detectron2).

    ``--opts A 1 B -2`` is rewritten to ``--opts=A --opts=1 --opts=B --opts=-2`` before click parses it, so
    negative numbers and values that look like options reach the list unchanged.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if OPTS in args:
            i = args.index(OPTS)
            rest = [t for t in args[i + 1 :] if t != OPTS]
            args = [*args[:i], *(f"{OPTS}={t}" for t in rest)]
        return super().parse_args(ctx, args)


def _param_name(key: str) -> str:
    return key.replace(".", "__")


def _cli_type(info: FieldInfo) -> Any:
    """The Python type Typer parses the option's value as."""
    if info.meta.get("from_cli") is not None:
        return Optional[str]  # noqa: UP045 - Typer reads typing.Optional
    inner = strip_optional(info.type)
    origin = typing.get_origin(inner)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(inner) if a is not Ellipsis]
        return Optional[list[args[0] if args else str]]  # noqa: UP045
    if inner is bool and info.required is False and info.default is not None:
        return bool
    return Optional[inner]  # noqa: UP045


def _show_default(info: FieldInfo) -> bool | str:
    if info.required:
        return False
    value = info.default
    if value is None or value in ((), [], ""):
        return False
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()
        )
    return True


def _option(info: FieldInfo) -> Any:
    help_text = info.help
    if info.required:
        help_text += " [required: here or in --config]"
    elif info.choices and not all(c in help_text for c in info.choices):
        help_text += f" One of: {', '.join(info.choices)}."
    default = (
        None if info.required or isinstance(info.default, tuple | list | dict) else info.default
    )
    if info.meta.get("from_cli") is not None and default is not None:
        default = str(default)
    return typer.Option(
        default,
        *info.flag.split(" "),
        help=help_text,
        show_default=_show_default(info),
        **({"metavar": info.meta["metavar"]} if info.meta.get("metavar") else {}),
    )


def cli_fields(schema: type) -> list[FieldInfo]:
    """The fields of ``schema`` that are command-line options, in declaration order."""
    return [f for f in fields_of(schema) if f.on_cli]


def _format_default(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_format_default(v) for v in value) + "]"
    return "null" if value is None else str(value)


def file_only_epilog(schema: type) -> str:
    """The settings of ``schema`` without an option, with their defaults, for the end of ``--help``."""
    rest = [f for f in fields_of(schema) if not f.on_cli and not f.required]
    if not rest:
        return ""
    listed = ", ".join(f"{f.key}={_format_default(f.default)}" for f in rest)
    return f"\n\nSettings for --config / --opts only (defaults): {listed}."


def config_command(
    schema: type,
    run: Callable[..., None],
    *,
    doc: str,
    extra: dict[str, tuple[Any, Any]] | None = None,
    prepare: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    passthrough_opts: str | None = None,
) -> Callable[..., None]:
    """A Typer command function for ``schema``: ``run(cfg)`` (or ``run(cfg, **extras)``) on the merged config.

    Args:
        schema: the stage's dataclass config.
        run: called with the resolved config (and the values of ``extra`` options, by name).
        doc: the command's help text.
        extra: more options that are not config fields: ``{name: (annotation, typer.Option(...))}``; their
            values go to ``prepare`` (and to ``run`` when ``prepare`` is None).
        prepare: ``prepare(given, extras)`` may edit ``given`` (dotted key -> value of the options given on
            the command line) before merging, for options that set several fields.
        passthrough_opts: name of a list field that takes the ``--opts`` pairs whose key is not a setting of
            ``schema`` (train-seg: detectron2 keys such as ``SOLVER.BASE_LR``).
    """
    infos = cli_fields(schema)
    top_level = {f.name for f in schema.__dataclass_fields__.values()}  # type: ignore[attr-defined]
    extra = extra or {}

    params = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
    ]
    annotations: dict[str, Any] = {"ctx": typer.Context, "return": None}
    for info in infos:
        name = _param_name(info.key)
        annotations[name] = _cli_type(info)
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=_option(info),
                annotation=annotations[name],
            )
        )
    for name, (annotation, default) in extra.items():
        annotations[name] = annotation
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
            )
        )
    annotations["config"] = Optional[Path]  # noqa: UP045
    params.append(
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", help=CONFIG_HELP, metavar="FILE"),
            annotation=annotations["config"],
        )
    )
    annotations["opts"] = Optional[list[str]]  # noqa: UP045
    params.append(
        inspect.Parameter(
            "opts",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, OPTS, help=OPTS_HELP, metavar="KEY VALUE ..."),
            annotation=annotations["opts"],
        )
    )

    def command(ctx: typer.Context, **kwargs: Any) -> None:
        given: dict[str, Any] = {}
        for info in infos:
            name = _param_name(info.key)
            source = ctx.get_parameter_source(name)
            # by name: typer may vendor its own copy of click and of this enum
            if getattr(source, "name", None) not in ("COMMANDLINE", "ENVIRONMENT"):
                continue
            value = kwargs[name]
            convert = info.meta.get("from_cli")
            if convert is not None and value is not None:
                value = convert(value)
            given[info.key] = value
        extras = {name: kwargs[name] for name in extra}
        if prepare is not None:
            prepare(given, extras)
        pairs = parse_opts(list(kwargs.get("opts") or []))
        if passthrough_opts is not None:
            passed = [p for p in pairs if p[0].split(".")[0] not in top_level]
            pairs = [p for p in pairs if p[0].split(".")[0] in top_level]
            if passed:
                given[passthrough_opts] = [t for pair in passed for t in pair]
        cfg = resolve_config(schema, kwargs.get("config"), given, pairs)
        if prepare is None and extras:
            run(cfg, **extras)
        else:
            run(cfg)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    command.__doc__ = doc + file_only_epilog(schema)
    command.__name__ = getattr(run, "__name__", "command")
    return command
