"""Hyper-parameters of the SOLOv2 head, loss and inference, with the reference defaults: the one place they are written.

Defaults follow AdelaiDet ``MODEL.SOLOV2.*`` / mmdetection ``solov2_r50_fpn_1x_coco`` (docs/method.md §12).
Each field also names its detectron2 key; :func:`stages.seg.d2.config.add_solov2_config` derives
``MODEL.SOLOV2`` from these fields and :func:`stages.seg.d2.config.solov2_config_from_cfg` reads it back.
``use_aux_masks`` switches SAPNet's multi-mask proposal supervision (MPS).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_NORMS = ("GN", "none")
_NMS_KERNELS = ("gaussian", "linear")


def _d2(key: str, default: Any) -> Any:
    """A hyper-parameter with its default and its detectron2 key under ``MODEL.SOLOV2`` (AdelaiDet name)."""
    return dataclasses.field(default=default, metadata={"d2_key": key})


def d2_keys() -> dict[str, str]:
    """``{field name: MODEL.SOLOV2 sub-key}`` of every hyper-parameter (``LOSS.FOCAL_ALPHA``...)."""
    return {f.name: f.metadata["d2_key"] for f in dataclasses.fields(SOLOv2Config)}


@dataclass
class SOLOv2Config:
    """Every SOLOv2 hyper-parameter (AdelaiDet key in brackets).

    Architecture:
        num_classes: foreground classes C [NUM_CLASSES]; background is label ``C`` in category
            targets.
        in_channels: FPN channels of P2..P6 [INSTANCE_IN_CHANNELS, MASK_IN_CHANNELS].
        instance_channels: width of the kernel/category towers [INSTANCE_CHANNELS].
        num_instance_convs: 3x3 conv + norm + ReLU blocks per tower [NUM_INSTANCE_CONVS].
        num_kernels: D, length of each grid cell's dynamic 1x1 kernel [NUM_KERNELS]; must equal
            ``num_masks``.
        num_grids: S per level [NUM_GRIDS].
        instance_strides: effective stride per level [FPN_INSTANCE_STRIDES] (P2 is downsampled
            x0.5).
        scale_ranges: (low, high) of sqrt(w * h) of the GT box per level, inclusive
            [FPN_SCALE_RANGES].
        sigma: centre region = centre of mass +- sigma * half box size [SIGMA].
        mask_channels: width of the mask-feature branch [MASK_CHANNELS].
        num_masks: E, channels of the unified mask features [NUM_MASKS].
        norm: "GN" (GroupNorm with 32 groups) or "none" [NORM].
        use_coord_conv: concatenate normalised x, y coordinates to the kernel branch
            [USE_COORD_CONV].
        prior_prob: initial foreground probability of the category logits [PRIOR_PROB].
    Loss:
        focal_alpha, focal_gamma, focal_weight: sigmoid focal loss of the category branch.
        dice_weight: weight of the Dice mask loss (lambda = 3).
        use_aux_masks: add SAPNet MPS auxiliary Dice targets when the targets carry them.
    Inference:
        nms_pre: candidates kept before Matrix NMS; score_thr: category score threshold;
        update_thr: score threshold after Matrix NMS; mask_thr: binarisation threshold;
        max_per_img: detections per image;
        nms_kernel: "gaussian" or "linear"; nms_sigma: gaussian decay exp(-sigma * iou^2).
    """

    num_classes: int = _d2("NUM_CLASSES", 80)
    in_channels: int = _d2("INSTANCE_IN_CHANNELS", 256)
    instance_channels: int = _d2("INSTANCE_CHANNELS", 512)
    num_instance_convs: int = _d2("NUM_INSTANCE_CONVS", 4)
    num_kernels: int = _d2("NUM_KERNELS", 256)
    num_grids: tuple[int, ...] = _d2("NUM_GRIDS", (40, 36, 24, 16, 12))
    instance_strides: tuple[int, ...] = _d2("FPN_INSTANCE_STRIDES", (8, 8, 16, 32, 32))
    scale_ranges: tuple[tuple[float, float], ...] = _d2(
        "FPN_SCALE_RANGES", ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    )
    sigma: float = _d2("SIGMA", 0.2)
    mask_channels: int = _d2("MASK_CHANNELS", 128)
    num_masks: int = _d2("NUM_MASKS", 256)
    norm: str = _d2("NORM", "GN")
    use_coord_conv: bool = _d2("USE_COORD_CONV", True)
    prior_prob: float = _d2("PRIOR_PROB", 0.01)
    focal_alpha: float = _d2("LOSS.FOCAL_ALPHA", 0.25)
    focal_gamma: float = _d2("LOSS.FOCAL_GAMMA", 2.0)
    focal_weight: float = _d2("LOSS.FOCAL_WEIGHT", 1.0)
    dice_weight: float = _d2("LOSS.DICE_WEIGHT", 3.0)
    nms_pre: int = _d2("NMS_PRE", 500)
    score_thr: float = _d2("SCORE_THR", 0.1)
    update_thr: float = _d2("UPDATE_THR", 0.05)
    mask_thr: float = _d2("MASK_THR", 0.5)
    max_per_img: int = _d2("MAX_PER_IMG", 100)
    nms_kernel: str = _d2("NMS_KERNEL", "gaussian")
    nms_sigma: float = _d2("NMS_SIGMA", 2.0)
    use_aux_masks: bool = _d2("USE_AUX_MASKS", True)

    def __post_init__(self) -> None:
        self.num_grids = tuple(int(s) for s in self.num_grids)
        self.instance_strides = tuple(int(s) for s in self.instance_strides)
        self.scale_ranges = tuple((float(lo), float(hi)) for lo, hi in self.scale_ranges)
        n = len(self.num_grids)
        if n != 5 or len(self.instance_strides) != n or len(self.scale_ranges) != n:
            raise ValueError(
                "SOLOv2Config: num_grids, instance_strides and scale_ranges need one entry per "
                f"level P2..P6 (5), got {len(self.num_grids)}, {len(self.instance_strides)}, "
                f"{len(self.scale_ranges)}"
            )
        if self.num_kernels != self.num_masks:
            raise ValueError(
                f"SOLOv2Config: num_kernels ({self.num_kernels}) must equal num_masks "
                f"({self.num_masks}) for 1x1 dynamic convolution"
            )
        if self.norm not in _NORMS:
            raise ValueError(f"SOLOv2Config: norm must be one of {_NORMS}, got {self.norm!r}")
        if self.norm == "GN":
            for name in ("instance_channels", "mask_channels", "num_masks"):
                if getattr(self, name) % 32:
                    raise ValueError(
                        f"SOLOv2Config: {name} must be a multiple of 32 for GroupNorm(32)"
                    )
        if self.nms_kernel not in _NMS_KERNELS:
            raise ValueError(
                f"SOLOv2Config: nms_kernel must be one of {_NMS_KERNELS}, got {self.nms_kernel!r}"
            )
        if self.num_classes < 1:
            raise ValueError(f"SOLOv2Config: num_classes must be >= 1, got {self.num_classes}")

    @property
    def num_levels(self) -> int:
        """Number of instance levels (always 5: P2..P6)."""
        return len(self.num_grids)
