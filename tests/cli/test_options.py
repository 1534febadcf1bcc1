"""Options come from the stage configs: defaults written once, --config / --opts on every command."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer
import yaml

from sapnet_cli.app import app, main
from sapnet_cli.options import cli_fields
from stages.common.config import fields_of
from stages.export.config import EvaluateConfig, ExportConfig
from stages.points.run import PointsConfig
from stages.propose.run import ProposeConfig
from stages.review.config import MergeConfig, ReviewConfig
from stages.seg.config import TrainSegConfig
from stages.select.config import SelectConfig
from stages.synthetic.ablation import BenchSyntheticConfig

COMMANDS = {
    "points": PointsConfig,
    "propose": ProposeConfig,
    "select": SelectConfig,
    "export-pseudo": ExportConfig,
    "evaluate": EvaluateConfig,
    "train-seg": TrainSegConfig,
    "bench-synthetic": BenchSyntheticConfig,
    "review": ReviewConfig,
    "merge-corrections": MergeConfig,
}
COCO4 = Path(__file__).resolve().parents[1] / "fixtures" / "coco4" / "annotations.json"


@pytest.mark.parametrize("name", COMMANDS)
def test_option_defaults_are_the_config_defaults(name):
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    params = {p.name: p for p in command.params}
    assert "config" in params and "opts" in params
    for info in cli_fields(COMMANDS[name]):
        param = params[info.key.replace(".", "__")]
        if info.required or isinstance(info.default, tuple | list | dict):
            continue
        expected = info.default
        if info.meta.get("from_cli") is not None and expected is not None:
            expected = str(expected)
        assert param.default == expected, info.key
        assert info.help and param.help.startswith(info.help), info.key


def test_points_config_file_options_and_opts(tmp_path, capsys):
    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text(f"annotations: {COCO4}\nseed: 3\nprogress: false\n")
    out = tmp_path / "p.json"

    def run(*extra: str) -> dict:
        with pytest.raises(SystemExit) as exc:
            main(["points", "--config", str(cfg_file), "--out", str(out), *extra])
        assert exc.value.code == 0
        return yaml.safe_load((tmp_path / "p.config.yaml").read_text())["config"]

    assert run()["seed"] == 3  # the file, not the option's default
    assert run("--seed", "4")["seed"] == 4  # the command line wins
    resolved = run("--seed", "4", "--opts", "seed", "5", "mode", "center")
    assert resolved["seed"] == 5 and resolved["mode"] == "center"
    # the saved config repeats the run
    saved = tmp_path / "p.config.yaml"
    with pytest.raises(SystemExit) as exc:
        main(["points", "--config", str(saved)])
    assert exc.value.code == 0
    capsys.readouterr()


def test_errors_name_the_key(tmp_path, capsys):
    def err(*args: str) -> str:
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        assert exc.value.code == 2
        return capsys.readouterr().err

    assert "annotations (--annotations)" in err("points", "--out", str(tmp_path / "o.json"))
    text = err("points", "--annotations", str(COCO4), "--out", "o.json", "--opts", "sed", "1")
    assert "unknown setting 'sed'" in text
    text = err("points", "--annotations", str(COCO4), "--out", "o.json", "--mode", "x")
    assert "mode (--mode) must be one of" in text
    text = err("select", "--store", "s", "--images", "i", "--out", "o", "--opts", "batch_size", "x")
    assert "batch_size (--batch-size)" in text
    text = err(
        "select", "--store", "s", "--images", "i", "--out", "o", "--epochs", "1", "--iters", "2"
    )
    assert "not both" in text


@pytest.mark.parametrize("name", COMMANDS)
def test_help_lists_file_only_settings_with_defaults(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    hidden = [f for f in dataclasses.fields(COMMANDS[name]) if "help" not in f.metadata]
    for f in hidden:
        if any(info.key.startswith(f.name + ".") for info in fields_of(COMMANDS[name])):
            continue  # a nested config: its own fields are listed
        assert f"{f.name}=" in text, f.name
