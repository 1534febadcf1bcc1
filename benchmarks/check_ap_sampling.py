"""How far the report's sampled COCO AP is from the full one (the claim in docs/scaling.md).

    .venv/bin/python benchmarks/bench_scale.py --scale 0.1 --keep --only workload --only store_write \
        --only export_sapnet
    .venv/bin/python benchmarks/check_ap_sampling.py runs/scale/work-10 --sizes 2000 8000 --seeds 0 1 2

Computes the report's segm and bbox AP of the sapnet pseudo labels of a ``bench_scale`` workload on every
image and on seeded samples of ``--sizes`` images (``stages.export.report.ap_image_sample``), and prints the
differences in AP points. At 10 % of COCO (11,829 images) a sample of 8,000 images has the same expected
sampling error as the default 20,000 of COCO's 118,287 (finite-population correction); 2,000 is stricter.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("work", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from stages.export.gt import load_ground_truth
    from stages.export.pseudo import load_predictions
    from stages.export.report import _restrict, ap_image_sample, coco_ap

    gt = load_ground_truth(args.work / "coco_points.json")
    preds, _ = load_predictions(args.work / "pseudo_sapnet.json", gt.image_size)
    ids = sorted(gt.image_size)
    t0 = time.perf_counter()
    full = {t: coco_ap(gt, preds, t, ids)["AP"] for t in ("segm", "bbox")}
    rows = [{"images": len(ids), "seed": None, **full, "s": round(time.perf_counter() - t0, 1)}]
    print(json.dumps(rows[-1]), flush=True)
    for size in args.sizes:
        for seed in args.seeds:
            t0 = time.perf_counter()
            sample = ap_image_sample(ids, size, seed)
            sub = _restrict(preds, sample)
            ap = {t: coco_ap(gt, sub, t, sample)["AP"] for t in ("segm", "bbox")}
            row = {"images": size, "seed": seed, **ap, "s": round(time.perf_counter() - t0, 1)}
            row["diff_points"] = {t: round(100 * (ap[t] - full[t]), 2) for t in ap}
            rows.append(row)
            print(json.dumps(row), flush=True)
    worst = max(abs(v) for r in rows[1:] for v in r["diff_points"].values())
    print(f"largest |sampled - full| = {worst:.2f} AP points")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "worst_points": worst}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
