"""SOLOv2 in plain PyTorch (no detectron2): config, heads, targets, losses, Matrix NMS and
inference.

Reference: Wang et al., "SOLOv2: Dynamic and Fast Instance Segmentation", NeurIPS 2020, with the
defaults of the AdelaiDet / mmdetection implementations (see ``config.SOLOv2Config``). The
detectron2 meta-architecture of ``sapnet train-seg`` is :mod:`stages.seg.d2.meta_arch`; a pure-torch
model for tests and benchmarks is ``benchmarks/solov2_model.py``.
"""

from stages.seg.solov2.config import SOLOv2Config
from stages.seg.solov2.heads import SOLOv2Head, SOLOv2Outputs
from stages.seg.solov2.inference import SOLOv2Prediction, solov2_inference
from stages.seg.solov2.losses import dice_loss, sigmoid_focal_loss, solov2_losses
from stages.seg.solov2.matrix_nms import matrix_nms
from stages.seg.solov2.targets import AssignedTargets, InstanceTargets, assign_targets

__all__ = [
    "AssignedTargets",
    "InstanceTargets",
    "SOLOv2Config",
    "SOLOv2Head",
    "SOLOv2Outputs",
    "SOLOv2Prediction",
    "assign_targets",
    "dice_loss",
    "matrix_nms",
    "sigmoid_focal_loss",
    "solov2_inference",
    "solov2_losses",
]
