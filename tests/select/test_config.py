"""SelectConfig: defaults, config file + command-line merging, validation, lr scaling and schedule."""

from __future__ import annotations

import dataclasses

import pytest

from stages.common.errors import InputError
from stages.select.config import ABLATIONS, SelectConfig, build_config
from stages.select.train import lr_at

PATHS = {"store": "s.zarr", "images": "imgs", "out": "run"}


def test_defaults_are_the_method_values():
    cfg = SelectConfig(**PATHS).validate()
    assert (cfg.backbone, cfg.weights, cfg.epochs, cfg.iters) == ("resnet50", "imagenet", 12, None)
    assert (cfg.short_side, cfg.max_size, cfg.flip) == (800, 1333, 0.5)
    assert (cfg.momentum, cfg.weight_decay, cfg.grad_clip) == (0.9, 1e-4, 35.0)
    assert (cfg.warmup_iters, cfg.warmup_ratio, cfg.num_negatives) == (500, 0.001, 500)
    assert cfg.pdg_power == pytest.approx(1 / 64) and cfg.pdg_mode == "logits"
    assert (cfg.bms_t1, cfg.bms_t2) == (0.6, 0.3)
    assert cfg.use_pdg and cfg.use_prm and cfg.use_ppg and cfg.use_npg and cfg.use_bms
    # 0.015 at a total batch of 32, scaled linearly
    assert cfg.base_lr(world_size=8) == pytest.approx(0.015)
    assert cfg.base_lr(world_size=1) == pytest.approx(0.015 * 4 / 32)
    assert SelectConfig(**PATHS, lr=0.1).base_lr(4) == 0.1


def test_config_file_then_command_line_then_opts(tmp_path):
    f = tmp_path / "sel.yaml"
    f.write_text("backbone: resnet18\niters: 100\nbatch-size: 8\nuse_ppg: false\nseed: 5\n")
    cfg = build_config(f, **PATHS, seed=7)
    assert cfg.backbone == "resnet18" and cfg.iters == 100 and cfg.batch_size == 8
    assert not cfg.use_ppg and cfg.use_npg and cfg.seed == 7
    # --epochs on the command line replaces the file's iters
    cfg = build_config(f, **PATHS, epochs=3)
    assert cfg.epochs == 3 and cfg.iters is None
    # --opts come last and are typed by the field
    cfg = build_config(f, [("seed", "9"), ("lr_steps", "[0.5,0.75]")], **PATHS, seed=7)
    assert cfg.seed == 9 and cfg.lr_steps == (0.5, 0.75)
    with pytest.raises(InputError, match="not both"):
        build_config(None, **PATHS, epochs=3, iters=5)


def test_bad_options_name_the_option(tmp_path):
    f = tmp_path / "sel.yaml"
    f.write_text("backbone_name: resnet18\n")
    with pytest.raises(InputError, match="backbone_name"):
        build_config(f, **PATHS)
    f.write_text("use_pdg: 3\n")
    with pytest.raises(InputError, match="use_pdg"):
        build_config(f, **PATHS)
    f.write_text("batch_size: many\n")
    with pytest.raises(InputError, match="batch_size"):
        build_config(f, **PATHS)
    with pytest.raises(InputError, match="backbone"):
        build_config(None, **PATHS, backbone="vgg16")
    with pytest.raises(InputError, match="batch_size"):
        build_config(None, **PATHS, batch_size=0)
    with pytest.raises(InputError, match="--store"):
        build_config(None, images="x", out="y")
    with pytest.raises(InputError, match="--checkpoint"):
        build_config(None, **PATHS, predict_only=True)
    with pytest.raises(InputError, match="not found"):
        build_config(None, **PATHS, predict_only=True, checkpoint=str(tmp_path / "none.pt"))


def test_no_prm_implies_no_pnpg_once_when_built_and_validate_changes_nothing():
    cfg = build_config(None, **PATHS, use_prm=False)
    assert not cfg.use_ppg and not cfg.use_npg
    assert not SelectConfig(**PATHS, use_prm=False, use_ppg=True).use_ppg
    before = SelectConfig(**PATHS)
    after = dataclasses.replace(before)
    assert after.validate() == before  # returns the config unchanged
    from stages.select.forward import MethodOptions

    opts = MethodOptions.from_config(cfg)
    assert not opts.use_ppg and not opts.use_npg and not opts.use_prm


def test_ablation_rows_are_valid_configs():
    assert list(ABLATIONS) == ["mil1", "+PDG", "+mil2", "+PNPG", "+BMS"]
    for flags in ABLATIONS.values():
        cfg = SelectConfig(**PATHS, **flags).validate()
        assert cfg.flags()["use_prm"] == flags["use_prm"]
    assert ABLATIONS["+BMS"] == {
        k: v for k, v in SelectConfig().flags().items() if k.startswith("use")
    }


def test_lr_schedule_warmup_and_steps():
    cfg = SelectConfig(**PATHS, warmup_iters=10, warmup_ratio=0.001)
    total = 120  # 12 "epochs" of 10 iterations: steps at 80 and 110
    assert lr_at(0, 1.0, total, cfg) == pytest.approx(0.001)
    assert lr_at(5, 1.0, total, cfg) == pytest.approx(1 - 0.5 * 0.999)
    assert lr_at(10, 1.0, total, cfg) == pytest.approx(1.0)
    assert lr_at(79, 1.0, total, cfg) == pytest.approx(1.0)
    assert lr_at(80, 1.0, total, cfg) == pytest.approx(0.1)
    assert lr_at(109, 1.0, total, cfg) == pytest.approx(0.1)
    assert lr_at(110, 1.0, total, cfg) == pytest.approx(0.01)
    # a shorter run keeps the fractions: 24 iterations -> steps at 16 and 22
    assert lr_at(15, 1.0, 24, cfg) == pytest.approx(1.0)
    assert lr_at(16, 1.0, 24, cfg) == pytest.approx(0.1)
    assert lr_at(22, 1.0, 24, cfg) == pytest.approx(0.01)
