"""docs/commands.md's option tables agree with the options (names exist, simple defaults match)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from sapnet_cli.app import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "commands.md"
SECTION = re.compile(r"^## `sapnet ([\w-]+)`")
ROW = re.compile(r"^\| `(--[\w-]+)(?:/--[\w-]+)?[^`]*` \| ([^|]*) \|")


def _tables() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    command = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if m := SECTION.match(line):
            command = m.group(1)
            out[command] = {}
        elif command and (m := ROW.match(line)):
            out[command][m.group(1)] = m.group(2).strip()
    return out


def _default_text(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def test_documented_options_exist_and_simple_defaults_match():
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    tables = _tables()
    compared = 0
    assert set(tables) >= {"points", "propose", "select", "export-pseudo", "evaluate", "train-seg"}
    for name, rows in tables.items():
        params = {o: p for p in commands[name].params for o in [*p.opts, *p.secondary_opts]}
        for option, default in rows.items():
            assert option in params, f"{name} {option} is documented but does not exist"
            param = params[option]
            simple = re.fullmatch(r"`?([\w.%-]+)`?", default)
            if simple is None or param.default is None or isinstance(param.default, tuple | list):
                continue
            if option.startswith("--no-") and isinstance(param.default, bool):
                continue
            assert simple.group(1) == _default_text(param.default), (name, option, default)
            compared += 1
    assert compared >= 30  # the check must actually compare something
