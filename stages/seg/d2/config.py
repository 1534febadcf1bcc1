"""detectron2 (yacs) configuration of sapnet's SOLOv2: AdelaiDet-style ``MODEL.SOLOV2.*`` keys and defaults.

* :func:`add_solov2_config` adds ``MODEL.SOLOV2`` with AdelaiDet's key names and reference values
  (docs/method.md §12) plus ``MODEL.SOLOV2.USE_AUX_MASKS`` (SAPNet MPS, docs/method.md §10), and
  ``SOLVER.FULL_MODEL_CLIP_NORM`` (global L2 gradient clipping; detectron2's own ``CLIP_GRADIENTS`` is
  per-parameter).
* :func:`solov2_config_from_cfg` converts those keys to the plain-torch :class:`SOLOv2Config`.
* :func:`get_sapnet_cfg` is the complete default config of ``sapnet train-seg``: R50-FPN P2-P6 with GroupNorm
  FPN (docs/method.md §4, §12), bitmask masks, single-scale 800/1333 + horizontal flip, SOLOv2 1x schedule
  (SGD lr 0.01 at 16 images, momentum 0.9, weight decay 1e-4, 90k iterations, x0.1 at epochs 8 and 11 of 12,
  linear warm-up 500 iterations from 0.001, global grad-norm clip 35).
* :func:`scale_schedule` applies the linear scaling rule when the batch size changes, :func:`set_max_iter`
  shortens/lengthens the schedule keeping its shape.

The ImageNet backbone convention is torchvision's (RGB, mean/std normalisation, stride in the 3x3 conv), so a
torchvision R-50/R-101 state dict or a detectron2 ``.pkl`` converted from torchvision loads as is.
"""

from __future__ import annotations

import os
import typing
from typing import Any

from stages.seg.d2 import compat

compat.apply()

from detectron2.config import CfgNode as CN  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402

from stages.seg.config import (  # noqa: E402, F401 - BACKBONE_DEPTHS, STEP_FRACTIONS re-exported
    BACKBONE_DEPTHS,
    DEFAULT_BACKBONE,
    MAX_SIZE,
    MIN_SIZE,
    REFERENCE_BATCH,
    REFERENCE_LR,
    REFERENCE_MAX_ITER,
    STEP_FRACTIONS,
)
from stages.seg.solov2.config import SOLOv2Config, d2_keys  # noqa: E402

#: torchvision ImageNet normalisation, RGB order (docs/method.md §4).
PIXEL_MEAN_RGB = [123.675, 116.28, 103.53]
PIXEL_STD_RGB = [58.395, 57.12, 57.375]


def _solov2_default(name: str) -> Any:
    """The class default of a SOLOv2Config field, as a yacs value (flat tuples become lists)."""
    value = SOLOv2Config.__dataclass_fields__[name].default
    if isinstance(value, tuple) and not any(isinstance(v, tuple) for v in value):
        return list(value)
    return value


def add_solov2_config(cfg: CN) -> None:
    """Add ``MODEL.SOLOV2.*`` (AdelaiDet names) and ``SOLVER.FULL_MODEL_CLIP_NORM``.

    The hyper-parameters and their defaults come from :class:`SOLOv2Config` (each field names its key); the
    other keys exist for AdelaiDet compatibility and only accept the values this implementation supports.
    """
    s = CN()
    s.LOSS = CN()
    for name, key in d2_keys().items():
        node = s
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = _solov2_default(name)
    s.INSTANCE_IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    s.MASK_IN_FEATURES = ["p2", "p3", "p4", "p5"]
    s.MASK_IN_CHANNELS = s.INSTANCE_IN_CHANNELS
    s.USE_DCN_IN_INSTANCE = False
    s.TYPE_DCN = "DCN"
    s.NMS_TYPE = "matrix"
    s.LOSS.FOCAL_USE_SIGMOID = True
    cfg.MODEL.SOLOV2 = s
    cfg.SOLVER.FULL_MODEL_CLIP_NORM = 35.0  # <= 0 disables


def _err(key: str, problem: str) -> ValueError:
    return ValueError(f"config MODEL.SOLOV2.{key}: {problem}")


def solov2_config_from_cfg(cfg: CN) -> SOLOv2Config:
    """Build the plain-torch :class:`SOLOv2Config` from ``cfg.MODEL.SOLOV2`` (the keys its fields name).

    Raises:
        ValueError: a key asks for something this implementation does not provide (DCN, non-matrix NMS,
            non-sigmoid focal loss, mask features other than the first 4 instance levels, D != E).
    """
    s = cfg.MODEL.SOLOV2
    if s.USE_DCN_IN_INSTANCE:
        raise _err("USE_DCN_IN_INSTANCE", "deformable convolution is not supported (keep False)")
    if s.NMS_TYPE != "matrix":
        raise _err("NMS_TYPE", f"only 'matrix' is supported, got {s.NMS_TYPE!r}")
    if not s.LOSS.FOCAL_USE_SIGMOID:
        raise _err("LOSS.FOCAL_USE_SIGMOID", "only the sigmoid focal loss is supported")
    if len(s.INSTANCE_IN_FEATURES) != 5:
        raise _err("INSTANCE_IN_FEATURES", f"needs 5 levels (P2..P6), got {s.INSTANCE_IN_FEATURES}")
    if list(s.MASK_IN_FEATURES) != list(s.INSTANCE_IN_FEATURES)[:4]:
        raise _err(
            "MASK_IN_FEATURES",
            f"must be the first 4 instance levels {list(s.INSTANCE_IN_FEATURES)[:4]}, got "
            f"{list(s.MASK_IN_FEATURES)}",
        )
    if s.MASK_IN_CHANNELS != s.INSTANCE_IN_CHANNELS:
        raise _err(
            "MASK_IN_CHANNELS", "must equal INSTANCE_IN_CHANNELS (both read the FPN outputs)"
        )
    hints = typing.get_type_hints(SOLOv2Config)
    values: dict[str, Any] = {}
    for name, key in d2_keys().items():
        value = s
        for part in key.split("."):
            value = value[part]
        values[name] = _coerce(value, hints[name])
    if values["norm"] in ("", "None"):
        values["norm"] = "none"
    try:
        return SOLOv2Config(**values)
    except ValueError as exc:
        raise ValueError(f"config MODEL.SOLOV2: {exc}") from exc


