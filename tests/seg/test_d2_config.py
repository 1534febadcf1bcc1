"""detectron2 config of SOLOv2: defaults, key mapping, schedule scaling and option precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.common.errors import InputError
from stages.seg.config import TrainSegConfig
from stages.seg.d2 import compat

if not compat.detectron2_available():
    pytest.skip("detectron2 is not installed (run `make install`)", allow_module_level=True)

from stages.seg.d2.config import (  # noqa: E402
    get_sapnet_cfg,
    scale_schedule,
    set_max_iter,
    solov2_config_from_cfg,
)
from stages.seg.d2.train import build_cfg  # noqa: E402
from stages.seg.solov2.config import SOLOv2Config  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "seg"


def test_defaults_are_the_reference_values() -> None:
    cfg = get_sapnet_cfg()
    assert cfg.MODEL.META_ARCHITECTURE == "SOLOv2"
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert cfg.MODEL.FPN.NORM == "GN"
    assert cfg.MODEL.FPN.IN_FEATURES == ["res2", "res3", "res4", "res5"]
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert cfg.INPUT.MASK_FORMAT == "bitmask"
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800,) and cfg.INPUT.MAX_SIZE_TRAIN == 1333
    assert cfg.INPUT.MIN_SIZE_TEST == 800 and cfg.INPUT.MAX_SIZE_TEST == 1333
    sv = cfg.SOLVER
    assert (sv.BASE_LR, sv.IMS_PER_BATCH, sv.MOMENTUM, sv.WEIGHT_DECAY) == (0.01, 16, 0.9, 1e-4)
    assert sv.MAX_ITER == 90000 and sv.STEPS == (60000, 82500)
    assert (sv.WARMUP_METHOD, sv.WARMUP_ITERS, sv.WARMUP_FACTOR) == ("linear", 500, 0.001)
    assert sv.FULL_MODEL_CLIP_NORM == 35.0 and not sv.CLIP_GRADIENTS.ENABLED
    s = cfg.MODEL.SOLOV2
    assert s.NUM_GRIDS == [40, 36, 24, 16, 12]
    assert s.FPN_INSTANCE_STRIDES == [8, 8, 16, 32, 32]
    assert s.INSTANCE_IN_FEATURES == ["p2", "p3", "p4", "p5", "p6"]
    assert (s.LOSS.DICE_WEIGHT, s.LOSS.FOCAL_ALPHA, s.LOSS.FOCAL_GAMMA) == (3.0, 0.25, 2.0)
    assert (s.SCORE_THR, s.UPDATE_THR, s.MASK_THR, s.NMS_PRE, s.MAX_PER_IMG) == (
        0.1,
        0.05,
        0.5,
        500,
        100,
    )
    assert s.USE_AUX_MASKS is True


def test_default_keys_map_to_the_plain_torch_defaults() -> None:
    assert solov2_config_from_cfg(get_sapnet_cfg()) == SOLOv2Config()


def test_keys_are_converted() -> None:
    cfg = get_sapnet_cfg()
    cfg.merge_from_list(
        [
            "MODEL.SOLOV2.NUM_CLASSES",
            "7",
            "MODEL.SOLOV2.NORM",
            "none",
            "MODEL.SOLOV2.NMS_KERNEL",
            "linear",
        ]
    )
    cfg.MODEL.SOLOV2.USE_AUX_MASKS = False
    out = solov2_config_from_cfg(cfg)
    assert (out.num_classes, out.norm, out.nms_kernel, out.use_aux_masks) == (
        7,
        "none",
        "linear",
        False,
    )


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("USE_DCN_IN_INSTANCE", True, "deformable"),
        ("NMS_TYPE", "mask", "matrix"),
        ("MASK_IN_FEATURES", ["p3", "p4", "p5", "p6"], "first 4 instance levels"),
        ("NUM_KERNELS", 128, "num_kernels"),
    ],
)
def test_unsupported_keys_are_rejected(key: str, value, match: str) -> None:
    cfg = get_sapnet_cfg()
    cfg.MODEL.SOLOV2[key] = value
    with pytest.raises(ValueError, match=match):
        solov2_config_from_cfg(cfg)


def test_set_max_iter_keeps_the_schedule_shape() -> None:
    cfg = get_sapnet_cfg()
    set_max_iter(cfg, 1200)
    assert cfg.SOLVER.STEPS == (800, 1100) and cfg.SOLVER.WARMUP_ITERS == 500
    set_max_iter(cfg, 3)
    assert cfg.SOLVER.STEPS == (2,) and cfg.SOLVER.WARMUP_ITERS == 3
    set_max_iter(cfg, 1)
    assert cfg.SOLVER.STEPS == ()


def test_linear_scaling_rule() -> None:
    cfg = get_sapnet_cfg()
    scale_schedule(cfg, 8)
    sv = cfg.SOLVER
    assert sv.IMS_PER_BATCH == 8 and sv.BASE_LR == pytest.approx(0.005)
    assert sv.MAX_ITER == 180000 and sv.STEPS == (120000, 165000)
    assert sv.WARMUP_ITERS == 1000 and sv.CHECKPOINT_PERIOD == 10000


def _config(tmp_path: Path, **kw) -> TrainSegConfig:
    return TrainSegConfig(
        train_json=FIXTURES / "pseudo.json", images=FIXTURES / "images", out_dir=tmp_path, **kw
    )


def test_option_precedence(tmp_path: Path) -> None:
    yaml = tmp_path / "c.yaml"
    yaml.write_text("SOLVER:\n  WEIGHT_DECAY: 0.0005\nMODEL:\n  SOLOV2:\n    SIGMA: 0.3\n")
    config = _config(
        tmp_path,
        config_yaml=yaml,
        ims_per_batch=4,
        iters=120,
        backbone="R101",
        min_size=512,
        device="cpu",
        aux_masks=False,
        opts=["MODEL.SOLOV2.SIGMA", "0.25", "MODEL.SOLOV2.NUM_CLASSES", "80"],
    )
    cfg = build_cfg(config, num_classes=6, has_val=False)
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.0025)  # 0.01 * 4 / 16
    assert cfg.SOLVER.MAX_ITER == 120 and cfg.SOLVER.STEPS == (80, 110)
    assert cfg.SOLVER.WEIGHT_DECAY == 0.0005  # from the YAML
    assert cfg.MODEL.SOLOV2.SIGMA == 0.25  # --opts win over the YAML
    assert cfg.MODEL.SOLOV2.NUM_CLASSES == 6  # always the dataset's
    assert cfg.MODEL.RESNETS.DEPTH == 101
    assert cfg.INPUT.MIN_SIZE_TRAIN == (512,) and cfg.INPUT.MIN_SIZE_TEST == 512
    assert cfg.MODEL.SOLOV2.USE_AUX_MASKS is False
    assert cfg.DATASETS.TEST == () and cfg.OUTPUT_DIR == str(tmp_path)
    assert build_cfg(_config(tmp_path, lr=0.02), 6, True).SOLVER.BASE_LR == 0.02


def test_bad_overrides_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--opts"):
        build_cfg(_config(tmp_path, opts=["MODEL.NO_SUCH_KEY", "1"]), 6, False)
    with pytest.raises(InputError, match="deformable"):
        build_cfg(_config(tmp_path, opts=["MODEL.SOLOV2.USE_DCN_IN_INSTANCE", "True"]), 6, False)
    with pytest.raises(InputError, match="KEY VALUE"):
        _config(tmp_path, opts=["SOLVER.BASE_LR"]).validate()
    with pytest.raises(InputError, match="--backbone"):
        _config(tmp_path, backbone="R18").validate()
    with pytest.raises(InputError, match="--eval-only needs --val"):
        _config(tmp_path, eval_only=True).validate()


def test_multi_process_on_cpu_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.seg.d2.train import train_seg

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(InputError, match="2 processes requested but device is cpu"):
        train_seg(_config(tmp_path, num_gpus=2, device="cpu"))
    with pytest.raises(InputError, match="--dist-url"):
        _config(tmp_path, num_machines=2).validate()
