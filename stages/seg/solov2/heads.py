"""SOLOv2 heads: the instance head (kernel + category branches per grid level) and the mask-feature
head.

Input features are the FPN outputs ``[P2, P3, P4, P5, P6]``, each ``(B, in_channels, H_l, W_l)``
with P2 at stride 4 (input padded to a multiple of 32). Layout follows the reference
(docs/method.md §12):

* instance levels: P2 bilinearly downsampled x0.5, P3, P4, P5, P6 resized to P5's size (strides 8,
  8, 16, 32, 32); each level is resized to ``S x S`` and fed to towers shared across levels;
* kernel branch: features + 2 coordinate channels -> ``num_instance_convs`` x (3x3 conv, GN, ReLU)
  -> 3x3 conv to ``D = num_kernels`` (one 1x1 dynamic kernel per grid cell);
* category branch: features (no coordinates) -> same tower -> 3x3 conv to ``C`` logits;
* mask features: P2..P5 each through ``i`` x (3x3 conv, GN, ReLU, x2 bilinear up) (one conv for P2),
  coordinates concatenated to P5 only, summed, 1x1 conv to ``E = num_masks`` + GN + ReLU, stride 4.

Only the raw predictions are returned; masks are computed by dynamic convolution for positive cells
only (losses) or for kept candidates (inference), never for all grid cells (docs/method.md §12
"code oddity").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.seg.solov2.config import SOLOv2Config


@dataclass
class SOLOv2Outputs:
    """Raw head outputs for a batch of B images.

    cate_preds: per level ``(B, C, S_l, S_l)`` category logits (before sigmoid).
    kernel_preds: per level ``(B, D, S_l, S_l)`` dynamic 1x1 kernels.
    mask_feats: ``(B, E, H/4, W/4)`` unified mask features (E == D), H, W = padded input size.
    """

    cate_preds: list[Tensor]
    kernel_preds: list[Tensor]
    mask_feats: Tensor


def coord_features(x: Tensor) -> Tensor:
    """Coordinate channels ``(B, 2, H, W)`` for ``x (B, *, H, W)``: (x, y) linearly in [-1, 1]."""
    b, _, h, w = x.shape
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=0).unsqueeze(0).expand(b, -1, -1, -1)


def _conv_norm_relu(in_ch: int, out_ch: int, norm: str, kernel_size: int = 3) -> list[nn.Module]:
    use_norm = norm == "GN"
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=not use_norm)
    ]
    if use_norm:
        layers.append(nn.GroupNorm(32, out_ch))
    layers.append(nn.ReLU(inplace=True))
    return layers


def _init_normal(module: nn.Module, std: float = 0.01) -> None:
    """N(0, std) conv weights, zero biases (reference init of every SOLOv2 head conv)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.0)


def split_instance_features(features: list[Tensor]) -> list[Tensor]:
    """P2..P6 -> the 5 instance-branch inputs: P2 downsampled x0.5, P6 resized to P5's size."""
    if len(features) != 5:
        raise ValueError(f"SOLOv2 expects 5 FPN levels P2..P6, got {len(features)}")
    p2, p3, p4, p5, p6 = features
    p2 = F.interpolate(p2, scale_factor=0.5, mode="bilinear", align_corners=False)
    p6 = F.interpolate(p6, size=p5.shape[-2:], mode="bilinear", align_corners=False)
    return [p2, p3, p4, p5, p6]


