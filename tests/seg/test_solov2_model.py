"""Heads (shapes, init), the pure-torch model, the torchvision backbone, and overfitting two images."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from benchmarks.solov2_model import SOLOv2, build_torchvision_backbone
from stages.seg.solov2.config import SOLOv2Config
from stages.seg.solov2.heads import SOLOv2Head, coord_features
from stages.seg.solov2.targets import InstanceTargets

SMALL = SOLOv2Config(
    num_classes=2,
    in_channels=32,
    instance_channels=32,
    num_instance_convs=2,
    num_kernels=32,
    num_masks=32,
    mask_channels=32,
    num_grids=(12, 10, 8, 6, 4),
)


class TinyFPN(nn.Module):
    """A small conv pyramid: outputs P2..P6 (strides 4..64) with ``channels`` each, GroupNorm."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
                nn.GroupNorm(8, cout),
                nn.ReLU(inplace=True),
            )

        self.stem = nn.Sequential(block(3, 16, 2), block(16, channels, 2))  # stride 4
        self.down = nn.ModuleList([block(channels, channels, 2) for _ in range(3)])
        self.smooth = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in range(4)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c = [self.stem(x)]
        for down in self.down:
            c.append(down(c[-1]))
        p = [c[3]]  # top-down: upsample and add
        for level in (2, 1, 0):
            up = nn.functional.interpolate(p[0], size=c[level].shape[-2:], mode="nearest")
            p.insert(0, c[level] + up)
        p = [s(f) for s, f in zip(self.smooth, p, strict=True)]
        return p + [nn.functional.max_pool2d(p[-1], 1, stride=2)]