def _coerce(value: Any, tp: Any) -> Any:
    """A yacs value as the field type: int/float/bool/str, tuples of them (nested as in scale_ranges)."""
    if typing.get_origin(tp) is tuple:
        (inner, *_) = typing.get_args(tp)
        return tuple(_coerce(v, inner) for v in value)
    return tp(value)


def get_sapnet_cfg() -> CN:
    """The complete (unfrozen) default detectron2 config of ``sapnet train-seg`` (see the module docstring)."""
    cfg = get_cfg()
    add_solov2_config(cfg)
    m = cfg.MODEL
    m.META_ARCHITECTURE = "SOLOv2"
    m.MASK_ON = True
    m.WEIGHTS = ""
    m.PIXEL_MEAN = list(PIXEL_MEAN_RGB)
    m.PIXEL_STD = list(PIXEL_STD_RGB)
    m.BACKBONE.NAME = "build_resnet_fpn_backbone"
    m.BACKBONE.FREEZE_AT = 2  # stem + res2 frozen = mmdet frozen_stages=1
    m.RESNETS.DEPTH = BACKBONE_DEPTHS[DEFAULT_BACKBONE]
    m.RESNETS.NORM = "FrozenBN"  # BN statistics and affine frozen (mmdet norm_eval=True)
    m.RESNETS.STRIDE_IN_1X1 = False  # torchvision layout
    m.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.OUT_CHANNELS = 256
    m.FPN.NORM = "GN"
    cfg.INPUT.FORMAT = "RGB"
    # detectron2 defaults to 4 loader workers; more workers than cores only slows a small machine down.
    cfg.DATALOADER.NUM_WORKERS = min(4, os.cpu_count() or 1)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN = (MIN_SIZE,)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = MAX_SIZE
    cfg.INPUT.MIN_SIZE_TEST = MIN_SIZE
    cfg.INPUT.MAX_SIZE_TEST = MAX_SIZE
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
    sv = cfg.SOLVER
    sv.IMS_PER_BATCH = REFERENCE_BATCH
    sv.BASE_LR = REFERENCE_LR
    sv.MOMENTUM = 0.9
    sv.WEIGHT_DECAY = 1e-4
    sv.WEIGHT_DECAY_NORM = 0.0
    sv.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    sv.GAMMA = 0.1
    sv.WARMUP_METHOD = "linear"
    sv.WARMUP_FACTOR = 0.001
    sv.WARMUP_ITERS = 500
    sv.CLIP_GRADIENTS.ENABLED = (
        False  # per-parameter in detectron2; FULL_MODEL_CLIP_NORM is used instead
    )
    set_max_iter(cfg, REFERENCE_MAX_ITER)
    sv.CHECKPOINT_PERIOD = 5000
    cfg.TEST.EVAL_PERIOD = 0  # evaluate once, at the end
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    return cfg


def set_max_iter(cfg: CN, max_iter: int) -> None:
    """Set ``SOLVER.MAX_ITER`` and move the LR steps to the same fractions of the schedule.

    The steps are placed at ``STEP_FRACTIONS`` of ``max_iter`` (8/12 and 11/12, the 1x schedule; steps that
    would fall on 0 or ``max_iter`` and duplicates are dropped, as detectron2 requires), the warm-up is capped at
    ``max_iter``.
    """
    if max_iter < 1:
        raise ValueError(f"SOLVER.MAX_ITER must be >= 1, got {max_iter}")
    cfg.SOLVER.MAX_ITER = int(max_iter)
    steps = {round(max_iter * f) for f in STEP_FRACTIONS}
    cfg.SOLVER.STEPS = tuple(sorted(s for s in steps if 0 < s < max_iter))
    cfg.SOLVER.WARMUP_ITERS = int(min(cfg.SOLVER.WARMUP_ITERS, max_iter))


def scale_schedule(cfg: CN, ims_per_batch: int) -> None:
    """Change the batch size with the linear scaling rule (lr x k, iterations / k, k = new / old batch).

    Scales ``BASE_LR``, ``MAX_ITER``, ``STEPS``, ``WARMUP_ITERS`` and ``CHECKPOINT_PERIOD`` (as detectron2's
    ``DefaultTrainer.auto_scale_workers`` does). No-op when the batch size is unchanged.
    """
    if ims_per_batch < 1:
        raise ValueError(f"SOLVER.IMS_PER_BATCH must be >= 1, got {ims_per_batch}")
    old = int(cfg.SOLVER.IMS_PER_BATCH)
    if ims_per_batch == old:
        return
    k = ims_per_batch / old
    sv = cfg.SOLVER
    sv.IMS_PER_BATCH = int(ims_per_batch)
    sv.BASE_LR = float(sv.BASE_LR) * k
    sv.MAX_ITER = max(1, round(sv.MAX_ITER / k))
    sv.STEPS = tuple(sorted({round(s / k) for s in sv.STEPS} & set(range(1, sv.MAX_ITER))))
    sv.WARMUP_ITERS = min(sv.MAX_ITER, round(sv.WARMUP_ITERS / k))
    sv.CHECKPOINT_PERIOD = max(1, round(sv.CHECKPOINT_PERIOD / k))
