"""Benchmark the SAPNet selector (`sapnet select`): training images/s, peak memory, cost of the SAPNet extras,
prediction objects/s.

    .venv/bin/python benchmarks/bench_select.py                        # synthetic 320x427 images, CPU
    .venv/bin/python benchmarks/bench_select.py --store S.zarr --images DIR --short-side 320
    .venv/bin/python benchmarks/bench_select.py --backbones resnet50 --device cuda --short-side 800

Data: a proposal store (``--store`` + ``--images``, e.g. from ``sapnet propose --backend classical`` on
``--data``), else a seeded synthetic dataset (``stages.synthetic``) of ``--num-images`` images whose short
side is ``--short-side`` (3-6 objects, 6 proposals each). Images are resized to ``--short-side`` (long side
<= ``--max-size``) exactly as training does. Weights are random (timings do not depend on them).

Cases, each in its own subprocess (so ``ru_maxrss`` is that case's peak), per backbone:

* ``train/plain``: plain MIL (mil1: PSM only, no PDG/PRM/PNPG/BMS), one SGD step (forward, backward, clip,
  step) -> s/step and images/s;
* ``train/full``: every module on (PDG, PPG, 500 NPG negatives per image, PRM) -> the same, plus the ratio
  full/plain and the share of a full step spent on the SAPNet extras (``1 - plain/full``);
* ``predict/full``: inference of the full selector (PSM + PPG bag + PRM + BMS) -> objects/s, images/s.

Mean (and best) over ``--iters`` timed steps after ``--warmup`` untimed ones, ``--threads`` torch threads. The
full/plain ratio compares the best full step with the best plain step timed alternately in the same process. Writes
``--out`` (JSON with ``rows`` of ``{section, case, metric, value, unit, notes}``, default
``runs/bench/select.json``) and the same table as Markdown beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

COLUMNS = ("section", "case", "metric", "value", "unit", "notes")
PLAIN = {"use_pdg": False, "use_prm": False, "use_ppg": False, "use_npg": False, "use_bms": False}
PATHS = {"store": "-", "images": "-", "out": "-"}
FULL = {"use_pdg": True, "use_prm": True, "use_ppg": True, "use_npg": True, "use_bms": True}


def _peak_rss_mb() -> float:
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one case in this process (called in a subprocess); returns seconds and peak memory."""
    import numpy as np
    import torch

    from stages.propose.store import ProposalStore
    from stages.select.config import SelectConfig
    from stages.select.data import SelectDataset, batch_to_device, collate, load_store_arrays
    from stages.select.forward import MethodOptions, SelectorLoss, iteration_generator
    from stages.select.model import build_model
    from stages.select.predict import predict_batch
    from stages.select.train import build_optimizer

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    store = ProposalStore.open(spec["store"])
    arrays = load_store_arrays(store)
    images = arrays.trainable_images()
    cfg = SelectConfig(
        **PATHS, backbone=spec["backbone"], weights="none", batch_size=spec["batch"], **spec["flags"],
    )  # fmt: skip
    net = build_model(len(store.attrs["categories"]), cfg.backbone, "none").to(device)
    ds = SelectDataset(arrays, spec["images"], spec["short_side"], spec["max_size"], 0.0, 0)
    b = spec["batch"]
    batches = [
        collate([ds[(0, int(i))] for i in np.resize(images, (k + 1) * b)[k * b : (k + 1) * b]])
        for k in range(spec["warmup"] + spec["iters"])
    ]
    opts = MethodOptions.from_config(cfg)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    paired: list[float] = []
    objects = 0
    if spec["mode"] == "train":
        # With "pair", plain-MIL steps alternate with the timed steps on the same batches and network, so the
        # full/plain ratio is measured under the same machine load (the shared CPU drifts a lot).
        fwd = SelectorLoss(net, opts).train()
        plain = SelectorLoss(net, MethodOptions.from_config(SelectConfig(**PATHS, **PLAIN))).train()
        optimizer = build_optimizer(net, cfg)

        def step(module: SelectorLoss, batch: dict, k: int) -> float:
            sync()
            t0 = time.perf_counter()
            losses = module(
                batch["images"], batch["boxes"], batch["points"], batch["labels"], batch["size"],
                iteration_generator(0, k, 0),
            )  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(
                [p for p in net.parameters() if p.grad is not None], 35.0
            )
            optimizer.step()
            sync()
            return time.perf_counter() - t0

        for k, batch in enumerate(batches):
            batch = batch_to_device(batch, device)
            t = step(fwd, batch, k)
            t_plain = step(plain, batch, k) if spec.get("pair") else None
            if k >= spec["warmup"]:
                times.append(t)
                if t_plain is not None:
                    paired.append(t_plain)
    else:
        net.eval()
        for k, batch in enumerate(batches):
            batch = batch_to_device(batch, device)
            sync()
            t0 = time.perf_counter()
            predict_batch(net, batch, opts)
            sync()
            if k >= spec["warmup"]:
                times.append(time.perf_counter() - t0)
                objects += sum(len(x) for x in batch["labels"])
    mean = sum(times) / len(times)
    out = {
        "seconds_per_step": mean,
        "min_seconds_per_step": min(times),
        "paired_plain_min_seconds": min(paired) if paired else None,
        "images_per_s": b / mean,
        "objects_per_s": objects / sum(times) if objects else None,
        "peak_rss_mb": _peak_rss_mb(),
        "image_size": list(batches[0]["images"].shape[-2:]),
        "objects_per_image": float(np.mean([len(x) for bt in batches for x in bt["labels"]])),
    }
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _subprocess_case(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {spec['mode']} {spec['backbone']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _synthetic_store(root: Path, args: argparse.Namespace) -> tuple[str, str]:
    from stages.synthetic.generate import SyntheticConfig, make_synthetic

    short = args.short_side
    cfg = SyntheticConfig(
        num_images=args.num_images, height=short, width=int(round(short * 4 / 3)), num_classes=5,
        objects_per_image=(3, 6), object_size=(short // 6, short // 3), distractors=8, seed=0,
    )  # fmt: skip
    data = make_synthetic(root, cfg)
    return str(data.store), str(data.images_dir)


def _row(section: str, case: str, metric: str, value: Any, unit: str, notes: str = "") -> dict:
    return dict(zip(COLUMNS, (section, case, metric, value, unit, notes), strict=True))


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    tmp = tempfile.TemporaryDirectory(prefix="bench_select_")
    if args.store:
        store, images, source = args.store, args.images, f"store {args.store}"
    else:
        store, images = _synthetic_store(Path(tmp.name), args)
        source = f"synthetic, {args.num_images} images"
    base = {
        "store": store, "images": images, "device": args.device, "threads": args.threads,
        "batch": args.batch, "warmup": args.warmup, "iters": args.iters,
        "short_side": args.short_side, "max_size": args.max_size,
    }  # fmt: skip
    rows: list[dict] = []
    results: dict[str, Any] = {}
    for backbone in args.backbones:
        res = {}
        for name, flags in (("plain", PLAIN), ("full", FULL)):
            spec = {
                **base,
                "backbone": backbone,
                "mode": "train",
                "flags": flags,
                "pair": name == "full",
            }
            res[name] = _subprocess_case(spec)
            print(f"{backbone} train/{name}: {res[name]}", flush=True)
        res["predict"] = _subprocess_case(
            {**base, "backbone": backbone, "mode": "predict", "flags": FULL}
        )
        print(f"{backbone} predict/full: {res['predict']}", flush=True)
        results[backbone] = res
        h, w = res["full"]["image_size"]
        size = f"{w}x{h} padded, batch {args.batch}, {res['full']['objects_per_image']:.1f} obj/img"
        for name in ("plain", "full"):
            r = res[name]
            rows.append(
                _row("train", f"{backbone} {name}", "step", r["seconds_per_step"], "s", size)
            )
            rows.append(
                _row("train", f"{backbone} {name}", "throughput", r["images_per_s"], "images/s")
            )
            rows.append(_row("train", f"{backbone} {name}", "peak RSS", r["peak_rss_mb"], "MB"))
            if "peak_gpu_mb" in r:
                rows.append(_row("train", f"{backbone} {name}", "peak GPU", r["peak_gpu_mb"], "MB"))
        ratio = res["full"]["min_seconds_per_step"] / res["full"]["paired_plain_min_seconds"]
        share = 1.0 - 1.0 / ratio
        paired = "best step of each, plain steps interleaved with the full ones in one process"
        rows.append(_row("train", f"{backbone} full/plain", "step ratio", ratio, "x", paired))
        rows.append(
            _row(
                "train",
                f"{backbone} full/plain",
                "extras share of a full step",
                share,
                "fraction",
                "target < 0.15: " + ("met" if share < 0.15 else "NOT met"),
            )  # fmt: skip
        )
        p = res["predict"]
        rows.append(
            _row("predict", f"{backbone} full", "throughput", p["objects_per_s"], "objects/s")
        )
        rows.append(
            _row("predict", f"{backbone} full", "throughput", p["images_per_s"], "images/s")
        )
        rows.append(_row("predict", f"{backbone} full", "peak RSS", p["peak_rss_mb"], "MB"))
    tmp.cleanup()
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": args.device,
        "threads": args.threads,
        "data": source,
    }
    return {"rows": rows, "results": results, "env": env, "args": vars(args)}


def markdown(doc: dict[str, Any]) -> str:
    env = doc["env"]
    lines = [
        "# sapnet select benchmark",
        "",
        f"{env['data']}; device {env['device']}, {env['threads']} threads; short side "
        f"{doc['args']['short_side']}, random weights.",
        "",
        "| section | case | metric | value | unit | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        value = f"{r['value']:.3g}" if isinstance(r["value"], float) else str(r["value"])
        lines.append(
            f"| {r['section']} | {r['case']} | {r['metric']} | {value} | {r['unit']} | {r['notes']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "select.json")
    parser.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data" / "coco-dev",
        help="Dev data (images/ + annotations.json); used only to describe a --store made from it.",
    )  # fmt: skip
    parser.add_argument("--store", help="Proposal store to benchmark on (default: synthetic data).")
    parser.add_argument("--images", help="Images folder of --store (default: DATA/images).")
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--short-side", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    if args.store and not args.images:
        args.images = str(args.data / "images")
    doc = benchmark(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str))
    args.out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