def test_head_shapes_init_and_coords() -> None:
    torch.manual_seed(0)
    head = SOLOv2Head(SMALL)
    feats = [torch.randn(2, 32, 64 // s, 96 // s) for s in (4, 8, 16, 32, 64)]
    out = head(feats)
    assert [tuple(c.shape) for c in out.cate_preds] == [(2, 2, s, s) for s in SMALL.num_grids]
    assert [tuple(k.shape) for k in out.kernel_preds] == [(2, 32, s, s) for s in SMALL.num_grids]
    assert tuple(out.mask_feats.shape) == (2, 32, 16, 24)
    prior_bias = -math.log(0.99 / 0.01)
    assert torch.allclose(head.instance_head.cate_pred.bias, torch.full((2,), prior_bias))
    w = head.instance_head.kernel_tower[0].weight
    assert w.shape[1] == 32 + 2  # coordinate channels on the kernel branch only
    assert head.instance_head.cate_tower[0].weight.shape[1] == 32
    assert abs(w.std().item() - 0.01) < 0.002
    coords = coord_features(torch.zeros(1, 5, 3, 4))
    assert coords[0, 0, 0].tolist() == pytest.approx([-1, -1 / 3, 1 / 3, 1])
    assert coords[0, 1, :, 0].tolist() == pytest.approx([-1, 0, 1])


def test_default_config_head_has_reference_layout() -> None:
    head = SOLOv2Head(SOLOv2Config())
    inst = head.instance_head
    convs = [m for m in inst.kernel_tower if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and convs[0].in_channels == 258 and convs[-1].out_channels == 512
    assert inst.kernel_pred.out_channels == 256 and inst.cate_pred.out_channels == 80
    assert sum(isinstance(m, nn.GroupNorm) for m in inst.cate_tower) == 4
    assert head.mask_head.levels[3][0].in_channels == 258  # coords at P5 only
    assert head.mask_head.levels[2][0].in_channels == 256


def test_torchvision_backbone_gives_p2_to_p6() -> None:
    backbone = build_torchvision_backbone("resnet18")
    feats = backbone(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (1, 256, 16, 24),
        (1, 256, 8, 12),
        (1, 256, 4, 6),
        (1, 256, 2, 3),
        (1, 256, 1, 2),
    ]


def test_losses_and_inference_under_bfloat16_autocast() -> None:
    torch.manual_seed(0)
    images, targets = _blob_images()
    model = SOLOv2(TinyFPN(32), SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
        (losses["loss_ins"] + losses["loss_cate"]).backward()
        model.eval()
        preds = model(images)
    assert len(preds) == 2 and preds[0].masks.dtype == torch.bool


def _blob_images() -> tuple[torch.Tensor, list[InstanceTargets]]:
    """Two 128x128 images with 1 and 3 elliptic blobs of two classes on a noisy background."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    specs = [
        [(40, 60, 22, 30, 0)],
        [(30, 30, 14, 18, 1), (90, 40, 20, 16, 0), (70, 95, 24, 20, 1)],
    ]
    colours = torch.tensor([[1.0, -0.5, -0.5], [-0.5, -0.5, 1.0]])
    images, targets = [], []
    for blobs in specs:
        img = 0.3 * torch.randn(3, 128, 128, generator=g)
        masks, labels = [], []
        for cy, cx, ry, rx, cls in blobs:
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            img[:, m] += colours[cls][:, None]
            masks.append(m)
            labels.append(cls)
        m = torch.stack(masks)
        rows, cols = m.any(2), m.any(1)
        boxes = torch.stack(
            [
                cols.float().argmax(1),
                rows.float().argmax(1),
                128 - cols.flip(1).float().argmax(1),
                128 - rows.flip(1).float().argmax(1),
            ],
            dim=1,
        ).float()
        images.append(img)
        targets.append(InstanceTargets(masks=m, labels=torch.tensor(labels), boxes=boxes))
    return torch.stack(images), targets


def _best_ious(preds, targets) -> list[float]:
    out = []
    for p, t in zip(preds, targets, strict=True):
        for m, label in zip(t.masks, t.labels, strict=True):
            same = p.masks[p.labels == label]
            if same.shape[0] == 0:
                out.append(0.0)
                continue
            inter = (same & m).flatten(1).sum(1).float()
            union = (same | m).flatten(1).sum(1).float()
            out.append(float((inter / union).max()))
    return out


@pytest.fixture
def one_thread():
    """Single-threaded torch: on the shared 2-core machine, 2 threads are much slower under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_overfits_two_small_images(one_thread) -> None:
    torch.manual_seed(0)
    images, targets = _blob_images()
    model = SOLOv2(TinyFPN(32), SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    first = None
    for _ in range(60):
        model.train()
        losses = model(images, targets)
        loss = losses["loss_ins"] + losses["loss_cate"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    preds = model(images)
    ious = _best_ious(preds, targets)
    print(
        f"overfit: loss {first:.3f} -> {loss.item():.3f}, IoUs {ious}, {time.perf_counter() - start:.1f}s"
    )
    assert loss.item() < 0.3 * first
    assert min(ious) > 0.7, ious  # the brief asks > 0.5; ~0.93 is reached (stride-4 masks)


@pytest.mark.cuda
def test_losses_and_gradients_on_cuda_match_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    images, targets = _blob_images()
    model = SOLOv2(TinyFPN(32), SMALL)
    gpu_model = copy.deepcopy(model).cuda()
    cpu = model(images, targets)
    gpu = gpu_model(images.cuda(), [t.to("cuda") for t in targets])
    for key in cpu:
        assert torch.allclose(gpu[key].cpu(), cpu[key], rtol=1e-3, atol=1e-4), key
    (cpu["loss_ins"] + cpu["loss_cate"]).backward()
    (gpu["loss_ins"] + gpu["loss_cate"]).backward()
    for (name, p), q in zip(model.named_parameters(), gpu_model.parameters(), strict=True):
        if p.grad is not None:
            assert torch.allclose(q.grad.cpu(), p.grad, rtol=1e-2, atol=1e-4), name
    with torch.autocast("cuda", dtype=torch.float16):  # the AMP path of train-seg
        amp = gpu_model(images.cuda(), [t.to("cuda") for t in targets])
    assert all(torch.isfinite(v) for v in amp.values())
