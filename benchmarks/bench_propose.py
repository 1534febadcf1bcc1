"""Benchmark the proposal backends: SAM / SAM 2.1 encode/decode, batched vs per-point prompting, classical.

    .venv/bin/python benchmarks/bench_propose.py          # CPU: random-weight vit_b, vit_t, hiera_t
    .venv/bin/python benchmarks/bench_propose.py --device cuda --model vit_h,hiera_l --precision bf16 --images 10

SAM models (``vit_*``, segment-anything / MobileSAM) and SAM 2.1 models (``hiera_*``, the ``sam2`` package) use
random weights (timings do not depend on the values). For each model it compares

* ``original``: the package's own predictor as usually called: fp32, ``set_image`` then one ``predict`` call per
  point (multimask, 3 masks each): ``SamPredictor`` for SAM, ``SAM2ImagePredictor`` for SAM 2.1;
* ``sapnet``: the project's backend (:class:`~stages.propose.backends.sam.SamBackend` with SDPA attention, or
  :class:`~stages.propose.backends.sam2.Sam2Backend`), ``--precision`` (autocast, CUDA only) and all ``--points``
  points of an image decoded in one call,

reporting seconds per image for the encoder, seconds per point for decoding, images/s for the same work (P points x
3 masks) and for SAPNet's 6 proposals, and peak memory (process RSS; GPU allocator peak on CUDA). The ``models``
section then compares the models' ``sapnet`` encode and decode times with the first ``--model`` (ratios measured in
the same run).

Extending: a section is a function ``(args) -> list[dict]`` whose rows have the keys of :data:`COLUMNS`; append it
to :data:`SECTIONS` (``SECTIONS.append(("store", store_section))``) and it runs (``--sections`` selects by name),
its rows join the Markdown table and the JSON file.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.tiny_sam import register_vit_test  # noqa: E402
from stages.common.devices import resolve_device  # noqa: E402
from stages.common.errors import SapnetError  # noqa: E402
from stages.propose.backends.sam import SamBackend, build_model  # noqa: E402

register_vit_test()

COLUMNS = ("section", "case", "metric", "value", "unit", "notes")
Row = dict[str, Any]
Section = Callable[[argparse.Namespace], list[Row]]


def row(
    section: str, case: str, metric: str, value: float | None, unit: str, notes: str = ""
) -> Row:
    return dict(zip(COLUMNS, (section, case, metric, value, unit, notes), strict=True))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """Run ``fn`` and return (result, wall seconds), synchronising CUDA around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def _images(args: argparse.Namespace) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
        for _ in range(args.images)
    ]


