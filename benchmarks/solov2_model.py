"""A pure-PyTorch SOLOv2 model (backbone + heads + losses / inference), and a torchvision ResNet-FPN.

Used by the tests and ``benchmarks/bench_seg.py`` only (not product code); ``sapnet train-seg`` builds its own
detectron2 meta-architecture (:mod:`stages.seg.d2.meta_arch`) on the same parts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from stages.common.errors import DependencyError, InputError
from stages.seg.solov2.config import SOLOv2Config
from stages.seg.solov2.heads import SOLOv2Head
from stages.seg.solov2.inference import SOLOv2Prediction, solov2_inference
from stages.seg.solov2.losses import solov2_losses
from stages.seg.solov2.targets import InstanceTargets


class SOLOv2(nn.Module):
    """SOLOv2 over a backbone whose forward returns ``[P2, P3, P4, P5, P6]`` (a list or an ordered dict).

    ``forward(images, targets=None, image_sizes=None)``: ``images (B, 3, H, W)`` normalised and padded to a
    multiple of 32. In training mode returns ``{"loss_ins", "loss_cate"}`` (``targets`` required); in eval
    mode returns one ``SOLOv2Prediction`` per image, masks cropped to ``image_sizes`` (default: the padded
    size).
    """

    def __init__(self, backbone: nn.Module, cfg: SOLOv2Config) -> None:
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.head = SOLOv2Head(cfg)

    def features(self, images: Tensor) -> list[Tensor]:
        feats = self.backbone(images)
        if isinstance(feats, dict):
            feats = list(feats.values())
        return list(feats)

    def forward(
        self,
        images: Tensor,
        targets: list[InstanceTargets] | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[SOLOv2Prediction]:
        outputs = self.head(self.features(images))
        if self.training:
            if targets is None:
                raise ValueError("SOLOv2.forward: targets are required in training mode")
            return solov2_losses(outputs, targets, self.cfg)
        if image_sizes is None:
            image_sizes = [(images.shape[-2], images.shape[-1])] * images.shape[0]
        return solov2_inference(outputs, image_sizes, self.cfg)


class TorchvisionFPN(nn.Module):
    """Wraps torchvision's ``BackboneWithFPN`` so that ``forward`` returns ``[P2, P3, P4, P5, P6]``."""

    def __init__(self, fpn: nn.Module) -> None:
        super().__init__()
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    def forward(self, images: Tensor) -> list[Tensor]:
        return list(self.fpn(images).values())


def build_torchvision_backbone(
    name: str = "resnet50",
    pretrained_path: str | Path | None = None,
    trainable_layers: int = 5,
    norm_layer: Callable[..., nn.Module] | None = None,
) -> TorchvisionFPN:
    """A torchvision ResNet-FPN (256 channels) with outputs P2..P6 (P6 = stride-2 max-pool of P5).

    Args:
        name: torchvision ResNet name ("resnet18", "resnet50", "resnet101", ...).
        pretrained_path: optional torchvision ImageNet checkpoint of that ResNet (a ``state_dict`` file);
            without it the weights are random (no download ever happens).
        trainable_layers: ResNet stages left trainable (5 = all).
        norm_layer: ResNet norm layer (default ``FrozenBatchNorm2d`` as in detection models).
    """
    fpn = resnet_fpn_backbone(
        backbone_name=name,
        weights=None,
        norm_layer=norm_layer or FrozenBatchNorm2d,
        trainable_layers=trainable_layers,
        returned_layers=[1, 2, 3, 4],
        extra_blocks=LastLevelMaxPool(),
    )
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise DependencyError(f"{path}: backbone checkpoint not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        body_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = fpn.body.load_state_dict(body_state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise InputError(
                f"{path}: not a torchvision {name} checkpoint (missing {result.missing_keys[:3]}, "
                f"unexpected {result.unexpected_keys[:3]})"
            )
    return TorchvisionFPN(fpn)
