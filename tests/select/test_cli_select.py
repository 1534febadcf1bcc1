"""`sapnet select` on the command line: options reach run_select, the summary, and error exit codes."""

from __future__ import annotations

import pytest
import yaml

from sapnet_cli.app import main
from stages.common.selections import load_selections
from tests.select.synth import TINY_MODEL


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(["select", *argv])
    return int(exc.value.code)


def _config_file(tmp_path) -> str:
    keys = ("fpn_channels", "fc_dim", "warmup_iters", "num_negatives", "progress")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({k: TINY_MODEL[k] for k in keys}))
    return str(path)


def test_cli_trains_and_predicts(synth, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "--store", str(synth.store), "--images", str(synth.images_dir), "--out", str(out),
        "--config", _config_file(tmp_path), "--backbone", "resnet18", "--weights", "none",
        "--iters", "2", "--batch-size", "2", "--lr", "0.01", "--short-side", "64", "--max-size", "96",
        "--device", "cpu", "--no-bms", "--no-pnpg", "--seed", "3", "--num-workers", "0",
    ]  # fmt: skip
    assert _run(argv) == 0
    text = capsys.readouterr().out
    assert "objects on 6 images, 2 iterations" in text and "selections:" in text
    sel = load_selections(out)
    assert sel.meta["config"]["use_bms"] is False and sel.meta["config"]["use_ppg"] is False
    assert sel.meta["config"]["seed"] == 3 and sel.meta["config"]["backbone"] == "resnet18"
    resolved = yaml.safe_load((out / "config.yaml").read_text())["config"]
    assert (
        resolved["fpn_channels"] == 64 and resolved["lr"] == 0.01 and resolved["num_workers"] == 0
    )

    again = tmp_path / "again"
    argv2 = [
        "--store", str(synth.store), "--images", str(synth.images_dir), "--out", str(again),
        "--config", _config_file(tmp_path), "--predict-only", "--checkpoint", str(out / "selector.pt"),
        "--short-side", "64", "--max-size", "96", "--device", "cpu", "--no-bms", "--no-pnpg",
        "--num-workers", "0",
    ]  # fmt: skip
    assert _run(argv2) == 0
    assert (load_selections(again).final_index == sel.final_index).all()


def test_cli_errors_have_exit_codes(synth, tmp_path, capsys):
    base = [
        "--store",
        str(synth.store),
        "--images",
        str(synth.images_dir),
        "--out",
        str(tmp_path / "r"),
    ]
    assert _run([*base, "--epochs", "1", "--iters", "2"]) == 2
    assert "not both" in capsys.readouterr().err
    assert _run([*base, "--backbone", "vgg"]) == 2
    assert _run(["--store", str(tmp_path / "none.zarr"), "--images", "x", "--out", "y"]) == 3
    assert _run([*base, "--predict-only"]) == 2
