"""detectron2 (yacs) configuration of sapnet's SOLOv2: AdelaiDet-style ``MODEL.SOLOV2.*`` keys and defaults.

* :func:`add_solov2_config` adds ``MODEL.SOLOV2`` with AdelaiDet's key names and reference values
  (PEERS_AND_SOLOV2.md section 1.6) plus ``MODEL.SOLOV2.USE_AUX_MASKS`` (SAPNet MPS, METHOD.md section 7), and
  ``SOLVER.FULL_MODEL_CLIP_NORM`` (global L2 gradient clipping; detectron2's own ``CLIP_GRADIENTS`` is
  per-parameter).
* :func:`solov2_config_from_cfg` converts those keys to the plain-torch :class:`SOLOv2Config`.
* :func:`get_sapnet_cfg` is the complete default config of ``sapnet train-seg``: R50-FPN P2-P6 with GroupNorm
  FPN (METHOD.md section 2), bitmask masks, single-scale 800/1333 + horizontal flip, SOLOv2 1x schedule
  (SGD lr 0.01 at 16 images, momentum 0.9, weight decay 1e-4, 90k iterations, x0.1 at epochs 8 and 11 of 12,
  linear warm-up 500 iterations from 0.001, global grad-norm clip 35).
* :func:`scale_schedule` applies the linear scaling rule when the batch size changes, :func:`set_max_iter`
  shortens/lengthens the schedule keeping its shape.

The ImageNet backbone convention is torchvision's (RGB, mean/std normalisation, stride in the 3x3 conv), so a
torchvision R-50/R-101 state dict or a detectron2 ``.pkl`` converted from torchvision loads as is.
"""

from __future__ import annotations

import os

from stages.seg.d2 import compat

compat.apply()

from detectron2.config import CfgNode as CN  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402

from stages.seg.solov2.config import SOLOv2Config  # noqa: E402

#: 1x schedule at 16 images per batch (= 12 COCO epochs), mmdetection's solov2_r50_fpn_1x steps (8, 11 of 12).
REFERENCE_BATCH = 16
REFERENCE_LR = 0.01
REFERENCE_MAX_ITER = 90000
STEP_FRACTIONS = (8 / 12, 11 / 12)
#: torchvision ImageNet normalisation, RGB order (METHOD.md section 2).
PIXEL_MEAN_RGB = [123.675, 116.28, 103.53]
PIXEL_STD_RGB = [58.395, 57.12, 57.375]
BACKBONE_DEPTHS = {"R50": 50, "R101": 101}


def add_solov2_config(cfg: CN) -> None:
    """Add ``MODEL.SOLOV2.*`` (AdelaiDet names, reference defaults) and ``SOLVER.FULL_MODEL_CLIP_NORM``."""
    s = CN()
    s.INSTANCE_IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    s.FPN_INSTANCE_STRIDES = [8, 8, 16, 32, 32]
    s.FPN_SCALE_RANGES = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    s.SIGMA = 0.2
    s.INSTANCE_IN_CHANNELS = 256
    s.INSTANCE_CHANNELS = 512
    s.NUM_INSTANCE_CONVS = 4
    s.USE_DCN_IN_INSTANCE = False
    s.TYPE_DCN = "DCN"
    s.NUM_GRIDS = [40, 36, 24, 16, 12]
    s.NUM_CLASSES = 80
    s.NUM_KERNELS = 256
    s.NORM = "GN"
    s.USE_COORD_CONV = True
    s.PRIOR_PROB = 0.01
    s.MASK_IN_FEATURES = ["p2", "p3", "p4", "p5"]
    s.MASK_IN_CHANNELS = 256
    s.MASK_CHANNELS = 128
    s.NUM_MASKS = 256
    s.NMS_PRE = 500
    s.SCORE_THR = 0.1
    s.UPDATE_THR = 0.05
    s.MASK_THR = 0.5
    s.MAX_PER_IMG = 100
    s.NMS_TYPE = "matrix"
    s.NMS_KERNEL = "gaussian"
    s.NMS_SIGMA = 2.0
    s.USE_AUX_MASKS = True
    s.LOSS = CN()
    s.LOSS.FOCAL_USE_SIGMOID = True
    s.LOSS.FOCAL_ALPHA = 0.25
    s.LOSS.FOCAL_GAMMA = 2.0
    s.LOSS.FOCAL_WEIGHT = 1.0
    s.LOSS.DICE_WEIGHT = 3.0
    cfg.MODEL.SOLOV2 = s
    cfg.SOLVER.FULL_MODEL_CLIP_NORM = 35.0  # <= 0 disables


def _err(key: str, problem: str) -> ValueError:
    return ValueError(f"config MODEL.SOLOV2.{key}: {problem}")


def solov2_config_from_cfg(cfg: CN) -> SOLOv2Config:
    """Build the plain-torch :class:`SOLOv2Config` from ``cfg.MODEL.SOLOV2``.

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
    norm = str(s.NORM)
    try:
        return SOLOv2Config(
            num_classes=int(s.NUM_CLASSES),
            in_channels=int(s.INSTANCE_IN_CHANNELS),
            instance_channels=int(s.INSTANCE_CHANNELS),
            num_instance_convs=int(s.NUM_INSTANCE_CONVS),
            num_kernels=int(s.NUM_KERNELS),
            num_grids=tuple(s.NUM_GRIDS),
            instance_strides=tuple(s.FPN_INSTANCE_STRIDES),
            scale_ranges=tuple(tuple(r) for r in s.FPN_SCALE_RANGES),
            sigma=float(s.SIGMA),
            mask_channels=int(s.MASK_CHANNELS),
            num_masks=int(s.NUM_MASKS),
            norm="none" if norm in ("", "none", "None") else norm,
            use_coord_conv=bool(s.USE_COORD_CONV),
            prior_prob=float(s.PRIOR_PROB),
            focal_alpha=float(s.LOSS.FOCAL_ALPHA),
            focal_gamma=float(s.LOSS.FOCAL_GAMMA),
            focal_weight=float(s.LOSS.FOCAL_WEIGHT),
            dice_weight=float(s.LOSS.DICE_WEIGHT),
            nms_pre=int(s.NMS_PRE),
            score_thr=float(s.SCORE_THR),
            update_thr=float(s.UPDATE_THR),
            mask_thr=float(s.MASK_THR),
            max_per_img=int(s.MAX_PER_IMG),
            nms_kernel=str(s.NMS_KERNEL),
            nms_sigma=float(s.NMS_SIGMA),
            use_aux_masks=bool(s.USE_AUX_MASKS),
        )
    except ValueError as exc:
        raise ValueError(f"config MODEL.SOLOV2: {exc}") from exc


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
    m.RESNETS.DEPTH = 50
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
    cfg.INPUT.MIN_SIZE_TRAIN = (800,)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 1333
    cfg.INPUT.MIN_SIZE_TEST = 800
    cfg.INPUT.MAX_SIZE_TEST = 1333
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
