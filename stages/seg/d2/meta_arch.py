"""``SOLOv2`` detectron2 meta-architecture: a detectron2 FPN backbone + sapnet's plain-torch SOLOv2 head.

Registered in ``META_ARCH_REGISTRY`` as "SOLOv2" when this module is imported (``MODEL.META_ARCHITECTURE:
SOLOv2``). Training returns ``{"loss_ins", "loss_cate"}``; inference returns, per image,
``{"instances": Instances}`` at the original image size (``height``/``width`` of the input dict, detectron2's
postprocess rule) with ``pred_masks`` (k, H, W) bool, ``scores`` (k,), ``pred_classes`` (k,) and ``pred_boxes``
(xyxy, edge coordinates) = the tight extent of each mask, so COCO bbox AP is meaningful (unlike AdelaiDet,
which outputs zero boxes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.seg.d2 import compat

compat.apply()

from detectron2.config import configurable  # noqa: E402
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone  # noqa: E402
from detectron2.structures import BitMasks, Boxes, ImageList, Instances  # noqa: E402

from stages.seg.d2.config import solov2_config_from_cfg  # noqa: E402
from stages.seg.solov2.config import SOLOv2Config  # noqa: E402
from stages.seg.solov2.heads import SOLOv2Head  # noqa: E402
from stages.seg.solov2.inference import SOLOv2Prediction, solov2_inference  # noqa: E402
from stages.seg.solov2.losses import solov2_losses  # noqa: E402
from stages.seg.solov2.targets import InstanceTargets  # noqa: E402


def resize_predictions(
    pred: SOLOv2Prediction, out_size: tuple[int, int], mask_thr: float
) -> tuple[Tensor, Tensor]:
    """Masks of one image at the input resolution ``(h, w)`` -> ``(k, H, W)`` bool at ``out_size``, + boxes.

    Soft masks (when present) are resized bilinearly and thresholded at ``mask_thr`` (the reference
    upsample-then-threshold); binary masks are resized with nearest neighbour. Boxes are ``(k, 4)`` xyxy in
    edge coordinates (``x2 = last column + 1``), zeros for empty masks.
    """
    masks = pred.soft_masks if pred.soft_masks is not None else pred.masks
    k = masks.shape[0]
    if k == 0:
        empty = torch.zeros((0, *out_size), dtype=torch.bool, device=masks.device)
        return empty, torch.zeros((0, 4), device=masks.device)
    if tuple(masks.shape[-2:]) != tuple(out_size):
        if pred.soft_masks is not None:
            masks = F.interpolate(
                masks[None].float(), size=out_size, mode="bilinear", align_corners=False
            )[0]
        else:
            masks = F.interpolate(masks[None].float(), size=out_size, mode="nearest")[0]
    binary = masks > mask_thr if pred.soft_masks is not None else masks > 0.5
    boxes = BitMasks(binary).get_bounding_boxes().tensor
    return binary, boxes


@META_ARCH_REGISTRY.register()
class SOLOv2(nn.Module):
    """SOLOv2 (Wang et al., NeurIPS 2020) on detectron2: backbone features ``INSTANCE_IN_FEATURES`` (P2..P6)
    go to :class:`SOLOv2Head`; losses and inference are the plain-torch functions of ``stages.seg.solov2``.

    Inputs follow detectron2's convention: a list of dicts with ``image`` (3, H, W) uint8 in ``INPUT.FORMAT``,
    training ``instances`` (from :class:`SOLOv2DatasetMapper`), and optional ``height``/``width`` (output size).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head_cfg: SOLOv2Config,
        in_features: list[str],
        pixel_mean: list[float],
        pixel_std: list[float],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_cfg = head_cfg
        self.in_features = list(in_features)
        missing = [f for f in self.in_features if f not in backbone.output_shape()]
        if missing:
            raise ValueError(
                f"SOLOv2: backbone has no features {missing} (has {list(backbone.output_shape())})"
            )
        self.head = SOLOv2Head(head_cfg)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        return {
            "backbone": build_backbone(cfg),
            "head_cfg": solov2_config_from_cfg(cfg),
            "in_features": cfg.MODEL.SOLOV2.INSTANCE_IN_FEATURES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """Normalise and pad to the backbone's size divisibility (32)."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def _targets(self, batched_inputs: list[dict[str, Any]]) -> list[InstanceTargets]:
        targets = []
        for x in batched_inputs:
            inst = x["instances"].to(self.device)
            aux_masks = aux_weights = None
            if (
                self.head_cfg.use_aux_masks
                and inst.has("gt_aux_masks")
                and inst.gt_aux_masks.shape[1] > 0
            ):
                aux_masks, aux_weights = inst.gt_aux_masks, inst.gt_aux_weights
            targets.append(
                InstanceTargets(
                    masks=inst.gt_masks.tensor,
                    labels=inst.gt_classes,
                    boxes=inst.gt_boxes.tensor,
                    aux_masks=aux_masks,
                    aux_weights=aux_weights,
                )
            )
        return targets

    def forward(
        self, batched_inputs: list[dict[str, Any]]
    ) -> dict[str, Tensor] | list[dict[str, Instances]]:
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        outputs = self.head([features[f] for f in self.in_features])
        if self.training:
            return solov2_losses(outputs, self._targets(batched_inputs), self.head_cfg)
        preds = solov2_inference(outputs, list(images.image_sizes), self.head_cfg, return_soft=True)
        results = []
        for pred, x, size in zip(preds, batched_inputs, images.image_sizes, strict=True):
            out_size = (int(x.get("height", size[0])), int(x.get("width", size[1])))
            masks, boxes = resize_predictions(pred, out_size, self.head_cfg.mask_thr)
            inst = Instances(out_size)
            inst.pred_masks = masks
            inst.pred_boxes = Boxes(boxes)
            inst.scores = pred.scores
            inst.pred_classes = pred.labels
            results.append({"instances": inst})
        return results
