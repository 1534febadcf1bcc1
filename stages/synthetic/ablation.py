"""The controlled synthetic ablation (paper Table 4 rows) and the scoring of selections against ``truth.npz``.

:func:`run_ablation` makes one seeded synthetic dataset per seed (``stages.synthetic.generate``, bags
rewritten by :func:`stages.synthetic.bags.sam_like_bags`: the correct mask, large parts and halves of it
("local"), the union with an adjacent same-class object ("group") and shifted copies ("offset")), trains
and predicts every row of the selector on it (same data, same training seed) and scores each object's
FINAL selection (``Selections.final_index``, the proposal that the run would export):

- ``accuracy``: the picked proposal is the correct one;
- ``mean_iou``: mask IoU of the picked proposal with the object's ground-truth mask, averaged over objects;
- ``group_rate`` / ``local_rate`` / ``offset_rate``: the picked proposal is a group union / a part of the
  object / a shifted copy. The rates are over ALL objects and sum to 1 with ``accuracy``.

Rows (:data:`ABLATION_ROWS`, cumulative as in Table 4, the switches of ``stages.select.config.ABLATIONS``):
``mil1`` (PSM only), ``+PDG``, ``+mil2`` (PRM over the M proposals), ``+PNPG`` (PPG boxes and NPG
negatives), ``+BMS`` (the full selector). MPS belongs to SOLOv2 training and has no row here.
:data:`EXTRA_ROWS` adds diagnostics; a row whose training equals an earlier row's (``+BMS`` after
``+PNPG``, ``mil1+BMS`` after ``mil1``: BMS acts at prediction only) reuses that selector.

What the benchmark shows with the CLEAN variant (``VARIANTS["clean"]``, the defaults before the official-code
behaviour became the default; 3 seeds; numbers in the synthetic brief's report) and why (the official variant
with its Normal(0, 0.01) head learns much less in these 60-iteration CPU runs: docs/method.md):

- mil1 picks a part of the object for about half of the objects: parts fill more of their box than the
  whole ellipse does, the paper's "preference for segments with more foreground";
- +PDG equals mil1 within noise. The code's PDG scales the stage-0 LOSS logits of proposals holding another
  same-class point by S^(1/64), i.e. by at most 1.1 %, and leaves the selection alone; and single MIL
  rarely picks the group union on this data (about 1 %), so there is little to fix. Row
  ``+PDG paper d=1`` is the paper's form at full strength (``tests/select/test_learnability.py`` shows it
  lowering group picks on group-heavy bags);
- +mil2 (PRM without PNPG) is not better than mil1: without negatives the PRM drifts to offsets;
- +PNPG: the background negatives remove the offset picks and local picks drop; the PRM now makes some
  group picks (PDG, a stage-0 loss term, does not reach them);
- +BMS: rule (i) merges a large-part pick with the object's own box (box IoU 0.7 > T_min1) and the final
  index moves to the object: local errors fall to a few percent. Halves (IoU 0.5) cannot be repaired:
  rule (ii) keeps the merged box nearer the smaller pick.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.annotations import load_coco
from stages.common.config import option, save_resolved_config, sidecar_config_path
from stages.common.errors import InputError
from stages.common.masks import decode_rles, segmentation_to_mask
from stages.select.config import ABLATIONS, SelectConfig
from stages.synthetic.bags import PART_FRACTION, sam_like_bags
from stages.synthetic.generate import SyntheticConfig, SyntheticData, make_synthetic

ABLATION_ROWS: dict[str, dict[str, Any]] = {name: dict(flags) for name, flags in ABLATIONS.items()}
"""Table 4 row name -> SelectConfig overrides (method switches), in table order."""

EXTRA_ROWS: dict[str, dict[str, Any]] = {
    "mil1+BMS": {**ABLATIONS["mil1"], "use_bms": True},
    "+PDG paper d=1": {**ABLATIONS["+PDG"], "pdg_mode": "paper", "pdg_power": 1.0},
}
"""Diagnostic rows outside Table 4: BMS on the PSM pick alone (reuses the mil1 selector), and PDG as the
paper writes it (S_dis multiplied into the selection score) with full strength d = 1 instead of 1/64."""

ALL_ROWS = {**ABLATION_ROWS, **EXTRA_ROWS}

METRICS = ("accuracy", "mean_iou", "group_rate", "local_rate", "offset_rate")
"""The per-row metrics of the final selection (see the module docstring)."""

SELECTOR_SMALL: dict[str, Any] = {
    "backbone": "resnet18",
    "weights": "none",
    "fpn_channels": 32,
    "fc_dim": 64,
    "num_workers": 0,
    "progress": False,
    "device": "cpu",
}
"""A narrow, randomly initialised resnet18 selector that trains on CPU in seconds (no weights needed)."""


def proposal_gt_iou(data: SyntheticData) -> np.ndarray:
    """``(P, M)`` float64 mask IoU of every stored proposal with its object's ground-truth mask.

    Objects in store order (``data.ann_id``); masks decoded image by image from the store's RLE and the
    ``segmentation`` RLE of ``annotations.json``.
    """
    from stages.propose.store import ProposalStore

    store = ProposalStore.open(data.store)
    coco = load_coco(data.annotations, "synthetic annotations")
    seg = {int(a["id"]): a["segmentation"] for a in coco["annotations"]}
    rle = store.rle()
    ann_id = store.objects.ann_id
    p, m = rle.shape
    out = np.zeros((p, m), np.float64)
    for img in range(len(store.images)):
        sl = store.image_objects(img)
        if sl.stop == sl.start:
            continue
        h, w = int(store.images.height[img]), int(store.images.width[img])
        props = decode_rles([str(s) for s in rle[sl].reshape(-1)], h, w).reshape(-1, m, h * w)
        gt = np.stack([segmentation_to_mask(seg[int(a)], h, w) for a in ann_id[sl]])
        gt = gt.reshape(-1, 1, h * w)
        inter = (props & gt).sum(-1)
        union = (props | gt).sum(-1)
        out[sl] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return out


def score_picks(
    picks: np.ndarray, kinds: np.ndarray, correct_index: np.ndarray, iou: np.ndarray
) -> dict[str, float]:
    """Score one selector's picks against the planted truth.

    Args:
        picks: ``(P,)`` int picked proposal index per object in ``[0, M)``; ``-1`` (no selection) counts
            as wrong with IoU 0 and as none of the error kinds.
        kinds: ``(P, M)`` str kind of each proposal (``correct`` / ``local`` / ``group`` / ``offset``).
        correct_index: ``(P,)`` int index of the correct proposal.
        iou: ``(P, M)`` mask IoU of each proposal with the ground truth (:func:`proposal_gt_iou`).

    Returns the :data:`METRICS` as floats (rates in [0, 1]; 0 for P = 0).
    """
    picks = np.asarray(picks, dtype=np.int64)
    p = picks.shape[0]
    if p == 0:
        return {name: 0.0 for name in METRICS}
    valid = picks >= 0
    safe = np.where(valid, picks, 0)
    rows = np.arange(p)
    kind = np.where(valid, np.asarray(kinds)[rows, safe], "none")
    return {
        "accuracy": float(np.mean(valid & (picks == correct_index))),
        "mean_iou": float(np.mean(np.where(valid, iou[rows, safe], 0.0))),
        "group_rate": float(np.mean(kind == "group")),
        "local_rate": float(np.mean(kind == "local")),
        "offset_rate": float(np.mean(kind == "offset")),
    }


def train_row(
    data: SyntheticData, overrides: dict[str, Any], out_dir: str | Path
) -> dict[str, np.ndarray]:
    """Train and predict one selector on ``data`` (``overrides``: SelectConfig fields); its selections.

    Returns ``final_index``, ``psm_top1`` and ``prm_top1`` ``(P,)`` in store object order.
    """
    from stages.select.run import run_select

    fields = {"store": str(data.store), "images": str(data.images_dir), "out": str(out_dir)}
    cfg = SelectConfig(**{**fields, **overrides}).validate()
    result = run_select(cfg)
    with np.load(result.selections) as sel:
        return {k: sel[k] for k in ("final_index", "psm_top1", "prm_top1")}


def training_key(overrides: dict[str, Any]) -> str:
    """What decides the trained weights of a row: its overrides without the prediction-only switches.

    ``use_bms`` acts at prediction only, unless PPG is on with ``ppg_base`` "code" (the default: then
    stage-0 BMS moves the PPG base during training); with ``ppg_base="psm"`` ``+BMS`` reuses the
    selector trained for ``+PNPG``.
    """
    key = {k: v for k, v in overrides.items() if k not in ("out", "progress")}
    code_base = key.get("ppg_base", SelectConfig.ppg_base) == "code"
    if not (code_base and key.get("use_ppg", SelectConfig.use_ppg)):
        key.pop("use_bms", None)
    return json.dumps(key, sort_keys=True, default=str)


def _dir_name(row: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in row.lstrip("+"))


def _summary(per_seed: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in per_seed[0]:
        values = np.array([s[name] for s in per_seed], dtype=np.float64)
        out[name] = float(values.mean())
        out[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def run_ablation(
    out_dir: str | Path,
    synth_cfg: SyntheticConfig,
    train_overrides: dict[str, Any],
    rows: list[str] | None = None,
    seeds: list[int] | tuple[int, ...] = (0,),
    log: Any = None,
    part_fraction: float | None = PART_FRACTION,
) -> list[dict[str, Any]]:
    """Run the Table 4 ablation on synthetic data; one result dict per row, in table order.

    For every seed ``s``: the dataset ``synth_cfg`` with ``seed = synth_cfg.seed + s`` is written once under
    ``out_dir/seed{s}/data``, then every row trains a selector with ``train_overrides`` + the row's switches
    and ``seed = s`` (run directory ``out_dir/seed{s}/{row}``) and its final selection is scored.

    Each result: ``row``, ``flags`` (the switches), the :data:`METRICS` averaged over seeds with ``*_std``
    (sample standard deviation, 0 for one seed), ``psm_accuracy`` (the stage-0 pick, a diagnostic),
    ``seconds`` (training + prediction time per seed, mean) and ``per_seed`` (the metrics of every seed).
    ``log`` (optional callable taking a string) receives a line per finished run.
    """
    rows = list(ABLATION_ROWS) if rows is None else list(rows)
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        raise InputError(f"unknown ablation row(s) {unknown}; choose from {list(ALL_ROWS)}")
    if not seeds:
        raise InputError("run_ablation needs at least one seed")
    root = Path(out_dir)
    per_row: dict[str, list[dict[str, float]]] = {r: [] for r in rows}
    for s in seeds:
        data_cfg = dataclasses.replace(synth_cfg, seed=synth_cfg.seed + int(s))
        data = make_synthetic(root / f"seed{s}" / "data", data_cfg)
        if part_fraction is not None:
            data = sam_like_bags(data, part_fraction)
        iou = proposal_gt_iou(data)
        trained: dict[str, Path] = {}
        for name in rows:
            t0 = time.perf_counter()
            overrides = {**train_overrides, **ALL_ROWS[name], "seed": int(s)}
            run_dir = root / f"seed{s}" / _dir_name(name)
            key = training_key(overrides)
            if key in trained:  # same training as an earlier row: predict with its selector
                overrides.update(predict_only=True, checkpoint=str(trained[key]))
            sel = train_row(data, overrides, run_dir)
            trained.setdefault(key, run_dir / "selector.pt")
            seconds = time.perf_counter() - t0
            scores = score_picks(sel["final_index"], data.kinds, data.correct_index, iou)
            scores["psm_accuracy"] = score_picks(
                sel["psm_top1"], data.kinds, data.correct_index, iou
            )["accuracy"]
            scores["seconds"] = seconds
            per_row[name].append(scores)
            if log is not None:
                log(f"seed {s} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return [
        {"row": name, "flags": ALL_ROWS[name], **_summary(per_row[name]), "per_seed": per_row[name]}
        for name in rows
    ]


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`run_ablation` results (percent; ``mean +- std`` over seeds)."""
    head = ["configuration", "accuracy", "mean mask IoU", "group errors", "local errors", "offset"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        lines.append("| " + " | ".join([r["row"]] + [_cell(r, m) for m in METRICS]) + " |")
    return "\n".join(lines)


def _cell(r: dict[str, Any], metric: str) -> str:
    """``metric`` of one result row in percent, ``+- std`` when it averages more than one seed."""
    value = f"{100 * r[metric]:.1f}"
    if len(r.get("per_seed", [])) > 1:
        value += f" +- {100 * r[f'{metric}_std']:.1f}"
    return value


def format_variants(by_variant: dict[str, list[dict[str, Any]]]) -> str:
    """A Markdown table with the variants side by side: per row, ``mean`` of every metric for each
    variant (percent; ``+- std`` over seeds when more than one)."""
    names = list(by_variant)
    short = {"accuracy": "acc", "mean_iou": "mIoU", "group_rate": "group", "local_rate": "local"}
    head = ["configuration"] + [f"{short.get(m, m)} ({v})" for m in short for v in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = by_variant[names[0]]
    for i, r in enumerate(first):
        cells = [r["row"]] + [_cell(by_variant[v][i], m) for m in short for v in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- benchmark presets
BENCH_DATA: dict[str, Any] = {
    "num_images": 24,
    "height": 96,
    "width": 128,
    "num_classes": 3,
    "objects_per_image": (2, 3),
    "object_size": (34, 46),
    "group_prob": 0.6,
    "num_local": 2,
}
"""The benchmark's synthetic data (SyntheticConfig fields); bags are rewritten by ``sam_like_bags``."""

BENCH_TRAIN: dict[str, Any] = {
    **SELECTOR_SMALL,
    "short_side": 192,
    "max_size": 256,
    "batch_size": 2,
    "iters": 60,
    "lr": 0.02,
    "warmup_iters": 10,
}
"""The benchmark's selector settings (SelectConfig fields); the method's hyper-parameters keep their
the method's defaults (docs/method.md). Images are upscaled x2 so that objects exceed NPG's 64 x 64 part-negative size."""

VARIANTS: dict[str, dict[str, Any]] = {
    "official": {},
    "clean": {
        "top1_box": "exact",
        "ppg_base": "psm",
        "head_init": "xavier",
        "psm_normalise": "all-bags",
    },
}
"""The selector variants the benchmark compares: ``official`` (the defaults: the official code's
score-weighted top-1 box before BMS, PPG base = stage-0 BMS box matched within < 1 px else proposal 5,
Normal(0, 0.01) head init, stage-0 loss over non-empty bags) and ``clean`` (exact top-1 box, PPG base =
box_psm, Xavier shared FCs, all bags): the options that were the defaults before."""

BENCH_SEEDS = 3
BENCH_ROWS = [*ABLATION_ROWS, "mil1+BMS"]
"""The benchmark's rows: Table 4, plus BMS on the mil1 selector (prediction only)."""
QUICK_DATA: dict[str, Any] = {**BENCH_DATA, "num_images": 16}
QUICK_TRAIN: dict[str, Any] = dict(BENCH_TRAIN)
QUICK_SEEDS = 1
QUICK_ROWS = ["mil1", "mil1+BMS", "+PNPG", "+BMS"]
"""The reduced run's rows: two trainings (mil1, +PNPG), each also predicted with BMS."""


@dataclass
class BenchSyntheticConfig:
    """Settings of `sapnet bench-synthetic` (each field's help text is its ``--help`` line)."""

    out: Path = option(Path("runs/bench/synthetic.json"), "JSON report (the table is printed too).")
    seeds: int | None = option(
        None,
        f"Number of seeds (datasets and training seeds); default {BENCH_SEEDS}, quick {QUICK_SEEDS}.",
    )
    quick: bool = option(False, "The reduced run of the test suite (1-2 minutes).", flag="--quick")
    images: int | None = option(None, "Synthetic images per seed.")
    iters: int | None = option(None, "Training iterations per row.")
    rows: list[str] | None = option(
        None,
        "Only these rows (repeat the option): "
        + ", ".join(ALL_ROWS)
        + ". Default: the Table 4 rows.",
        flag="--row",
        metavar="NAME",
    )
    work: Path | None = option(
        None, "Keep the datasets and run directories here (default: a temp folder)."
    )
    variants: list[str] | None = option(
        None,
        "Selector variant(s), repeat to compare side by side: official (default: the official "
        "code's top-1 box, PPG base, head init, loss normalisation) and clean (--top1-box exact "
        "--ppg-base psm --head-init xavier --psm-normalise all-bags).",
        flag="--variant",
        metavar="NAME",
    )


def bench_synthetic(cfg: BenchSyntheticConfig, log: Any = None) -> dict[str, Any]:
    """:func:`run_benchmark` on ``cfg``; the resolved config is saved beside the report."""
    report = run_benchmark(
        cfg.out,
        cfg.seeds,
        cfg.quick,
        cfg.images,
        cfg.iters,
        cfg.rows or None,
        cfg.work,
        log=log,
        variants=cfg.variants or None,
    )
    save_resolved_config(cfg, sidecar_config_path(cfg.out))
    return report


def run_benchmark(
    out: str | Path | None = None,
    seeds: int | None = None,
    quick: bool = False,
    num_images: int | None = None,
    iters: int | None = None,
    rows: list[str] | None = None,
    work_dir: str | Path | None = None,
    log: Any = None,
    variants: list[str] | None = None,
) -> dict[str, Any]:
    """The synthetic ablation benchmark (`sapnet bench-synthetic`, ``benchmarks/synthetic_ablation.py``).

    Runs :func:`run_ablation` with the :data:`BENCH_DATA` / :data:`BENCH_TRAIN` preset (``quick``: the
    reduced :data:`QUICK_DATA` / :data:`QUICK_TRAIN` / :data:`QUICK_ROWS`) on seeds ``0 .. seeds - 1``; ``num_images`` and
    ``iters`` override the preset. Run directories go to ``work_dir`` (a temporary folder, removed at the
    end, when None). ``variants`` (names of :data:`VARIANTS`, default ``["official"]``) each run the
    whole ablation with their overrides on the same data and seeds; with more than one, ``table`` shows
    them side by side and ``variants`` holds each one's rows. Returns ``{"config", "rows", "table",
    "seconds"}`` (``rows``: the first variant's) and writes it as JSON to ``out``.
    """
    import shutil
    import tempfile

    from stages.common.io import atomic_write_json

    data = dict(QUICK_DATA if quick else BENCH_DATA)
    train = dict(QUICK_TRAIN if quick else BENCH_TRAIN)
    n_seeds = (QUICK_SEEDS if quick else BENCH_SEEDS) if seeds is None else int(seeds)
    if n_seeds < 1:
        raise InputError(f"--seeds must be at least 1; got {n_seeds}")
    if num_images is not None:
        if num_images < 1:
            raise InputError(f"--images must be at least 1; got {num_images}")
        data["num_images"] = int(num_images)
    if iters is not None:
        if iters < 1:
            raise InputError(f"--iters must be at least 1; got {iters}")
        train["iters"] = int(iters)
    rows = list(rows) if rows else list(QUICK_ROWS if quick else BENCH_ROWS)
    variants = list(variants) if variants else ["official"]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    t0 = time.perf_counter()
    tmp = None
    if work_dir is None:
        tmp = tempfile.mkdtemp(prefix="sapnet-bench-synthetic-")
    by_variant: dict[str, list[dict[str, Any]]] = {}
    try:
        for v in variants:
            root = Path(tmp or work_dir) / v if len(variants) > 1 else Path(tmp or work_dir)
            vlog = (lambda line, v=v: log(f"[{v}] {line}")) if log is not None else None
            by_variant[v] = run_ablation(
                root, SyntheticConfig(**data), {**train, **VARIANTS[v]}, rows,
                list(range(n_seeds)), vlog,
            )  # fmt: skip
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    results = by_variant[variants[0]]
    report = {
        "config": {
            "data": data,
            "train": train,
            "seeds": list(range(n_seeds)),
            "quick": quick,
            "bags": f"sam_like_bags(part_fraction={PART_FRACTION})",
            "variants": {v: VARIANTS[v] for v in variants},
        },
        "rows": results,
        "variants": by_variant,
        "table": format_table(results) if len(variants) == 1 else format_variants(by_variant),
        "seconds": time.perf_counter() - t0,
    }
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out), report, indent=2)
    return report
