"""`sapnet train-seg` end to end on CPU: a few iterations on the 2-image fixture, resume, eval-only, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sapnet_cli.app import main
from stages.seg.d2 import compat

if not compat.detectron2_available():
    pytest.skip("detectron2 is not installed (run `make install`)", allow_module_level=True)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "seg"
IMAGES = str(FIXTURES / "images")
PSEUDO = str(FIXTURES / "pseudo.json")
GT = str(FIXTURES / "gt.json")
# A tiny network (R18, 64-channel FPN and heads) so that a CPU iteration takes about a second; thresholds at
# 0 so that the evaluation sees predictions.
TINY_OPTS = [
    "DATALOADER.NUM_WORKERS", "0", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.BACKBONE.FREEZE_AT", "5", "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.SOLOV2.INSTANCE_IN_CHANNELS", "64", "MODEL.SOLOV2.MASK_IN_CHANNELS", "64",
    "MODEL.SOLOV2.INSTANCE_CHANNELS", "64", "MODEL.SOLOV2.NUM_INSTANCE_CONVS", "1",
    "MODEL.SOLOV2.MASK_CHANNELS", "32", "MODEL.SOLOV2.NUM_MASKS", "64", "MODEL.SOLOV2.NUM_KERNELS", "64",
    "MODEL.SOLOV2.SCORE_THR", "0.0", "MODEL.SOLOV2.UPDATE_THR", "0.0", "MODEL.SOLOV2.NMS_PRE", "50",
    "MODEL.SOLOV2.MAX_PER_IMG", "20",
]  # fmt: skip
SMALL = ["--ims-per-batch", "2", "--min-size", "128", "--max-size", "192", "--device", "cpu"]


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(["train-seg", *args])
    return int(exc.value.code or 0)


def training_iterations(metrics: Path) -> list[int]:
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [r["iteration"] for r in lines if "total_loss" in r]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg") / "run"
    code = run_cli(
        ["--train", PSEUDO, "--images", IMAGES, "--out", str(out), "--val", GT, "--iters", "2"]
        + SMALL
        + ["--opts", *TINY_OPTS]
    )
    assert code == 0
    return out


def test_training_writes_the_outputs(trained: Path) -> None:
    for name in (
        "model_final.pth", "config.yaml", "sapnet-config.yaml", "metrics.json", "log.txt",
        "last_checkpoint",
    ):  # fmt: skip
        assert (trained / name).is_file(), name
    config = (trained / "config.yaml").read_text()
    assert "META_ARCHITECTURE: SOLOv2" in config and "NUM_CLASSES: 6" in config
    assert "MAX_ITER: 2" in config and "MIN_SIZE_TEST: 128" in config
    assert training_iterations(trained / "metrics.json") == [1]
    assert torch.load(trained / "model_final.pth", weights_only=False)["iteration"] == 1
    record = json.loads((trained / "eval" / "coco_eval.json").read_text())
    assert record["dataset"] == GT and record["iterations"] == 2
    for task in ("segm", "bbox"):
        metrics = record["metrics"][task]
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(metrics)
        assert all(v is None or 0.0 <= v <= 100.0 for v in metrics.values())
    md = (trained / "eval" / "coco_eval.md").read_text()
    assert "| task | AP | AP50 | AP75 | APs | APm | APl |" in md
    assert "| segm |" in md and "| bbox |" in md
    results = json.loads((trained / "eval" / "coco_instances_results.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 15, 31, 36, 62, 77}


def test_resume_continues_the_iteration_count(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    code = run_cli(
        ["--train", PSEUDO, "--images", IMAGES, "--out", str(out), "--iters", "4", "--resume"]
        + SMALL
        + ["--opts", *TINY_OPTS]
    )
    assert code == 0
    assert training_iterations(out / "metrics.json") == [1, 3]  # 0-1, then 2-3
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 3
    assert "Starting training from iteration 2" in (out / "log.txt").read_text()


def test_eval_only(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval_run"
    code = run_cli(
        ["--train", PSEUDO, "--images", IMAGES, "--out", str(out), "--val", GT, "--eval-only"]
        + ["--checkpoint", str(trained / "model_final.pth")]
        + SMALL
        + ["--opts", *TINY_OPTS]
    )
    assert code == 0
    record = json.loads((out / "eval" / "coco_eval.json").read_text())
    assert record["checkpoint"] == str(trained / "model_final.pth") and record["iterations"] is None
    assert not (out / "model_final.pth").exists()
    printed = capsys.readouterr().out
    assert "train-seg (eval-only)" in printed and "segm: AP" in printed


def test_input_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["--train", PSEUDO, "--images", str(tmp_path), "--out", str(tmp_path / "o")]
    assert run_cli(base + ["--device", "cpu"]) == 2  # images missing
    assert "image files missing" in capsys.readouterr().err
    base[3] = IMAGES
    assert run_cli(base + ["--eval-only", "--val", GT, "--device", "cpu"]) == 2
    assert "model_final.pth does not exist" in capsys.readouterr().err
    assert run_cli(base + ["--opts", "SOLVER.BASE_LR"]) == 2


def test_opts_split_between_sapnet_and_detectron2(tmp_path: Path) -> None:
    """``--opts`` pairs with a sapnet key set TrainSegConfig, the others go to detectron2 in order."""
    seen = {}
    import typer
    from typer.testing import CliRunner

    from sapnet_cli.commands import train_seg as module
    from sapnet_cli.options import SapnetCommand, config_command
    from stages.seg.config import TrainSegConfig

    def fake_run(cfg: TrainSegConfig) -> None:
        seen["cfg"] = cfg

    app = typer.Typer()
    app.command(cls=SapnetCommand)(
        config_command(TrainSegConfig, fake_run, doc="x", passthrough_opts="opts")
    )
    args = ["--train", PSEUDO, "--images", IMAGES, "--out", str(tmp_path / "o"), "--iters", "3"]
    result = CliRunner().invoke(
        app, [*args, "--opts", "SEED.X=-1", "iters", "5", "A.B", "-2", "--opts", "C.D", "[1,2]"]
    )
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert cfg.iters == 5  # --opts win over --iters
    assert cfg.opts == ["SEED.X", "-1", "A.B", "-2", "C.D", "[1,2]"]
    assert module.train_seg.__doc__.startswith("Train the SOLOv2")
    assert run_cli([*args, "--opts", "SOLVER.BASE_LR"]) == 2


@pytest.mark.slow
def test_overfits_the_fixture(tmp_path: Path) -> None:
    """300 iterations from scratch on the 2 images (pseudo masks = GT masks): the whole chain (labels, mask
    alignment, flips, inference resize, boxes from masks, COCO ids) must work for AP to rise. Measured: segm AP
    63.7, bbox AP 74.4 (about 6 min on 2 CPU cores)."""
    overfit_opts = [
        "DATALOADER.NUM_WORKERS", "0", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.RESNETS.NORM", "GN", "MODEL.FPN.OUT_CHANNELS", "64",
        "MODEL.SOLOV2.INSTANCE_IN_CHANNELS", "64", "MODEL.SOLOV2.MASK_IN_CHANNELS", "64",
        "MODEL.SOLOV2.INSTANCE_CHANNELS", "64", "MODEL.SOLOV2.NUM_INSTANCE_CONVS", "2",
        "MODEL.SOLOV2.MASK_CHANNELS", "32", "MODEL.SOLOV2.NUM_MASKS", "64", "MODEL.SOLOV2.NUM_KERNELS", "64",
        "SOLVER.WARMUP_ITERS", "20", "INPUT.RANDOM_FLIP", "none", "SEED", "0",
    ]  # fmt: skip
    out = tmp_path / "fit"
    args = ["--train", PSEUDO, "--images", IMAGES, "--out", str(out), "--val", GT, "--iters", "300"]
    args += ["--ims-per-batch", "2", "--lr", "0.01", "--min-size", "256", "--max-size", "384"]
    assert run_cli(args + ["--device", "cpu", "--opts", *overfit_opts]) == 0
    metrics = json.loads((out / "eval" / "coco_eval.json").read_text())["metrics"]
    assert metrics["segm"]["AP"] > 30.0 and metrics["bbox"]["AP"] > 30.0
