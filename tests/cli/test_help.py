import re

import pytest

from sapnet_cli.app import main

COMMANDS = [
    "points",
    "propose",
    "select",
    "export-pseudo",
    "evaluate",
    "train-seg",
    "bench-synthetic",
]


def _help(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*args, "--help"])
    assert exc.value.code == 0
    return re.sub(r"\s+", " ", capsys.readouterr().out)


def test_root_help_lists_every_subcommand(capsys):
    text = _help([], capsys)
    for name in COMMANDS:
        assert f" {name} " in text, name


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help_text(name, capsys):
    text = _help([name], capsys)
    # each "--option" line is followed by a description (no bare option lists)
    assert "--help Show this message and exit." in text
    assert "Not implemented" not in text


def test_brackets_in_help_are_not_eaten_as_markup(capsys):
    assert "'point': [x, y]" in _help(["points"], capsys)
