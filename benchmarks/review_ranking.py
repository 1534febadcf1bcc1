"""Is `sapnet review`'s ranking worth an annotator's time? Pseudo-label mIoU rise when the K worst objects (by
the ranking) are replaced by their GT masks, against K random objects and the oracle (the K truly worst).

    .venv/bin/python benchmarks/review_ranking.py --gt GT.json --store STORE.zarr [--selections SEL] \\
        --pseudo sapnet=pseudo.json --pseudo top1=pseudo.top1.json --out runs/review_ranking

Honest protocol: the images are split in two halves (seeded); the signal weights are fitted on the first half
(grid search, objective = mean rise over the K values) and every number of the table is measured on the
second half. Replacing an object by its GT sets its IoU to 1, so the rise of K flagged objects is
``sum(1 - IoU) / N`` over the flagged ones. Random: mean and standard deviation over ``--seeds`` draws.
Writes ``OUT.json`` and ``OUT.md`` (a table per pseudo-label file).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stages.common.selections import load_selections  # noqa: E402
from stages.export.agreement import paired_mask_iou  # noqa: E402
from stages.export.gt import load_ground_truth, match_annotations  # noqa: E402
from stages.propose.store import ProposalStore  # noqa: E402
from stages.review.features import SIGNALS, Signals, review_score  # noqa: E402
from stages.review.review import compute_signals, load_pseudo  # noqa: E402

GRID = (0.0, 0.5, 1.0, 2.0)


def subset(signals: Signals, rows: np.ndarray) -> Signals:
    return Signals(**{n: v[rows] for n, v in signals.as_dict().items()})


def rise(iou: np.ndarray, flagged: np.ndarray) -> float:
    """mIoU rise (fraction) when the ``flagged`` rows of ``iou (N,)`` become exact."""
    return float((1.0 - iou[flagged]).sum() / max(len(iou), 1))


def top_k(score: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-score, kind="stable")[:k]


def fit_weights(signals: Signals, iou: np.ndarray, fractions: list[float]) -> dict[str, float]:
    """The grid weights with the best mean rise over ``fractions`` on these objects (ties: first found)."""
    best, best_w = -1.0, None
    for combo in itertools.product(GRID, repeat=len(SIGNALS)):
        if not any(combo):
            continue
        w = dict(zip(SIGNALS, combo, strict=True))
        score = review_score(signals, w)
        val = np.mean([rise(iou, top_k(score, round(f * len(iou)))) for f in fractions])
        if val > best + 1e-12:
            best, best_w = val, w
    assert best_w is not None
    return best_w


def evaluate(
    signals: Signals,
    iou: np.ndarray,
    fractions: list[float],
    weights: dict[str, dict[str, float]],
    seeds: int,
) -> list[dict]:
    """One row per K: rises of each weighting, of random draws and of the oracle (percent points)."""
    n = len(iou)
    rows = []
    for f in fractions:
        k = round(f * n)
        row = {"K_percent": 100 * f, "K": k, "N": n, "mIoU": 100 * float(iou.mean())}
        for name, w in weights.items():
            flagged = top_k(review_score(signals, w), k)
            row[name] = 100 * rise(iou, flagged)
            row[f"{name}_hit_rate"] = float((iou[flagged] < 0.5).mean()) if k else None
        draws = [
            100 * rise(iou, np.random.default_rng(s).choice(n, k, replace=False))
            for s in range(seeds)
        ]
        row["random_mean"], row["random_std"] = float(np.mean(draws)), float(np.std(draws))
        row["oracle"] = 100 * rise(iou, top_k(1.0 - iou, k))
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gt", type=Path, required=True)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--selections", type=Path)
    ap.add_argument("--pseudo", action="append", required=True, help="NAME=pseudo.json")
    ap.add_argument("--out", type=Path, required=True, help="OUT -> OUT.json, OUT.md")
    ap.add_argument("--ks", default="5,10,20", help="K values in percent of the objects")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--split-seed", type=int, default=0)
    args = ap.parse_args()

    fractions = [float(k) / 100 for k in args.ks.split(",")]
    gt = load_ground_truth(args.gt)
    store = ProposalStore.open(args.store)
    sel = load_selections(args.selections) if args.selections else None
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "tables": {}}
    md = ["# Review ranking vs random (mIoU rise when K objects are replaced by GT)", ""]
    for spec in args.pseudo:
        name, _, path = spec.partition("=")
        pseudo = load_pseudo(path)
        signals = compute_signals(pseudo, sel, store, str(args.selections))
        note = ""
        if (pseudo.doc.get("info") or {}).get("selector") == "oracle":
            # the oracle's score is its IoU with the GT: it must not rank anything
            signals.low_score = np.zeros(len(pseudo.ann_id))
            note = " The oracle's score is its GT IoU, so low_score is switched off (constant)."
        rows_gt = match_annotations(gt, pseudo.ann_id, pseudo.image_id, pseudo.category_id, path)
        iou = paired_mask_iou(pseudo.rles, [gt.rles[r] for r in rows_gt], pseudo.image_id)
        images = np.unique(pseudo.image_id)
        perm = np.random.default_rng(args.split_seed).permutation(images)
        fit_imgs = set(perm[: len(perm) // 2].tolist())
        fit = np.array([int(i) in fit_imgs for i in pseudo.image_id])
        a, b = np.nonzero(fit)[0], np.nonzero(~fit)[0]
        fitted = fit_weights(subset(signals, a), iou[a], fractions)
        weights = {"ranking_fitted": fitted, "ranking_equal": dict.fromkeys(SIGNALS, 1.0)}
        weights |= {f"only_{s}": {s: 1.0} for s in SIGNALS}
        rows = evaluate(subset(signals, b), iou[b], fractions, weights, args.seeds)
        result["tables"][name] = {
            "fitted_weights": fitted,
            "fit_objects": len(a),
            "report_objects": len(b),
            "fit_images": len(fit_imgs),
            "report_images": len(images) - len(fit_imgs),
            "rows": rows,
        }
        md += [
            f"## {name} pseudo labels ({path})",
            "",
            f"Weights fitted on {len(fit_imgs)} images ({len(a)} objects): {fitted}; reported on the other "
            f"{len(images) - len(fit_imgs)} images ({len(b)} objects). Rises in mIoU points; "
            f"random: mean ± std over {args.seeds} draws; gap closed = (ranking - random) / (oracle - "
            "random); hit rate = flagged objects with IoU < 0.5." + note,
            "",
            "| K | objects | mIoU | ranking (fitted) | ranking (equal weights) | random | oracle | "
            "fitted / random | gap closed | hit rate (fitted) | "
            + " | ".join(f"only {s}" for s in SIGNALS)
            + " |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(SIGNALS),
        ]
        for r in rows:
            ratio = r["ranking_fitted"] / r["random_mean"] if r["random_mean"] > 0 else float("nan")
            room = r["oracle"] - r["random_mean"]
            closed = (r["ranking_fitted"] - r["random_mean"]) / room if room > 0 else float("nan")
            md.append(
                f"| {r['K_percent']:.0f} % | {r['K']} | {r['mIoU']:.1f} | +{r['ranking_fitted']:.2f} | "
                f"+{r['ranking_equal']:.2f} | +{r['random_mean']:.2f} ± {r['random_std']:.2f} | "
                f"+{r['oracle']:.2f} | {ratio:.2f}x | {100 * closed:.0f} % | "
                f"{r['ranking_fitted_hit_rate']:.2f} | "
                + " | ".join(f"+{r[f'only_{s}']:.2f}" for s in SIGNALS)
                + " |"
            )
        md.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=2))
    Path(f"{args.out}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
