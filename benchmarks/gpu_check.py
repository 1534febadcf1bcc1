"""`make gpu-check`: what a first CUDA GPU must prove, in one command, offline, in under 8 minutes.

    make gpu-check                 # = .venv/bin/python benchmarks/gpu_check.py  (needs one CUDA GPU)
    make gpu-check SMOKE=1         # = ... --cpu-smoke: the same code at toy sizes on CPU (in the test suite)

Writes ``--out`` (default ``runs/gpu-check``): ``summary.md`` (one table) and ``summary.json`` (every row, each
section's status, seconds and error, the settings). No network and no weights: SAM and the CNNs are built from
their registries with random initialisation (timings do not depend on the values).

Sections, run one after the other, each in its own subprocess with its own time box (``BOXES_S``, scaled by
``--box-scale``), so a section that fails or overruns is reported and the others still run; a section writes its
rows as it measures them, so one cut short keeps what it had:

1. ``tests``: every test marked ``@pytest.mark.cuda`` (skipped without CUDA; CPU-vs-CUDA agreement tests);
2. ``propose``: segment-anything's ``SamPredictor`` in fp32, one call per point, vs sapnet's path (bf16 autocast,
   SDPA attention, all points of an image in one call; then ``torch.compile`` of the image encoder), ViT-H at
   1024 px, 16 and 64 points per image: images/s, ms per point, peak GPU memory; fp32-vs-bf16 mask agreement
   (mean IoU over every proposal, same weights, same points);
3. ``select``: one training step of the ResNet-50 selector at the reference scale (batch 4, short side 800),
   plain MIL vs every SAPNet module, peak memory, prediction objects/s (``bench_select.run_case``);
4. ``seg``: SOLOv2 R50-FPN training at the reference scale (batch 2 per GPU, 1333x800), fp32 vs AMP (fp16 +
   GradScaler, as detectron2's AMPTrainer) over up to 200 iterations from the same seed and batches: images/s and
   the two loss curves (final-window means compared with the fp32 iteration-to-iteration spread); inference
   images/s (``bench_seg``);
5. ``chain``: ``sapnet propose`` (SAM ViT-B from a saved random checkpoint, bf16) -> ``select`` ->
   ``export-pseudo`` -> ``train-seg`` (+ COCO evaluation) on ``examples/coco-mini``, CLI, ``--device cuda``;
6. ``env``: GPU name, driver, torch, CUDA and cuDNN versions (run first).

``--cpu-smoke`` runs every section on CPU, one thread, at toy sizes (SAM ``vit_test`` with 2 and 4 points, a
ResNet-18 selector and ResNet-18 SOLOv2 at 64 px, one image of coco-mini, one iteration), where bf16 SAM is not
available (fp32 is used and said so) and SOLOv2 trains without autocast (bf16 convolutions are very slow on CPU).
Its numbers mean nothing; it proves that the check runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

COLUMNS = ("section", "case", "metric", "value", "unit", "notes")
ORDER = ("env", "tests", "chain", "propose", "select", "seg")
TITLES = {
    "tests": "1. CUDA-only and CPU-vs-CUDA tests",
    "propose": "2. propose: SAM ViT-H",
    "select": "3. select: selector training step",
    "seg": "4. train-seg: SOLOv2 R50-FPN",
    "chain": "5. the whole chain on coco-mini",
    "env": "6. environment",
}
# Seconds per section on one GPU; together 455 s, so the check ends within 8 minutes with start-up.
BOXES_S = {"env": 25, "tests": 45, "chain": 100, "propose": 120, "select": 70, "seg": 95}
# CPU smoke: about 90 s of CPU time in all; the boxes leave room for a busy machine (--box-scale for more).
SMOKE_BOXES_S = {"env": 60, "tests": 150, "chain": 360, "propose": 150, "select": 200, "seg": 200}
# Test hook: a section named here raises at its start (the check must report it and run the others).
FAIL_ENV = "SAPNET_GPU_CHECK_FAIL"


class Rows:
    """Appends rows to a JSON-lines file as they are measured (so a killed section keeps them)."""

    def __init__(self, section: str, path: Path):
        self.section, self.path = section, path

    def add(self, case: str, metric: str, value: Any, unit: str = "", notes: str = "") -> None:
        if hasattr(value, "item"):
            value = value.item()
        record = dict(zip(COLUMNS, (self.section, case, metric, value, unit, notes), strict=True))
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"[{self.section}] {case} | {metric} = {value} {unit} {notes}", flush=True)


def _device(smoke: bool):
    import torch

    from stages.common.devices import resolve_device

    return torch.device("cpu") if smoke else resolve_device("cuda")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


# ---------------------------------------------------------------------------------------------- sections


def section_env(rows: Rows, smoke: bool, budget_s: float) -> None:
    import torch

    rows.add("python", "version", platform.python_version())
    rows.add("torch", "version", torch.__version__)
    rows.add("torch", "CUDA build", str(torch.version.cuda))
    rows.add("torch", "cuDNN", str(torch.backends.cudnn.version()))
    rows.add("machine", "CPU cores", os.cpu_count() or 0)
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rows.add("cuda", "devices", n, "", "cpu smoke" if smoke else "")
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        rows.add(f"cuda:{i}", "name", p.name, "", f"compute capability {p.major}.{p.minor}")
        rows.add(f"cuda:{i}", "memory", round(p.total_memory / 2**30, 1), "GiB")
        rows.add(f"cuda:{i}", "bf16 supported", bool(torch.cuda.is_bf16_supported()))
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        rows.add("driver", "version", out.stdout.strip().splitlines()[0] if out.stdout else "?")
    else:
        rows.add("driver", "version", "-", "", "nvidia-smi not found")


def cuda_test_files() -> list[str]:
    """Test files that hold ``@pytest.mark.cuda`` tests (a text scan: no import, no collection cost)."""
    return sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").rglob("test_*.py")
        if "pytest.mark.cuda" in p.read_text(encoding="utf-8")
    )


def section_tests(rows: Rows, smoke: bool, budget_s: float) -> None:
    import xml.etree.ElementTree as ET

    files = cuda_test_files()
    rows.add(
        "collected", "files with CUDA tests", len(files), "", ", ".join(Path(f).name for f in files)
    )
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
               f"--junitxml={junit}", *files]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(budget_s - 5, 5)
        )
        if not junit.is_file():
            raise RuntimeError(
                f"pytest wrote no report (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
            )
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = f"{Path(case.get('file') or case.get('classname', '')).name}::{case.get('name')}"
            outcome, why = "passed", ""
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome, why = "failed", (child.get("message") or "")[:160]
                elif child.tag == "skipped":
                    outcome, why = "skipped", (child.get("message") or "")[:160]
            counts[outcome] += 1
            rows.add(name, "outcome", outcome, "", why)
    for outcome, n in counts.items():
        rows.add("all", outcome, n, "tests")
    if counts["failed"] or proc.returncode not in (0, 5):
        raise RuntimeError(
            f"{counts['failed']} CUDA test(s) failed (pytest exit {proc.returncode})"
        )


def _mask_agreement(a, b) -> tuple[float, float, float]:
    """Mean and min IoU over masks ``(..., H, W)`` bool, and the largest fraction of differing pixels."""
    import torch

    a, b = a.flatten(0, -3).flatten(1), b.flatten(0, -3).flatten(1)
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    differ = (a ^ b).float().mean(1)
    return float(iou.mean()), float(iou.min()), float(differ.max())


def section_propose(rows: Rows, smoke: bool, budget_s: float) -> None:
    import copy

    import numpy as np
    import torch

    import benchmarks.bench_propose as bp
    from benchmarks.tiny_sam import register_vit_test
    from stages.propose.backends.sam import SamBackend, build_model

    register_vit_test()

    t_end = time.monotonic() + budget_s
    device = _device(smoke)
    model = "vit_test" if smoke else "vit_h"
    side = 256 if smoke else 1024
    precision = "fp32" if smoke else "bf16"
    note = "cpu smoke: fp32 (bf16 needs CUDA)" if smoke else ""
    args = argparse.Namespace(
        images=1 if smoke else 2, height=side, width=side, repeat=1, precision=precision,
        model_name=model,
    )  # fmt: skip
    images = bp._images(args)
    torch.manual_seed(0)
    sam = build_model(model).to(device)
    original = copy.deepcopy(sam)  # before SamBackend swaps the attention in place
    ips = {}
    few, many = (2, 4) if smoke else (16, 64)
    for points in (few, many):
        args.points = points
        pts = bp._points(args, side, side)
        size = f"{model} random init, {side}x{side}, {points} pts/image, {len(images)} images"
        _reset_peak(device)
        orig = bp._bench_original(original, images, pts, device, args)
        orig_mb = _peak_mb(device)
        _reset_peak(device)
        mine = bp._bench_sapnet(sam, images, pts, device, args)
        mine_mb = _peak_mb(device)
        case_o, case_m = (
            "original SamPredictor fp32, 1 call/point",
            f"sapnet {precision}+sdpa+batched",
        )
        for case, r, mb in ((case_o, orig, orig_mb), (case_m, mine, mine_mb)):
            rows.add(case, f"images/s at {points} pts", r["ips"], "images/s", size)
            rows.add(case, f"ms per point at {points} pts", 1000 / (r["ips"] * points), "ms")
            if mb is not None:
                rows.add(case, f"peak GPU memory at {points} pts", mb, "MB")
        ips[points] = (orig["ips"], mine["ips"])
        ratio = mine["ips"] / orig["ips"]
        target = "target >= 8x: " + ("met" if ratio >= 8 else "NOT met") if points == 64 else ""
        target += "; cpu smoke: toy sizes, not the target" if smoke else ""
        rows.add("speed-up", f"sapnet / original at {points} pts", ratio, "x", target)
    # fp32 vs bf16 masks: the same weights (already SDPA-patched), images and 64 points, all 6 proposals.
    pts = bp._points(args, side, side)
    ref = SamBackend(sam, model=model, checkpoint_sha256="random", device=device,
                     precision="fp32", attention="sdpa", batch_points=len(pts))  # fmt: skip
    fast = SamBackend(sam, model=model, checkpoint_sha256="random", device=device,
                      precision=precision, attention="sdpa", batch_points=len(pts))  # fmt: skip
    pairs = []
    for img in images:
        ref.encode(img)
        m_ref = ref.decode(pts, 6)[0].cpu()
        fast.encode(img)
        m_fast = fast.decode(pts, 6)[0].cpu()
        pairs.append((m_ref, m_fast))
    mean_iou, min_iou, differ = _mask_agreement(
        torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    )
    n_masks = sum(int(np.prod(p[0].shape[:2])) for p in pairs)
    agree = "target >= 0.98: " + ("met" if mean_iou >= 0.98 else "NOT met")
    rows.add(
        f"fp32 vs {precision}", "mean mask IoU", mean_iou, "", f"{n_masks} masks; {agree}; {note}"
    )
    rows.add(
        f"fp32 vs {precision}", "min mask IoU", min_iou, "", "random weights: near-zero logits flip"
    )
    rows.add(f"fp32 vs {precision}", "max fraction of pixels differing", differ, "")
    del ref
    # torch.compile of the image encoder, when the box leaves time for compiling (not in the CPU smoke).
    if smoke:
        rows.add(
            "sapnet + torch.compile(encoder)", "images/s at 64 pts", None, "", "skipped: cpu smoke"
        )
        return
    left = t_end - time.monotonic()
    if left < 60:
        rows.add(
            "sapnet + torch.compile(encoder)", "images/s", None, "", f"skipped: {left:.0f} s left"
        )
        return
    # Compiling ViT-H can take a minute or more: an alarm ends it before the section's box would (the rows
    # above are kept and the section stays "ok").
    import signal

    def _stop(signum: int, frame: Any) -> None:
        raise TimeoutError

    case = "sapnet + torch.compile(encoder)"
    previous = signal.signal(signal.SIGALRM, _stop)
    signal.alarm(max(int(left - 10), 1))
    try:
        fast.sam.image_encoder = torch.compile(fast.sam.image_encoder)
        t0 = time.perf_counter()
        fast.encode(images[0])
        _sync(device)
        rows.add(case, "compile + first encode", time.perf_counter() - t0, "s")
        # Timed like bench_propose._bench_sapnet (encode + one 3-mask decode of all points per image), on the
        # same backend: a new one would re-patch the attention and make dynamo recompile.
        enc = dec = 0.0
        for img in images:
            enc += bp.timed(lambda img=img: fast.encode(img), device)[1]
            dec += bp.timed(lambda: [x.cpu() for x in fast.decode(pts, 3)], device)[1]
    except TimeoutError:
        rows.add(
            case, "images/s at 64 pts", None, "", f"compiling took more than {left - 10:.0f} s"
        )
        return
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    ips_c = len(images) / (enc + dec)
    ratio = ips_c / ips[many][1]
    rows.add(case, "images/s at 64 pts", ips_c, "images/s")
    rows.add(
        "speed-up",
        "compiled / sapnet at 64 pts",
        ratio,
        "x",
        "compile helps" if ratio > 1.05 else "",
    )
    rows.add("speed-up", "compiled / original at 64 pts", ips_c / ips[many][0], "x")


def section_select(rows: Rows, smoke: bool, budget_s: float) -> None:
    import benchmarks.bench_select as bs

    device = _device(smoke)
    scale = dict(short_side=64, max_size=96, batch=1, num_images=1) if smoke else dict(
        short_side=800, max_size=1333, batch=4, num_images=8
    )  # fmt: skip
    backbone = "resnet18" if smoke else "resnet50"
    with tempfile.TemporaryDirectory() as tmp:
        store, images = bs._synthetic_store(Path(tmp), argparse.Namespace(**scale))
        base = {
            "store": store, "images": images, "device": str(device), "threads": os.cpu_count() or 1,
            "batch": scale["batch"], "warmup": 0 if smoke else 2, "iters": 1 if smoke else 5,
            "short_side": scale["short_side"], "max_size": scale["max_size"], "backbone": backbone,
        }  # fmt: skip
        res = {}
        for name, flags, mode in (("plain MIL", bs.PLAIN, "train"), ("all modules", bs.FULL, "train"),
                                  ("predict", bs.FULL, "predict")):  # fmt: skip
            spec = {**base, "mode": mode, "flags": flags, "pair": name == "all modules"}
            r = res[name] = bs.run_case(spec)
            h, w = r["image_size"]
            size = f"{backbone}, {w}x{h} padded, batch {scale['batch']}, {r['objects_per_image']:.1f} obj/img"
            if mode == "train":
                rows.add(f"train, {name}", "images/s", r["images_per_s"], "images/s", size)
            else:
                rows.add("predict, all modules", "objects/s", r["objects_per_s"], "objects/s", size)
                rows.add("predict, all modules", "images/s", r["images_per_s"], "images/s")
            if "peak_gpu_mb" in r:
                rows.add(f"{mode}, {name}", "peak GPU memory", r["peak_gpu_mb"], "MB")
    full = res["all modules"]
    share = 1 - full["paired_plain_min_seconds"] / full["min_seconds_per_step"]
    rows.add("all modules vs plain", "share of the step spent on the SAPNet modules", share, "",
             "target < 0.15: " + ("met" if share < 0.15 else "NOT met"))  # fmt: skip


def _train_curve(
    device, backbone: str, amp: bool, batches, iters: int, deadline: float
) -> dict[str, Any]:
    """SGD on SOLOv2 (random init, seed 0) over ``batches`` cycled: per-iteration losses and times."""
    import torch

    from benchmarks.solov2_model import SOLOv2, build_torchvision_backbone
    from stages.seg.solov2.config import SOLOv2Config

    torch.manual_seed(0)
    cfg = SOLOv2Config()
    model = SOLOv2(build_torchvision_backbone(backbone), cfg).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.bfloat16  # detectron2's AMPTrainer: fp16 + GradScaler
    scaler = torch.amp.GradScaler("cuda", enabled=amp and cuda)
    losses, times = [], []
    _reset_peak(device)
    for it in range(iters):
        if time.monotonic() > deadline:
            break
        for group in opt.param_groups:  # linear warm-up over 50 iterations, as SOLOv2's schedule
            group["lr"] = 0.01 * min(1.0, (it + 1) / 50)
        images, targets = batches[it % len(batches)]
        _sync(device)
        t0 = time.perf_counter()
        # As AMPTrainer: losses inside autocast. Not on CPU: bf16 convolutions there can be 100x slower.
        with torch.autocast(device.type, dtype=dtype, enabled=amp and cuda):
            loss_dict = model(images, targets)
        loss = loss_dict["loss_ins"] + loss_dict["loss_cate"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        scaler.step(opt)
        scaler.update()
        _sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return {"losses": losses, "times": times, "peak_mb": _peak_mb(device), "model": model}


def section_seg(rows: Rows, smoke: bool, budget_s: float) -> None:
    import statistics

    import torch

    import benchmarks.bench_seg as bseg

    device = _device(smoke)
    width, height, batch = (64, 64, 1) if smoke else (1333, 800, 2)
    backbone = "resnet18" if smoke else "resnet50"
    iters, warm = (1, 0) if smoke else (200, 10)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(1 if smoke else 4):
        images, targets = bseg.synthetic_batch(batch, width, height, 6, 80, gen)
        batches.append((images.to(device), [t.to(device) for t in targets]))
    t_end = time.monotonic() + budget_s - 15  # leave time for inference
    size = f"{backbone}-FPN random init, {width}x{height}, batch {batch}"
    curves = {}
    for name, amp in (("fp32", False), ("AMP", True)):
        share = (t_end - time.monotonic()) / (2 if name == "fp32" else 1)
        deadline = time.monotonic() + share
        curves[name] = run = _train_curve(device, backbone, amp, batches, iters, deadline)
        timed = run["times"][warm:] or run["times"]
        step = statistics.median(timed)
        amp_note = (
            "fp16 autocast + GradScaler" if device.type == "cuda" else "cpu smoke: autocast off"
        )
        rows.add(f"train {name}", "images/s", batch / step, "images/s",
                 f"{size}; {len(run['losses'])} iterations" + (f"; {amp_note}" if amp else ""))  # fmt: skip
        if run["peak_mb"] is not None:
            rows.add(f"train {name}", "peak GPU memory", run["peak_mb"], "MB")
        if name == "fp32":
            model = run.pop("model")
        else:
            run.pop("model")
    s_fp32 = statistics.median(curves["fp32"]["times"][warm:] or curves["fp32"]["times"])
    s_amp = statistics.median(curves["AMP"]["times"][warm:] or curves["AMP"]["times"])
    ratio = s_fp32 / s_amp
    rows.add("AMP vs fp32", "training speed-up", ratio, "x",
             "target >= 1.5x: " + ("met" if ratio >= 1.5 else "NOT met"))  # fmt: skip
    n = min(len(curves["fp32"]["losses"]), len(curves["AMP"]["losses"]))
    window = max(1, min(50, n // 2))
    a, b = curves["fp32"]["losses"][n - window : n], curves["AMP"]["losses"][n - window : n]
    diff = abs(statistics.fmean(a) - statistics.fmean(b))
    noise = statistics.pstdev(a) if len(a) > 1 else float("nan")
    same = diff <= noise if noise == noise else None
    rows.add("AMP vs fp32", f"loss, mean of iterations {n - window + 1}-{n}",
             statistics.fmean(b), "", f"fp32 {statistics.fmean(a):.4f}")  # fmt: skip
    rows.add("AMP vs fp32", "|mean difference| / fp32 spread", diff / noise if noise else None, "",
             "curve unchanged within noise: " + {True: "yes", False: "NO", None: "n/a"}[same]
             + f" (over {n} iterations)")  # fmt: skip
    with open(rows.path.with_name("seg_loss_curves.json"), "w", encoding="utf-8") as fh:
        json.dump({k: v["losses"] for k, v in curves.items()}, fh)
    infer_s = bseg.bench_infer(model, batches[0][0][:1], [(height, width)], 1, 1 if smoke else 10)
    rows.add("inference fp32, batch 1", "images/s", 1 / infer_s, "images/s", f"{width}x{height}")


def _subset(src: Path, dst: Path, n_images: int | None) -> Path:
    """``src`` COCO JSON cut to its first ``n_images`` images (all when None)."""
    doc = json.loads(src.read_text(encoding="utf-8"))
    if n_images is not None:
        doc["images"] = doc["images"][:n_images]
        keep = {im["id"] for im in doc["images"]}
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
    dst.write_text(json.dumps(doc), encoding="utf-8")
    return dst


def section_chain(rows: Rows, smoke: bool, budget_s: float) -> None:
    import torch

    from benchmarks.tiny_sam import register_vit_test
    from sapnet_cli.app import main
    from stages.propose.backends.sam import build_model

    register_vit_test()

    ex = REPO / "examples" / "coco-mini"
    device = "cpu" if smoke else "cuda"
    model = "vit_test" if smoke else "vit_b"
    n_img = 1 if smoke else None
    work = rows.path.parent / "chain"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.manual_seed(0)
    ckpt = work / f"sam_{model}_random.pth"
    torch.save(build_model(model).state_dict(), ckpt)
    points = _subset(ex / "train" / "points.json", work / "points.json", n_img)
    val = _subset(ex / "val" / "annotations.json", work / "val.json", n_img)
    short, long_ = ("64", "96") if smoke else ("512", "853")
    iters = "1" if smoke else "6"
    steps = {
        "propose": ["propose", "--annotations", str(points), "--images", str(ex / "images"),
                    "--store", str(work / "store.zarr"), "--backend", "sam", "--model", model,
                    "--checkpoint", str(ckpt), "--device", device,
                    "--precision", "fp32" if smoke else "bf16", "--no-progress"],
        "select": ["select", "--store", str(work / "store.zarr"), "--images", str(ex / "images"),
                   "--out", str(work / "select"), "--backbone", "resnet18", "--weights", "none",
                   "--iters", iters, "--batch-size", "1", "--short-side", short, "--max-size", long_,
                   "--device", device, "--num-workers", "0"],
        "export-pseudo": ["export-pseudo", "--store", str(work / "store.zarr"), "--selections",
                          str(work / "select"), "--out", str(work / "pseudo.json"), "--selector", "sapnet"],
        "train-seg": ["train-seg", "--train", str(work / "pseudo.json"), "--images", str(ex / "images"),
                      "--out", str(work / "seg"), "--val", str(val), "--val-images", str(ex / "images"),
                      "--backbone", "R50", "--iters", iters, "--ims-per-batch", "1", "--min-size", short,
                      "--max-size", long_, "--device", device, "--opts", "SOLVER.WARMUP_ITERS=1"],
    }  # fmt: skip
    expected = {
        "propose": work / "store.zarr" / "zarr.json",
        "select": work / "select" / "selections.json",
        "export-pseudo": work / "pseudo.json",
        "train-seg": work / "seg" / "model_final.pth",
    }
    failed = []
    for name, argv in steps.items():
        t0 = time.perf_counter()
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        ok = code == 0 and expected[name].is_file()
        rows.add(name, "exit code", code, "", f"{time.perf_counter() - t0:.1f} s, --device {device}"
                 + ("" if ok else f"; missing {expected[name].name}" if code == 0 else ""))  # fmt: skip
        if not ok:
            failed.append(name)
            break  # the next stage needs this one's output
    if failed:
        raise RuntimeError(f"chain stopped at {failed[0]}")
    metrics = json.loads((work / "seg" / "eval" / "coco_eval.json").read_text())["metrics"]
    rows.add("train-seg eval", "segm AP", metrics.get("segm", {}).get("AP"), "",
             "random weights: any value; the evaluation ran")  # fmt: skip


SECTIONS: dict[str, Callable[[Rows, bool, float], None]] = {
    "env": section_env,
    "tests": section_tests,
    "propose": section_propose,
    "select": section_select,
    "seg": section_seg,
    "chain": section_chain,
}


# ---------------------------------------------------------------------------------------------- driver


def _run_one(name: str, args: argparse.Namespace) -> None:
    """Child process: run one section, appending rows to ``args.rows``."""
    if args.parent_pid:  # a killed check leaves no section running
        from stages.common.devices import die_with_parent

        die_with_parent(args.parent_pid)
    if name in os.environ.get(FAIL_ENV, "").split(","):
        raise RuntimeError(f"{FAIL_ENV} asked section {name} to fail")
    if not args.cpu_smoke:
        import torch

        if not torch.cuda.is_available() and name != "env":
            raise RuntimeError("no CUDA device: run with --cpu-smoke, or on a GPU machine")
    else:
        import torch

        torch.set_num_threads(1)
    SECTIONS[name](Rows(name, Path(args.rows)), args.cpu_smoke, args.budget_s)


def run_section(name: str, args: argparse.Namespace, out: Path, box_s: float) -> dict[str, Any]:
    """Parent: the section in a subprocess, killed after ``box_s``; returns its status record and rows."""
    rows_file = out / f"{name}.rows.jsonl"
    rows_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--rows", str(rows_file),
           "--budget-s", f"{box_s:.0f}", "--parent-pid", str(os.getpid())]  # fmt: skip
    cmd += ["--cpu-smoke"] if args.cpu_smoke else []
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    log = out / f"{name}.log"
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=box_s)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc, status = None, "timeout"
    seconds = time.perf_counter() - t0
    rows = []
    if rows_file.is_file():
        rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    error = ""
    if status != "ok":
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        error = (f"killed after its {box_s:.0f} s box" if status == "timeout" else "") or "\n".join(
            tail[-15:]
        )
    print(f"== {name}: {status} in {seconds:.0f} s ({len(rows)} rows)", flush=True)
    return {"name": name, "title": TITLES[name], "status": status, "exit_code": rc,
            "seconds": round(seconds, 1), "box_s": box_s, "error": error, "rows": rows}  # fmt: skip


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(doc: dict[str, Any]) -> str:
    head = "GPU check" if not doc["cpu_smoke"] else "GPU check, CPU smoke mode (toy sizes, no GPU)"
    lines = [f"# {head}", "", f"{doc['finished']}; total {doc['seconds']:.0f} s.", "",
             "| section | status | seconds |", "|---|---|---|"]  # fmt: skip
    for s in doc["sections"]:
        lines.append(f"| {s['title']} | {s['status']} | {s['seconds']:.0f} / {s['box_s']:.0f} |")
    lines += ["", "| section | case | metric | value | unit | notes |", "|---|---|---|---|---|---|"]
    for s in sorted(doc["sections"], key=lambda s: s["title"]):
        for r in s["rows"]:
            cells = [s["title"].split(":")[0], r["case"], r["metric"], _fmt(r["value"]), r["unit"],
                     str(r["notes"]).replace("|", "/")]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        if s["error"]:
            first = s["error"].strip().splitlines()[-1][:200].replace("|", "/")
            lines.append(
                f"| {s['title'].split(':')[0]} | **{s['status']}** | error | - | | {first} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check")
    ap.add_argument("--cpu-smoke", action="store_true", help="toy sizes on CPU (no GPU needed)")
    ap.add_argument("--sections", default=",".join(ORDER), help=f"comma-separated, of {ORDER}")
    ap.add_argument(
        "--box-scale", type=float, default=1.0, help="multiply every section's time box"
    )
    ap.add_argument("--section", help=argparse.SUPPRESS)
    ap.add_argument("--rows", help=argparse.SUPPRESS)
    ap.add_argument("--budget-s", type=float, default=60.0, help=argparse.SUPPRESS)
    ap.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {list(ORDER)}")
    args.sections = [s for s in ORDER if s in wanted]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.section:
        try:
            _run_one(args.section, args)
        except Exception:
            traceback.print_exc()
            return 1
        return 0
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    boxes = SMOKE_BOXES_S if args.cpu_smoke else BOXES_S
    t0 = time.perf_counter()
    sections = [run_section(n, args, out, boxes[n] * args.box_scale) for n in args.sections]
    doc = {
        "cpu_smoke": args.cpu_smoke,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": round(time.perf_counter() - t0, 1),
        "all_ok": all(s["status"] == "ok" for s in sections),
        "sections": sections,
    }
    for name in ("summary.json", "summary.md"):
        tmp = out / f".{name}.tmp"
        tmp.write_text(json.dumps(doc, indent=1) + "\n" if name.endswith("json") else markdown(doc))
        os.replace(tmp, out / name)
    print(markdown(doc))
    print(f"wrote {out / 'summary.md'} and summary.json ({doc['seconds']:.0f} s)")
    return 0 if doc["all_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
