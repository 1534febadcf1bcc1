"""The SAPNet selector network: ResNet + FPN (P2-P6, GroupNorm), RoIAlign 7x7 and the PSM/PRM MIL heads.

docs/method.md §4:

- ResNet-50 (or 18) with frozen stem + stage 1 and frozen BatchNorm statistics (BN kept in eval mode; its
  affine parameters still train, as mmdet ``norm_eval=True, requires_grad=True``).
- FPN on C2-C5 -> 256 channels, GroupNorm(32) on every FPN conv, no activation, P6 = a stride-2 3x3 conv on
  C5 (mmdet ``add_extra_convs='on_input'``). Strides 4, 8, 16, 32, 64.
- RoIAlign 7x7 (``aligned=True``, adaptive sampling) on ONE level per box: level =
  ``clamp(floor(log2(sqrt(w h) / 56 + 1e-6)), 0, 4)`` (mmdet ``SingleRoIExtractor``, finest_scale 56).
- Shared trunk: flatten (256 * 7 * 7) -> FC 1024 -> ReLU -> FC 1024 -> ReLU, shared by both stages.
- Init (official code): Normal(0, 0.01) on EVERY Linear (the shared FCs too), biases 0 except the class
  branches' prior bias (p = 0.01); ``head_init="xavier"`` puts Xavier-uniform on the shared FCs instead.
- PSM head ``fc_cls0``/``fc_ins0``: 1024 -> K0 = C + 1 (the background column is the LAST one, index C);
  PRM head ``fc_cls1``/``fc_ins1``: 1024 -> K1 = C. Class ``c`` is column ``c`` in both.

Boxes are xyxy in edge coordinates of the (resized, padded) network input.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops import roi_align

from stages.common.errors import DependencyError, InputError
from stages.select.config import HEAD_INITS

log = logging.getLogger(__name__)

FPN_STRIDES = (4, 8, 16, 32, 64)
FINEST_SCALE = 56.0
ROI_SIZE = 7
CLS_PRIOR = 0.01
_STAGE_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
}


def roi_levels(boxes: Tensor, num_levels: int = len(FPN_STRIDES)) -> Tensor:
    """FPN level of each ``(R, 4)`` xyxy box -> ``(R,)`` long in ``[0, num_levels)``.

    ``floor(log2(sqrt(w h) / 56 + 1e-6))`` clamped: boxes under 112 px go to P2, 112-224 to P3, ...
    """
    scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    level = torch.floor(torch.log2(scale / FINEST_SCALE + 1e-6))
    return level.clamp(0, num_levels - 1).long()


def multilevel_roi_align(feats: list[Tensor], rois: Tensor, output_size: int = ROI_SIZE) -> Tensor:
    """RoIAlign each RoI on its level -> ``(R, C, output_size, output_size)``.

    Args:
        feats: per level ``(B, C, H_l, W_l)``, strides :data:`FPN_STRIDES`.
        rois: ``(R, 5)`` ``[batch_index, x1, y1, x2, y2]``.
    """
    out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], output_size, output_size))
    if rois.shape[0] == 0:
        return out
    levels = roi_levels(rois[:, 1:], len(feats))
    for lvl, feat in enumerate(feats):
        idx = torch.nonzero(levels == lvl).squeeze(1)
        if idx.numel() == 0:
            continue
        pooled = roi_align(
            feat,
            rois[idx],
            output_size=output_size,
            spatial_scale=1.0 / FPN_STRIDES[lvl],
            sampling_ratio=0,
            aligned=True,
        )
        out = out.index_copy(0, idx, pooled.to(out.dtype))
    return out


class FrozenStatsResNet(nn.Module):
    """Torchvision ResNet body returning C2-C5, BN statistics frozen, stem + layer1 frozen."""

    def __init__(self, name: str, zero_init_residual: bool = False):
        super().__init__()
        if name not in _STAGE_CHANNELS:
            raise InputError(f"unknown backbone {name!r}; choose one of {sorted(_STAGE_CHANNELS)}")
        net = getattr(torchvision.models, name)(weights=None, zero_init_residual=zero_init_residual)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.out_channels = _STAGE_CHANNELS[name]
        for module in (self.conv1, self.bn1, self.layer1):
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenStatsResNet:
        super().train(mode)
        for m in self.modules():  # norm_eval: BN always uses its stored statistics
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def _conv_gn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
    nn.init.xavier_uniform_(conv.weight)
    return nn.Sequential(conv, nn.GroupNorm(32, cout))


class GNFPN(nn.Module):
    """FPN with GroupNorm(32) on each conv and no activation: C2-C5 -> P2-P6 (P6 from C5)."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int = 256):
        super().__init__()
        self.lateral = nn.ModuleList(_conv_gn(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(_conv_gn(out_channels, out_channels, 3) for _ in in_channels)
        self.extra = _conv_gn(in_channels[-1], out_channels, 3, stride=2)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(
                lat[i], size=lat[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.output, lat, strict=True)]
        outs.append(self.extra(feats[-1]))
        return outs


class SelectorNet(nn.Module):
    """Backbone + FPN + shared 2-FC RoI trunk + PSM (K0 = C + 1) and PRM (K1 = C) MIL heads."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        fpn_channels: int = 256,
        fc_dim: int = 1024,
        zero_init_residual: bool = False,
        head_init: str = "normal",
    ):
        super().__init__()
        if head_init not in HEAD_INITS:
            raise InputError(f"head_init must be one of {', '.join(HEAD_INITS)}; got {head_init!r}")
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.backbone = FrozenStatsResNet(backbone, zero_init_residual=zero_init_residual)
        self.fpn = GNFPN(self.backbone.out_channels, fpn_channels)
        self.fc1 = nn.Linear(fpn_channels * ROI_SIZE * ROI_SIZE, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        for fc in (self.fc1, self.fc2):
            if (
                head_init == "normal"
            ):  # official Shared2FCInstanceMILHead: Normal(0, 0.01) on every Linear
                nn.init.normal_(fc.weight, std=0.01)
            else:  # mmdet ConvFCBBoxHead's default: Xavier uniform on the shared FCs
                nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        self.fc_cls0 = nn.Linear(fc_dim, num_classes + 1)
        self.fc_ins0 = nn.Linear(fc_dim, num_classes + 1)
        self.fc_cls1 = nn.Linear(fc_dim, num_classes)
        self.fc_ins1 = nn.Linear(fc_dim, num_classes)
        prior_bias = -math.log((1.0 - CLS_PRIOR) / CLS_PRIOR)
        for layer in (self.fc_cls0, self.fc_ins0, self.fc_cls1, self.fc_ins1):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(
                layer.bias, prior_bias if layer in (self.fc_cls0, self.fc_cls1) else 0.0
            )

    def features(self, images: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` normalised images (H, W multiples of 32) -> P2..P6."""
        return self.fpn(self.backbone(images))

    def roi_embed(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """``(R, 5)`` RoIs -> ``(R, fc_dim)`` shared-trunk features."""
        x = multilevel_roi_align(feats, rois).flatten(1)
        return F.relu(self.fc2(F.relu(self.fc1(x))))

    def psm_head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 0: ``(..., fc_dim)`` -> cls, ins logits ``(..., C + 1)``."""
        return self.fc_cls0(x), self.fc_ins0(x)

    def prm_head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 1: ``(..., fc_dim)`` -> cls, ins logits ``(..., C)``."""
        return self.fc_cls1(x), self.fc_ins1(x)


def build_model(
    num_classes: int,
    backbone: str = "resnet50",
    weights: str = "imagenet",
    fpn_channels: int = 256,
    fc_dim: int = 1024,
    head_init: str = "normal",
) -> SelectorNet:
    """Build the selector and load ``weights`` ("imagenet" | "none" | PATH); ``head_init`` see SelectorNet.

    "imagenet" uses torchvision's ImageNet weights (downloaded once into the torch cache); if they cannot be
    obtained a DependencyError says how to proceed. A PATH holds a state dict of a torchvision ResNet, of the
    backbone, or of a whole selector (``model`` key of a sapnet checkpoint). "none" is random init, with
    zero-initialised residual branches so the un-normalised (frozen-BN) network starts stable.
    """
    random_init = weights == "none"
    model = SelectorNet(
        num_classes, backbone, fpn_channels, fc_dim, random_init, head_init=head_init
    )
    if random_init:
        log.warning(
            "selector backbone starts from random weights (--weights none): expect poor results"
        )
        return model
    if weights == "imagenet":
        state = _imagenet_state(backbone)
    else:
        path = Path(weights)
        if not path.is_file():
            raise InputError(
                f"--weights {weights}: no such file (use imagenet, none or a state dict)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InputError(
                f"--weights {path} is not a readable torch state dict: {err}"
            ) from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
    load_backbone_state(model, state, str(weights))
    return model


def _imagenet_state(backbone: str) -> dict[str, Tensor]:
    enum = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights"}[backbone]
    w = getattr(torchvision.models, enum).IMAGENET1K_V1
    try:
        return w.get_state_dict(progress=False)
    except Exception as err:
        raise DependencyError(
            f"cannot get the ImageNet weights of {backbone} ({w.url}): {err}. Without internet, download "
            f"the file elsewhere and pass --weights PATH, or train from scratch with --weights none"
        ) from None


def load_backbone_state(model: SelectorNet, state: dict[str, Tensor], source: str) -> None:
    """Load a torchvision ResNet, a backbone or a whole selector state dict; InputError on a mismatch."""
    whole = any(k.startswith("fc_cls0") for k in state)
    target: nn.Module = model if whole else model.backbone
    if not whole:
        state = {
            k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("fc.")
        }
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise InputError(
            f"--weights {source} does not fit the {model.backbone_name}: {err}"
        ) from None
    if missing or unexpected:
        raise InputError(
            f"--weights {source} does not fit the {model.backbone_name} selector: "
            f"missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}"
        )
