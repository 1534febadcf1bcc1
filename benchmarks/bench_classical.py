"""Quality and speed of the weight-free ``classical`` proposal backend on a COCO-format dataset.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_classical.py --limit 50

For every non-crowd object one "quasi-centre" point is sampled inside its mask (``center-gaussian``: gaussian
around the box centre, sigma 0.25 of the box size, restricted to the mask; seed 0), all points of an image go
through one ``propose`` call (timed, segmentation included), and each proposal's mask IoU with the object's
ground-truth mask is measured. Reported: images, objects, seconds per image (mean, p90), oracle mIoU (best of
the M proposals), mIoU of each proposal index, of the top-1 proposal by score, and the oracle by COCO size
(small < 32^2 <= medium < 96^2 <= large, on the annotation ``area``). The Markdown table goes to stdout, the same
numbers to ``--out`` as JSON. Seconds are wall-clock; the CPU (process) time is also given because it does not
count time lost to other processes on a shared machine.

Thread count: the script pins BLAS/OpenMP to one thread unless the variables are already set (one core).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stages.common.io import atomic_write_json, load_json, read_image_rgb  # noqa: E402
from stages.common.masks import segmentation_to_mask  # noqa: E402
from stages.points.run import sample_points  # noqa: E402
from stages.propose.backends.base import get_backend  # noqa: E402

SMALL, LARGE = 32**2, 96**2


def evaluate(data: Path, limit: int | None, seed: int = 0) -> dict[str, Any]:
    """Run the backend over the first ``limit`` images (by id) with objects; per-object IoUs and timings."""
    coco = load_json(data / "annotations.json", "annotations")
    points = sample_points(coco, mode="center-gaussian", seed=seed)
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if ann["id"] in points:
            by_image.setdefault(ann["image_id"], []).append(ann)
    images = [im for im in sorted(coco["images"], key=lambda r: r["id"]) if im["id"] in by_image]
    images = images[:limit] if limit else images
    backend = get_backend("classical", num_proposals=6)
    seconds, cpu_seconds, ious, scores, areas = [], [], [], [], []
    for im in images:
        anns = by_image[im["id"]]
        image = read_image_rgb(data / "images" / im["file_name"])
        pts = np.array([points[a["id"]] for a in anns], dtype=np.float32)
        t0, c0 = time.perf_counter(), time.process_time()
        batches = list(backend.propose(image, pts))
        seconds.append(time.perf_counter() - t0)
        cpu_seconds.append(time.process_time() - c0)
        for batch in batches:
            for i in range(len(batch.masks)):
                ann = anns[batch.start + i]
                gt = segmentation_to_mask(ann["segmentation"], im["height"], im["width"])
                props = batch.masks[i].reshape(len(batch.masks[i]), -1)
                inter = (props & gt.ravel()).sum(1)
                union = props.sum(1) + gt.sum() - inter
                ious.append(inter / np.maximum(union, 1))
                scores.append(batch.scores[i])
                areas.append(ann["area"])
    return {
        "backend": backend.fingerprint(),
        "seconds": np.array(seconds),
        "cpu_seconds": np.array(cpu_seconds),
        "iou": np.array(ious),
        "scores": np.array(scores),
        "area": np.array(areas),
    }


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """Aggregate :func:`evaluate`'s arrays into the reported numbers."""
    iou, sec, area = res["iou"], res["seconds"], res["area"]
    best = iou.max(1)
    top1 = iou[np.arange(len(iou)), res["scores"].argmax(1)]
    size = {
        "small": area < SMALL,
        "medium": (area >= SMALL) & (area < LARGE),
        "large": area >= LARGE,
    }
    return {
        "images": len(sec),
        "objects": len(iou),
        "s_per_image_mean": float(sec.mean()),
        "s_per_image_p90": float(np.percentile(sec, 90)),
        "cpu_s_per_image_mean": float(res["cpu_seconds"].mean()),
        "cpu_s_per_image_p90": float(np.percentile(res["cpu_seconds"], 90)),
        "oracle_miou": float(best.mean()),
        "per_index_miou": [float(v) for v in iou.mean(0)],
        "top1_by_score_miou": float(top1.mean()),
        "oracle_miou_by_size": {
            k: float(best[m].mean()) if m.any() else None for k, m in size.items()
        },
        "objects_by_size": {k: int(m.sum()) for k, m in size.items()},
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "backend": res["backend"],
    }


def markdown(s: dict[str, Any]) -> str:
    sz = s["oracle_miou_by_size"]
    per = " / ".join(f"{v:.3f}" for v in s["per_index_miou"])
    rows = [
        ("images", f"{s['images']}"),
        ("objects", f"{s['objects']}"),
        ("s/image mean", f"{s['s_per_image_mean']:.3f}"),
        ("s/image p90", f"{s['s_per_image_p90']:.3f}"),
        ("CPU s/image mean (process time)", f"{s['cpu_s_per_image_mean']:.3f}"),
        ("CPU s/image p90", f"{s['cpu_s_per_image_p90']:.3f}"),
        ("oracle mIoU (best of M)", f"{s['oracle_miou']:.3f}"),
        ("mIoU per proposal index 0..M-1", per),
        ("top-1 by score mIoU", f"{s['top1_by_score_miou']:.3f}"),
    ]
    for k in ("small", "medium", "large"):
        v = sz[k]
        rows.append(
            (f"oracle mIoU {k} ({s['objects_by_size'][k]})", "-" if v is None else f"{v:.3f}")
        )
    lines = ["| metric | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "coco-dev")
    ap.add_argument("--limit", type=int, default=None, help="first N images (by id) with objects")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "classical.json")
    ap.add_argument("--seed", type=int, default=0, help="point sampler seed")
    args = ap.parse_args(argv)
    summary = summarise(evaluate(args.data, args.limit, args.seed))
    print(markdown(summary))
    atomic_write_json(args.out, summary, indent=2)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
