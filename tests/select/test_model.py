"""The selector network: FPN level mapping, multi-level RoIAlign, frozen parts, heads and weight loading."""

from __future__ import annotations

import logging
import math
import urllib.error

import pytest
import torch
import torchvision

from stages.common.errors import DependencyError, InputError
from stages.select.model import (
    SelectorNet,
    build_model,
    load_backbone_state,
    multilevel_roi_align,
    roi_levels,
)


def _box(side: float) -> list[float]:
    return [0.0, 0.0, side, side]


def test_roi_levels_follow_finest_scale_56():
    # sqrt(wh) < 112 -> P2 (0), [112, 224) -> P3, [224, 448) -> P4, [448, 896) -> P5, >= 896 -> P6
    sides = [1, 50, 111.9, 112, 223, 224, 447, 448, 895, 896, 5000]
    expected = [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    boxes = torch.tensor([_box(s) for s in sides])
    assert roi_levels(boxes).tolist() == expected
    # a non-square box uses sqrt(w h): 56 x 896 -> sqrt = 224 -> level 2
    assert roi_levels(torch.tensor([[10.0, 10.0, 66.0, 906.0]])).tolist() == [2]


def test_multilevel_roi_align_reads_each_box_from_its_level():
    # level l is filled with the constant l + 1, batch image b adds 10 * b
    feats = [
        torch.full((2, 1, 64 // s, 64 // s), float(lvl + 1))
        + torch.tensor([0.0, 10.0]).view(2, 1, 1, 1)
        for lvl, s in enumerate((1, 2, 4, 8, 16))
    ]
    rois = torch.tensor(
        [
            [0, 0, 0, 50, 50],  # P2
            [1, 0, 0, 150, 150],  # P3, image 1
            [0, 0, 0, 300, 300],  # P4
            [1, 0, 0, 1000, 1000],  # P6, image 1
        ],
        dtype=torch.float32,
    )
    # Boxes larger than the map still sample inside it (constant maps): the value is the level tag.
    out = multilevel_roi_align(feats, rois, output_size=7)
    assert out.shape == (4, 1, 7, 7)
    centre = out[:, 0, 0, 0].tolist()
    assert centre == pytest.approx([1.0, 12.0, 3.0, 15.0])


def test_network_shapes_frozen_parts_and_heads():
    torch.manual_seed(0)
    net = SelectorNet(num_classes=3, backbone="resnet18", fpn_channels=64, fc_dim=64)
    net.train()
    feats = net.features(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert all(f.shape[1] == 64 for f in feats)
    rois = torch.tensor([[0, 4.0, 4.0, 40.0, 30.0], [1, 10.0, 0.0, 90.0, 60.0]])
    emb = net.roi_embed(feats, rois)
    assert emb.shape == (2, 64)
    cls0, ins0 = net.psm_head(emb)
    cls1, ins1 = net.prm_head(emb)
    assert cls0.shape == ins0.shape == (2, 4)  # K0 = C + 1 (background column last)
    assert cls1.shape == ins1.shape == (2, 3)  # K1 = C
    # stem and stage 1 frozen, later stages train
    assert not any(p.requires_grad for p in net.backbone.conv1.parameters())
    assert not any(p.requires_grad for p in net.backbone.layer1.parameters())
    assert all(p.requires_grad for p in net.backbone.layer2.parameters())
    # BN statistics frozen: eval mode even after .train(), running stats unchanged by a forward
    bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = bns[5].running_mean.clone()
    net.features(torch.randn(1, 3, 64, 64) * 5 + 3)
    assert torch.equal(before, bns[5].running_mean)
    # GroupNorm(32) on every FPN conv: 4 lateral + 4 output + P6
    gns = [m for m in net.fpn.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(gns) == 9 and all(m.num_groups == 32 for m in gns)
    # class branches start at the 0.01 prior
    assert net.fc_cls1.bias[0].item() == pytest.approx(-math.log(99.0), rel=1e-6)


def test_resnet50_fpn_channels():
    net = SelectorNet(num_classes=2, backbone="resnet50", fpn_channels=64, fc_dim=16)
    convs = [seq[0] for seq in net.fpn.lateral]
    assert [c.in_channels for c in convs] == [256, 512, 1024, 2048]


def test_weights_none_warns(caplog):
    with caplog.at_level(logging.WARNING):
        build_model(2, "resnet18", "none", 64, 16)
    assert "random weights" in caplog.text


def test_weights_from_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    net = build_model(2, "resnet18", str(path), 64, 16)
    assert torch.equal(net.backbone.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert torch.equal(net.backbone.bn1.running_var, ref.bn1.running_var)


def test_weights_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        build_model(2, "resnet18", str(tmp_path / "missing.pth"), 64, 16)
    wrong = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), wrong)
    with pytest.raises(InputError, match="does not fit"):
        build_model(2, "resnet18", str(wrong), 64, 16)
    net = SelectorNet(2, "resnet18", 64, 16)
    with pytest.raises(InputError, match="does not fit"):
        load_backbone_state(net, {"something.else": torch.zeros(1)}, "x.pth")


def test_imagenet_weights_offline_is_a_dependency_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(DependencyError, match="--weights PATH"):
        build_model(2, "resnet18", "imagenet", 64, 16)