class SOLOv2InstanceHead(nn.Module):
    """Kernel and category branches, shared across the 5 grid levels.

    ``forward(features)`` takes ``[P2..P6]`` and returns ``(cate_preds, kernel_preds)``, per level
    ``(B, C, S, S)`` and ``(B, D, S, S)``.
    """

    def __init__(self, cfg: SOLOv2Config) -> None:
        super().__init__()
        self.num_grids = cfg.num_grids
        self.use_coord_conv = cfg.use_coord_conv
        kernel_in = cfg.in_channels + (2 if cfg.use_coord_conv else 0)
        kernel_layers: list[nn.Module] = []
        cate_layers: list[nn.Module] = []
        for i in range(cfg.num_instance_convs):
            k_in = kernel_in if i == 0 else cfg.instance_channels
            c_in = cfg.in_channels if i == 0 else cfg.instance_channels
            kernel_layers += _conv_norm_relu(k_in, cfg.instance_channels, cfg.norm)
            cate_layers += _conv_norm_relu(c_in, cfg.instance_channels, cfg.norm)
        self.kernel_tower = nn.Sequential(*kernel_layers)
        self.cate_tower = nn.Sequential(*cate_layers)
        deep = cfg.num_instance_convs > 0
        kernel_out = cfg.instance_channels if deep else kernel_in
        cate_out = cfg.instance_channels if deep else cfg.in_channels
        self.kernel_pred = nn.Conv2d(kernel_out, cfg.num_kernels, 3, padding=1)
        self.cate_pred = nn.Conv2d(cate_out, cfg.num_classes, 3, padding=1)
        _init_normal(self)
        bias = -math.log((1.0 - cfg.prior_prob) / cfg.prior_prob)
        nn.init.constant_(self.cate_pred.bias, bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        cate_preds: list[Tensor] = []
        kernel_preds: list[Tensor] = []
        for feat, num_grid in zip(split_instance_features(features), self.num_grids, strict=True):
            if self.use_coord_conv:
                kernel_feat = torch.cat([feat, coord_features(feat)], dim=1)
            else:
                kernel_feat = feat
            kernel_feat = F.interpolate(
                kernel_feat, size=(num_grid, num_grid), mode="bilinear", align_corners=False
            )
            cate_feat = kernel_feat[:, : feat.shape[1]]
            kernel_preds.append(self.kernel_pred(self.kernel_tower(kernel_feat)))
            cate_preds.append(self.cate_pred(self.cate_tower(cate_feat)))
        return cate_preds, kernel_preds


class SOLOv2MaskHead(nn.Module):
    """Unified mask features at stride 4 from P2..P5: ``forward(features) -> (B, E, H/4, W/4)``."""

    def __init__(self, cfg: SOLOv2Config) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        for level in range(4):
            if level == 0:
                self.levels.append(
                    nn.Sequential(*_conv_norm_relu(cfg.in_channels, cfg.mask_channels, cfg.norm))
                )
                continue
            layers: list[nn.Module] = []
            for j in range(level):
                in_ch = cfg.mask_channels
                if j == 0:
                    in_ch = cfg.in_channels + (2 if level == 3 else 0)
                layers += _conv_norm_relu(in_ch, cfg.mask_channels, cfg.norm)
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.levels.append(nn.Sequential(*layers))
        self.pred = nn.Sequential(
            *_conv_norm_relu(cfg.mask_channels, cfg.num_masks, cfg.norm, kernel_size=1)
        )
        _init_normal(self)

    def forward(self, features: list[Tensor]) -> Tensor:
        if len(features) < 4:
            raise ValueError(f"SOLOv2MaskHead expects P2..P5, got {len(features)} levels")
        out = self.levels[0](features[0])
        for level in range(1, 4):
            x = features[level]
            if level == 3:
                x = torch.cat([x, coord_features(x)], dim=1)
            y = self.levels[level](x)
            if y.shape[-2:] != out.shape[-2:]:  # inputs not padded to /32: align to P2's grid
                y = F.interpolate(y, size=out.shape[-2:], mode="bilinear", align_corners=False)
            out = out + y
        return self.pred(out)


class SOLOv2Head(nn.Module):
    """Both SOLOv2 heads: ``forward([P2, P3, P4, P5, P6]) -> SOLOv2Outputs``."""

    def __init__(self, cfg: SOLOv2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.instance_head = SOLOv2InstanceHead(cfg)
        self.mask_head = SOLOv2MaskHead(cfg)

    def forward(self, features: list[Tensor]) -> SOLOv2Outputs:
        cate_preds, kernel_preds = self.instance_head(features)
        mask_feats = self.mask_head(features[:4])
        return SOLOv2Outputs(
            cate_preds=cate_preds, kernel_preds=kernel_preds, mask_feats=mask_feats
        )
