"""torchvision -> detectron2 weight conversion and the full-model gradient clipping optimizer."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from stages.seg.d2 import compat

if not compat.detectron2_available():
    pytest.skip("detectron2 is not installed (run `make install`)", allow_module_level=True)

from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling.backbone.resnet import build_resnet_backbone  # noqa: E402
from torchvision.models import resnet18  # noqa: E402

from stages.seg.d2.config import get_sapnet_cfg  # noqa: E402
from stages.seg.d2.solver import FullModelClipSGD  # noqa: E402
from stages.seg.d2.weights import (  # noqa: E402
    CONVERTED_NAME,
    convert_torchvision_resnet,
    resolve_weights,
    torchvision_to_detectron2_name,
)


def test_name_mapping() -> None:
    p = "backbone.bottom_up."
    assert torchvision_to_detectron2_name("conv1.weight") == p + "stem.conv1.weight"
    assert torchvision_to_detectron2_name("bn1.running_var") == p + "stem.conv1.norm.running_var"
    assert torchvision_to_detectron2_name("layer1.2.bn3.bias") == p + "res2.2.conv3.norm.bias"
    assert (
        torchvision_to_detectron2_name("layer4.0.downsample.0.weight")
        == p + "res5.0.shortcut.weight"
    )
    assert (
        torchvision_to_detectron2_name("layer3.0.downsample.1.running_mean")
        == p + "res4.0.shortcut.norm.running_mean"
    )
    assert torchvision_to_detectron2_name("fc.weight") is None
    assert torchvision_to_detectron2_name("bn1.num_batches_tracked") is None


def test_converted_resnet_matches_detectron2_backbone_exactly() -> None:
    cfg = get_sapnet_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    bottom_up = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    expected = {"backbone.bottom_up." + k: v for k, v in bottom_up.state_dict().items()}
    converted = convert_torchvision_resnet(resnet18(weights=None).state_dict())
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)


def test_resolve_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tv = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), tv)
    out = resolve_weights(str(tv), tmp_path / "out", "RGB")
    assert out == str(tmp_path / "out" / CONVERTED_NAME)
    saved = torch.load(out, weights_only=True)
    assert "backbone.bottom_up.res5.1.conv2.norm.weight" in saved["model"]
    other = tmp_path / "d2.pth"
    torch.save({"model": {"backbone.x": torch.zeros(1)}}, other)
    assert resolve_weights(str(other), tmp_path / "out", "RGB") == str(other)
    with caplog.at_level(logging.WARNING):
        assert resolve_weights(None, tmp_path, "RGB") == ""
    assert "RANDOM initialisation" in caplog.text


def test_full_model_clipping_uses_the_global_norm() -> None:
    a = torch.nn.Parameter(torch.zeros(1))
    b = torch.nn.Parameter(torch.zeros(1))
    opt = FullModelClipSGD([a, b], max_norm=1.0, lr=1.0, momentum=0.0)
    a.grad = torch.tensor([3.0])
    b.grad = torch.tensor([4.0])  # global norm 5 -> scaled by 1/5 (per-parameter clipping: 1 and 1)
    opt.step()
    assert a.item() == pytest.approx(-0.6) and b.item() == pytest.approx(-0.8)
    assert opt.last_grad_norm == pytest.approx(5.0)
