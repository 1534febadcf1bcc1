"""SOLOv2 in plain PyTorch (no detectron2): config, heads, targets, losses, Matrix NMS and
inference.

Reference: Wang et al., "SOLOv2: Dynamic and Fast Instance Segmentation", NeurIPS 2020, with the
defaults of the AdelaiDet / mmdetection implementations (see ``config.SOLOv2Config``).
"""

from stages.seg.solov2.config import SOLOv2Config

__all__ = ["SOLOv2Config"]