def _points(args: argparse.Namespace, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.stack(
        [rng.uniform(0, w - 1, args.points), rng.uniform(0, h - 1, args.points)], 1
    ).astype(np.float32)


def _gpu_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _gpu_peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _best_of(repeat: int, fn: Callable[[], Any], device: torch.device) -> float:
    """Fastest of ``repeat`` timed runs of ``fn`` (the machine may be shared: min filters noise)."""
    return min(timed(fn, device)[1] for _ in range(max(repeat, 1)))


def _per_point(pred: Any, pts: np.ndarray) -> None:
    for p in pts:
        pred.predict(p[None], np.ones(1), multimask_output=True)


def _is_sam2(model: str) -> bool:
    return model.startswith("hiera_")


def _build_any(model: str) -> torch.nn.Module:
    """Random-weight SAM (``vit_*``) or SAM 2.1 (``hiera_*``) model on CPU."""
    if _is_sam2(model):
        from stages.propose.backends.sam2 import build_model as build_sam2_model

        return build_sam2_model(model)
    return build_model(model)


def _original_predictor(sam: torch.nn.Module, model: str) -> Any:
    if _is_sam2(model):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        from stages.propose.backends.sam2 import feature_sizes

        pred = SAM2ImagePredictor(sam)
        pred._bb_feat_sizes = feature_sizes(sam)  # official values at 1024 px; also reduced models
        return pred
    from segment_anything import SamPredictor

    return SamPredictor(sam)


def _bench_original(sam: torch.nn.Module, images, pts, device, args) -> dict[str, float]:
    pred = _original_predictor(sam, args.model_name)
    if device.type == "cuda":  # warm-up (kernels, allocator)
        pred.set_image(images[0])
        pred.predict(pts[:1], np.ones(1), multimask_output=True)
    _gpu_reset(device)
    enc = dec = 0.0
    for img in images:
        _, t = timed(lambda img=img: pred.set_image(img), device)
        enc += t
        for p in pts:
            _, t = timed(
                lambda p=p: pred.predict(p[None], np.ones(1), multimask_output=True), device
            )
            dec += t
    n = len(images)
    return {"enc": enc / n, "dec_point": dec / (n * len(pts)), "ips": n / (enc + dec)}


def _project_backend(sam: torch.nn.Module, pts, device, args) -> Any:
    common = dict(
        model=args.model_name,
        checkpoint_sha256="random-init",
        device=device,
        precision=args.precision,
        batch_points=len(pts),
    )
    if _is_sam2(args.model_name):
        from stages.propose.backends.sam2 import Sam2Backend

        return Sam2Backend(sam, **common)
    return SamBackend(sam, attention="sdpa", **common)


def _bench_sapnet(sam: torch.nn.Module, images, pts, device, args) -> dict[str, float]:
    backend = _project_backend(sam, pts, device, args)
    if device.type == "cuda":
        list(backend.propose(images[0], pts))
    _gpu_reset(device)
    enc = dec3 = dec6 = 0.0
    for img in images:  # propose() = encode + decode per chunk + .cpu(); timed in its parts
        _, t = timed(lambda img=img: backend.encode(img), device)
        enc += t
        dec3 += _best_of(args.repeat, lambda: [x.cpu() for x in backend.decode(pts, 3)], device)
        dec6 += _best_of(args.repeat, lambda: [x.cpu() for x in backend.decode(pts, 6)], device)
    n = len(images)
    return {
        "enc": enc / n,
        "dec_point": dec3 / (n * len(pts)),
        "dec6_point": dec6 / (n * len(pts)),
        "ips": n / (enc + dec3),
        "ips6": n / (enc + dec6),
    }


def sam_section(args: argparse.Namespace) -> list[Row]:
    """The package's predictor vs the project's backend for each ``--model`` (random weights), then the
    models' encode / decode times relative to the first one."""
    device = resolve_device(args.device)
    images = _images(args)
    pts = _points(args, args.height, args.width)
    p = len(pts)
    rows: list[Row] = []
    measured: dict[str, dict[str, float]] = {}
    for model in args.model:
        sec = f"sam {model}"
        try:
            torch.manual_seed(0)
            sam = _build_any(model).to(device)
        except SapnetError as e:
            rows.append(row(sec, "-", "skipped", None, "", str(e).split(";")[0]))
            continue
        args.model_name = model
        size = f"{args.width}x{args.height}, {p} pts, {len(images)} img"
        orig = _bench_original(copy.deepcopy(sam), images, pts, device, args)
        gpu_orig = _gpu_peak_mb(device)
        mine = _bench_sapnet(sam, images, pts, device, args)
        measured[model] = mine
        gpu_mine = _gpu_peak_mb(device)
        how = "batched" if _is_sam2(model) else "sdpa+batched"  # SAM 2 attention is SDPA already
        case_o, case_m = "original fp32", f"sapnet {args.precision}+{how}"
        rows += [
            row(sec, case_o, "encode", orig["enc"], "s/image", size),
            row(sec, case_m, "encode", mine["enc"], "s/image", size),
            row(sec, case_o, "decode (1 call/point)", orig["dec_point"], "s/point", "3 masks"),
            row(sec, case_m, f"decode ({p} pts/call)", mine["dec_point"], "s/point", "3 masks"),
            row(
                sec,
                "ratio",
                "per-point decode speed-up",
                orig["dec_point"] / mine["dec_point"],
                "x",
            ),
            row(sec, case_o, "throughput, M=3", orig["ips"], "images/s", f"{p} pts/image"),
            row(sec, case_m, "throughput, M=3", mine["ips"], "images/s", f"{p} pts/image"),
            row(sec, case_m, "throughput, M=6", mine["ips6"], "images/s", "point + point&box"),
            row(sec, "ratio", "throughput speed-up (M=3)", mine["ips"] / orig["ips"], "x"),
            row(sec, "process", "peak RSS so far", peak_rss_mb(), "MB"),
        ]
        if device.type == "cuda":
            rows += [
                row(sec, case_o, "peak GPU memory", gpu_orig, "MB"),
                row(sec, case_m, "peak GPU memory", gpu_mine, "MB"),
            ]
        del sam
    return rows + model_ratio_rows(measured)


def model_ratio_rows(measured: dict[str, dict[str, float]]) -> list[Row]:
    """Encode and per-point decode (M = 3 and 6) speed of each model relative to the first measured one
    (``> 1``: faster than the baseline), from the ``sapnet`` timings of this run."""
    if len(measured) < 2:
        return []
    base_name, base = next(iter(measured.items()))
    rows = []
    for name, m in measured.items():
        case = f"{name} vs {base_name}"
        rows += [
            row("models", case, "encode speed-up", base["enc"] / m["enc"], "x", "sapnet path"),
            row("models", case, "decode speed-up (M=3)", base["dec_point"] / m["dec_point"], "x"),
            row("models", case, "decode speed-up (M=6)", base["dec6_point"] / m["dec6_point"], "x"),
            row("models", case, "throughput speed-up (M=6)", m["ips6"] / base["ips6"], "x"),
        ]
    return rows


def _coco_images(args: argparse.Namespace) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, points) pairs from ``--data`` (points = GT box centres), or random ones if it is missing."""
    ann_file = Path(args.data) / "annotations.json"
    if not ann_file.is_file():
        return [(img, _points(args, *img.shape[:2])) for img in _images(args)]
    from PIL import Image

    doc = json.loads(ann_file.read_text())
    out = []
    for info in doc["images"][: args.images]:
        img = np.asarray(Image.open(Path(args.data) / "images" / info["file_name"]).convert("RGB"))
        boxes = [a["bbox"] for a in doc["annotations"] if a["image_id"] == info["id"]][
            : args.points
        ]
        pts = np.array([[x + w / 2 - 0.5, y + h / 2 - 0.5] for x, y, w, h in boxes], np.float32)
        out.append((img, pts.reshape(-1, 2)))
    return out


def classical_section(args: argparse.Namespace) -> list[Row]:
    """Seconds per image of the weight-free ``classical`` backend (guarded: it may not exist yet)."""
    from stages.propose.backends import get_backend

    try:
        backend = get_backend("classical", num_proposals=6, device="cpu")
    except (SapnetError, ImportError, AttributeError, TypeError) as e:
        return [row("classical", "-", "skipped", None, "", f"{type(e).__name__}: {e}"[:120])]
    pairs = _coco_images(args)
    total = 0.0
    for img, pts in pairs:
        _, t = timed(lambda img=img, pts=pts: list(backend.propose(img, pts)), torch.device("cpu"))
        total += t
    n_pts = sum(len(p) for _, p in pairs)
    note = f"{len(pairs)} image(s), {n_pts} pts"
    return [
        row("classical", "classical", "propose", total / max(len(pairs), 1), "s/image", note),
        row("classical", "process", "peak RSS so far", peak_rss_mb(), "MB"),
    ]


# name -> section; other benchmarks (e.g. proposal-store throughput) append theirs here.
def store_section(args: argparse.Namespace) -> list[Row]:
    """Store write throughput (whole units, pre-encoded RLE) and the dense box read of every point."""
    import tempfile
    from pathlib import Path

    from stages.common.annotations import ImageRecord, PointSet
    from stages.common.masks import encode_masks, masks_to_boxes
    from stages.propose.store import ProposalStore, UnitResult

    n_img, per_img, m = args.store_images, args.store_points, 6
    h, w = args.height, args.width
    images = [ImageRecord(i, i + 1, f"{i:06d}.jpg", h, w) for i in range(n_img)]
    p = n_img * per_img
    rng = np.random.default_rng(0)
    pts = PointSet(
        source=Path("synthetic.json"),
        sha256="0" * 64,
        images=images,
        categories=[{"id": 1, "name": "thing"}],
        ann_id=np.arange(p, dtype=np.int64),
        image_index=np.repeat(np.arange(n_img), per_img).astype(np.int32),
        category_id=np.ones(p, np.int32),
        xy=rng.uniform(0, min(h, w), size=(p, 2)).astype(np.float32),
    )
    # One realistic-ish set of M nested ellipse masks, reused for every point.
    yy, xx = np.mgrid[0:h, 0:w]
    masks = np.stack(
        [
            ((xx - w / 2) / (30 + 25 * k)) ** 2 + ((yy - h / 2) / (20 + 18 * k)) ** 2 <= 1
            for k in range(m)
        ]
    )
    rle, boxes = np.array(encode_masks(masks), dtype=object), masks_to_boxes(masks)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ProposalStore.create(Path(tmp) / "s.zarr", pts, {"name": "bench"}, m, ["x"] * m)
        t0 = time.perf_counter()
        for u in range(store.num_units):
            lo, hi = store.unit_rows(u)
            n = hi - lo
            store.write_unit(
                u,
                UnitResult(
                    boxes=np.broadcast_to(boxes, (n, m, 4)).copy(),
                    scores=np.full((n, m), 0.5, np.float32),
                    area=np.broadcast_to(masks.sum((1, 2)), (n, m)).copy(),
                    rle=np.broadcast_to(rle, (n, m)).copy(),
                    status=np.ones(n, np.uint8),
                    error=np.full(n, "", object),
                ),
            )
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        reopened = ProposalStore.open(Path(tmp) / "s.zarr")
        all_boxes = reopened.boxes()
        read_s = time.perf_counter() - t0
        assert all_boxes.shape == (p, m, 4)
        case = f"{p} points, {n_img} images, M={m}, {w}x{h}"
        rows.append(row("store", case, "write (units, pre-encoded RLE)", p / write_s, "points/s"))
        rows.append(row("store", case, "read all boxes (open + boxes())", p / read_s, "points/s"))
        rows.append(
            row(
                "store",
                case,
                "RLE bytes per mask (raw)",
                float(np.mean([len(r) for r in rle])),
                "B",
            )
        )
    return rows


SECTIONS: list[tuple[str, Section]] = [
    ("sam", sam_section),
    ("classical", classical_section),
    ("store", store_section),
]


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        v = r["value"]
        cells = [r[c] for c in COLUMNS]
        cells[3] = "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else v)
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument(
        "--model",
        default="vit_b,vit_t,hiera_t",
        help="comma-separated SAM variants (vit_h, vit_l, vit_b, vit_t, vit_test) and SAM 2.1 variants "
        "(hiera_t, hiera_s, hiera_b+, hiera_l); vit_t / hiera_* are skipped when mobile_sam / sam2 "
        "is not installed; the first one is the baseline of the 'models' ratios",
    )
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--images", type=int, default=1, help="images per measurement")
    ap.add_argument("--points", type=int, default=16, help="points per image")
    ap.add_argument("--repeat", type=int, default=2, help="decode timings: best of this many runs")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "coco-dev"))
    ap.add_argument("--store-images", type=int, default=2000, help="store section: images")
    ap.add_argument("--store-points", type=int, default=8, help="store section: points per image")
    ap.add_argument("--sections", default=",".join(n for n, _ in SECTIONS))
    ap.add_argument("--out", default=str(REPO / "runs" / "bench" / "propose.json"))
    args = ap.parse_args(argv)
    args.model = [m.strip() for m in args.model.split(",") if m.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = {s.strip() for s in args.sections.split(",")}
    rows: list[Row] = []
    t0 = time.perf_counter()
    for name, section in SECTIONS:
        if name in wanted:
            rows += section(args)
    print(markdown(rows))
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "wall_s": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "args": vars(args), "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {out} ({env['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
