"""Benchmark the plain-PyTorch SOLOv2 (R50-FPN, random weights): training and inference throughput.

    .venv/bin/python benchmarks/bench_seg.py                           # 512x384, batch 2, CPU
    .venv/bin/python benchmarks/bench_seg.py --size 640x480 --iters 5 --batch 1 --device cuda

Inputs are synthetic (seeded): images of ``--size`` (W x H, padded to a multiple of 32) with
``--objects`` random elliptic instances each (random classes, sizes 16-40% of the short side), so that
every level of the target assignment is exercised. The reference SOLOv2 config (80 classes, grids
40/36/24/16/12, 512-channel towers) runs on a torchvision ResNet-50-FPN with random weights.

Measured, mean over ``--iters`` timed steps after ``--warmup`` untimed ones:

* training: one SGD step (backbone + heads + target assignment + losses + backward + step) -> iterations/s
  and images/s; target assignment alone (``assign_targets``) and its share of the step;
* inference: forward + post-processing at batch 1 (``torch.no_grad``) -> images/s. With random weights no
  cell passes ``score_thr``, so a second case times the post-processing alone on synthetic head outputs
  where every cell and class scores in (0, 1): thousands of candidates, nms_pre = 500 masks through
  Matrix NMS (the worst case).

Prints a Markdown table and writes ``--out`` (JSON with ``rows`` of ``{section, case, metric, value,
unit, notes}``, plus ``env`` and ``args``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.solov2_model import SOLOv2, build_torchvision_backbone  # noqa: E402
from stages.seg.solov2.config import SOLOv2Config  # noqa: E402
from stages.seg.solov2.heads import SOLOv2Outputs  # noqa: E402
from stages.seg.solov2.inference import solov2_inference  # noqa: E402
from stages.seg.solov2.losses import solov2_losses  # noqa: E402
from stages.seg.solov2.targets import InstanceTargets, assign_targets  # noqa: E402

COLUMNS = ("section", "case", "metric", "value", "unit", "notes")


def row(section: str, case: str, metric: str, value: Any, unit: str, notes: str = "") -> dict:
    return dict(zip(COLUMNS, (section, case, metric, value, unit, notes), strict=True))


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> ``(W, H)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--size must look like 512x384, got {text!r}") from exc
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"--size must be positive, got {text!r}")
    return w, h


def synthetic_batch(
    batch: int, width: int, height: int, objects: int, num_classes: int, gen: torch.Generator
) -> tuple[torch.Tensor, list[InstanceTargets]]:
    """Random normalised images padded to /32 and ``objects`` elliptic instances per image."""
    pad_h, pad_w = -(-height // 32) * 32, -(-width // 32) * 32
    images = torch.zeros(batch, 3, pad_h, pad_w)
    images[:, :, :height, :width] = torch.randn(batch, 3, height, width, generator=gen)
    yy, xx = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    short = min(width, height)
    targets = []
    for _ in range(batch):
        radii = (0.08 + 0.12 * torch.rand(objects, 2, generator=gen)) * short
        centres = torch.rand(objects, 2, generator=gen) * torch.tensor([width, height])
        masks = ((xx - centres[:, None, None, 0]) / radii[:, None, None, 0]) ** 2 + (
            (yy - centres[:, None, None, 1]) / radii[:, None, None, 1]
        ) ** 2 <= 1.0
        cols, rows = masks.any(dim=1), masks.any(dim=2)
        boxes = torch.stack(
            [
                cols.float().argmax(1),
                rows.float().argmax(1),
                width - cols.flip(1).float().argmax(1),
                height - rows.flip(1).float().argmax(1),
            ],
            dim=1,
        ).float()
        labels = torch.randint(0, num_classes, (objects,), generator=gen)
        targets.append(InstanceTargets(masks=masks, labels=labels, boxes=boxes))
    return images, targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(
    model: SOLOv2,
    cfg: SOLOv2Config,
    images: torch.Tensor,
    targets: list[InstanceTargets],
    warmup: int,
    iters: int,
    device: torch.device,
) -> dict[str, float]:
    """Mean seconds per SGD step and per ``assign_targets`` call."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    step_times, assign_times = [], []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        outputs = model.head(model.features(images))
        _sync(device)
        t1 = time.perf_counter()
        assigned = assign_targets(targets, tuple(outputs.mask_feats.shape[-2:]), cfg)
        _sync(device)
        t2 = time.perf_counter()
        losses = solov2_losses(outputs, targets, cfg, assigned=assigned)
        loss = losses["loss_ins"] + losses["loss_cate"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        t3 = time.perf_counter()
        if i >= warmup:
            step_times.append(t3 - t0)
            assign_times.append(t2 - t1)
        print(f"  train step {i + 1}/{warmup + iters}: {t3 - t0:.3f} s (assign {t2 - t1:.4f} s)")
    return {
        "step_s": sum(step_times) / len(step_times),
        "assign_s": sum(assign_times) / len(assign_times),
    }


@torch.no_grad()
def bench_infer(
    model: SOLOv2, images: torch.Tensor, sizes: list[tuple[int, int]], warmup: int, iters: int
) -> float:
    """Mean seconds per batch of forward + post-processing."""
    model.eval()
    device = images.device
    times = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        model(images, image_sizes=sizes)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def bench_postprocess_worst(
    cfg: SOLOv2Config, pad_hw: tuple[int, int], warmup: int, iters: int, device: torch.device
) -> tuple[float, int]:
    """Seconds of ``solov2_inference`` on random outputs where every cell/class scores in (0, 1)."""
    gen = torch.Generator().manual_seed(1)
    hf, wf = pad_hw[0] // 4, pad_hw[1] // 4
    outputs = SOLOv2Outputs(
        cate_preds=[
            torch.randn(1, cfg.num_classes, s, s, generator=gen).to(device) for s in cfg.num_grids
        ],
        kernel_preds=[
            torch.randn(1, cfg.num_kernels, s, s, generator=gen).to(device) for s in cfg.num_grids
        ],
        mask_feats=torch.randn(1, cfg.num_masks, hf, wf, generator=gen).to(device),
    )
    times, kept = [], 0
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        (pred,) = solov2_inference(outputs, [pad_hw], cfg)
        _sync(device)
        kept = int(pred.scores.numel())
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times), kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=parse_size, default=(512, 384), help="W x H (default 512x384)"
    )
    parser.add_argument("--iters", type=int, default=3, help="timed iterations (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations (default 1)")
    parser.add_argument("--batch", type=int, default=2, help="training batch size (default 2)")
    parser.add_argument("--objects", type=int, default=6, help="instances per image (default 6)")
    parser.add_argument(
        "--backbone", default="resnet50", help="torchvision ResNet (default resnet50)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "seg.json")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.batch < 1:
        parser.error("--iters and --batch must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    cfg = SOLOv2Config()
    width, height = args.size
    model = SOLOv2(build_torchvision_backbone(args.backbone), cfg).to(device)
    images, targets = synthetic_batch(args.batch, width, height, args.objects, cfg.num_classes, gen)
    images = images.to(device)
    targets = [t.to(device) for t in targets]
    pad_hw = (images.shape[-2], images.shape[-1])
    print(
        f"SOLOv2 {args.backbone}-FPN, {width}x{height} (padded {pad_hw[1]}x{pad_hw[0]}), {device}"
    )

    train = bench_train(model, cfg, images, targets, args.warmup, args.iters, device)
    infer_s = bench_infer(model, images[:1], [(height, width)], args.warmup, args.iters)
    post_s, post_kept = bench_postprocess_worst(cfg, pad_hw, args.warmup, args.iters, device)

    case = f"{args.backbone}-FPN {width}x{height}"
    rows = [
        row("train", f"{case} batch {args.batch}", "step time", round(train["step_s"], 4), "s"),
        row(
            "train",
            f"{case} batch {args.batch}",
            "iterations/s",
            round(1 / train["step_s"], 4),
            "it/s",
        ),
        row(
            "train",
            f"{case} batch {args.batch}",
            "images/s",
            round(args.batch / train["step_s"], 4),
            "img/s",
        ),
        row(
            "train",
            f"{case} batch {args.batch}",
            "assign_targets time",
            round(train["assign_s"], 5),
            "s",
            f"{args.objects} objects/image",
        ),
        row(
            "train",
            f"{case} batch {args.batch}",
            "assign_targets share of step",
            round(train["assign_s"] / train["step_s"], 5),
            "ratio",
        ),
        row(
            "infer",
            f"{case} batch 1",
            "images/s",
            round(1 / infer_s, 4),
            "img/s",
            "random weights: no candidate passes score_thr",
        ),
        row("infer", f"{case} batch 1", "time per image", round(infer_s, 4), "s"),
        row(
            "infer",
            f"post-processing worst case {pad_hw[1]}x{pad_hw[0]}",
            "time per image",
            round(post_s, 4),
            "s",
            f"nms_pre 500 masks through Matrix NMS, {post_kept} kept",
        ),
    ]
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    print()
    print("| section | case | metric | value | unit | notes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "rows": rows,
        "env": env,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
