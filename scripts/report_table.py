"""The `make reproduce` summary table (in the spirit of the paper's Table 3) from the stages' JSON reports.

    python scripts/report_table.py --pseudo-report OUT/pseudo/report/report.json \\
        --seg sapnet=OUT/seg_sapnet --seg top1=OUT/seg_top1 --out OUT/table

One row per selector (``top1``, ``largest``, ``psm``, ``sapnet``, ``point-aware``, ``oracle``, then any other in
report order):

- pseudo-label mask mIoU, mIoU_box and mask AP / AP50 on the *training* images, from the
  `sapnet export-pseudo --report` file ``report.json`` (:mod:`stages.export.report`: fractions in [0, 1],
  keys ``selectors[i].name``, ``mask_iou.all``, ``box_iou.all``, ``ap_segm.AP``, ``ap_segm.AP50``);
- SOLOv2 mask AP / AP50 on the *validation* images after `sapnet train-seg` on that selector's pseudo labels,
  from ``SEG_DIR/eval/coco_eval.json`` (:mod:`stages.seg.d2.evaluation`: detectron2's COCOEvaluator, values
  in percent, keys ``metrics.segm.AP``, ``metrics.segm.AP50``); ``-`` where no SOLOv2 was trained;
- the share of the top1 -> oracle mask-mIoU gap that the selector closes (``(x - top1) / (oracle - top1)``),
  when both rows are in the report.

All numbers are shown in percent. Missing numbers are shown as ``n/a``, never filled in.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stages.common.errors import InputError  # noqa: E402
from stages.common.io import load_json  # noqa: E402
from stages.export.report import report_value  # noqa: E402

SELECTOR_ORDER = ("top1", "largest", "psm", "sapnet", "point-aware", "oracle")
PAPER_NAMES = {
    "top1": "backend's best score (SAM-top1)",
    "largest": "largest mask",
    "psm": "PSM only (MIL stage 0)",
    "sapnet": "SAPNet (PRM + BMS)",
    "point-aware": "point-aware (other points, no training)",
    "oracle": "oracle (best IoU with GT, upper bound)",
}
SEG_EVAL_FILE = Path("eval") / "coco_eval.json"
# The paper's Table 3 (COCO 2017, SAM ViT-H, SOLOv2 R-50 1x, val mask AP) for orientation only.
PAPER_TABLE3 = {"top1": 24.6, "sapnet": 30.2}


@dataclass
class TableRow:
    """One selector's numbers, all in percent (None: not available).

    Attributes:
        selector: CLI name. objects: pseudo labels scored.
        mask_iou, box_iou: mean IoU of the pseudo masks / their boxes with the GT (train images).
        pseudo_ap, pseudo_ap50: COCO mask AP / AP50 of the pseudo labels as detections (train images).
        seg_ap, seg_ap50: SOLOv2 mask AP / AP50 on the validation images; None when not trained.
        seg_trained: whether a SOLOv2 result was given for this selector.
    """

    selector: str
    objects: int | None
    mask_iou: float | None
    box_iou: float | None
    pseudo_ap: float | None
    pseudo_ap50: float | None
    seg_ap: float | None = None
    seg_ap50: float | None = None
    seg_trained: bool = False


def _pct(v: Any, scale: float) -> float | None:
    """``v * scale`` as a float, None for missing or non-finite values."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v) * scale


def load_json_file(path: str | Path, what: str) -> dict[str, Any]:
    """Read a report JSON; InputError / ValueError name the file and what it should be."""
    doc = load_json(path, what)
    if not isinstance(doc, dict):
        raise ValueError(f"{what} {path} is not a JSON object")
    return doc


def seg_eval_path(path: str | Path) -> Path:
    """A train-seg output folder -> its ``eval/coco_eval.json``; a file path is returned unchanged."""
    path = Path(path)
    return path / SEG_EVAL_FILE if path.is_dir() else path


def pseudo_rows(report: dict[str, Any]) -> list[TableRow]:
    """Rows from an export-pseudo ``report.json``, ordered by :data:`SELECTOR_ORDER` then report order."""
    cols = report.get("selectors")
    if not isinstance(cols, list):
        raise ValueError("pseudo-label report has no 'selectors' list")
    rows = [
        TableRow(
            selector=str(c.get("name")),
            objects=report_value(c, "objects", "all") or c.get("num_predictions"),
            mask_iou=_pct(report_value(c, "mask_iou", "all"), 100.0),
            box_iou=_pct(report_value(c, "box_iou", "all"), 100.0),
            pseudo_ap=_pct(report_value(c, "ap_segm", "AP"), 100.0),
            pseudo_ap50=_pct(report_value(c, "ap_segm", "AP50"), 100.0),
        )
        for c in cols
        if isinstance(c, dict)
    ]
    rank = {name: i for i, name in enumerate(SELECTOR_ORDER)}
    order = sorted(range(len(rows)), key=lambda i: (rank.get(rows[i].selector, len(rank)), i))
    return [rows[i] for i in order]


def add_seg_results(rows: list[TableRow], seg: dict[str, dict[str, Any]]) -> list[TableRow]:
    """Fill ``seg_ap``/``seg_ap50`` from ``{selector: coco_eval.json document}`` (percent values).

    A selector with a SOLOv2 result but no pseudo-label column gets a row of its own.
    """
    by_name = {r.selector: r for r in rows}
    for name, doc in seg.items():
        row = by_name.get(name)
        if row is None:
            row = TableRow(name, None, None, None, None, None)
            rows.append(row)
            by_name[name] = row
        row.seg_trained = True
        row.seg_ap = _pct(report_value(doc, "metrics", "segm", "AP"), 1.0)
        row.seg_ap50 = _pct(report_value(doc, "metrics", "segm", "AP50"), 1.0)
    return rows


def build_rows(
    report: dict[str, Any], seg: dict[str, dict[str, Any]] | None = None
) -> list[TableRow]:
    """The table's rows from the pseudo-label report and the SOLOv2 evaluations (see the module docstring)."""
    return add_seg_results(pseudo_rows(report), seg or {})


def gap_closed(rows: list[TableRow]) -> dict[str, float | None]:
    """Per selector, the share (percent) of the top1 -> oracle mask-mIoU gap it closes; None when top1,
    oracle or the selector's mIoU is missing, or the gap is empty."""
    by = {r.selector: r.mask_iou for r in rows}
    lo, hi = by.get("top1"), by.get("oracle")
    out: dict[str, float | None] = {}
    for r in rows:
        ok = lo is not None and hi is not None and r.mask_iou is not None and hi > lo
        out[r.selector] = 100.0 * (r.mask_iou - lo) / (hi - lo) if ok else None
    return out


def _cell(v: float | None, trained: bool = True) -> str:
    if not trained:
        return "-"
    return "n/a" if v is None else f"{v:.1f}"


def render_table(rows: list[TableRow], context: str = "") -> str:
    """The Markdown table (what `make reproduce` prints last)."""
    lines = [
        "# sapnet reproduce: pseudo labels and SOLOv2 (cf. paper Table 3)",
        "",
    ]
    if context:
        lines += [context, ""]
    lines += [
        "| selector | objects | pseudo mask mIoU | gap closed | pseudo mIoU_box | pseudo mask AP "
        "| pseudo AP50 | SOLOv2 mask AP (val) | SOLOv2 AP50 (val) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    gaps = gap_closed(rows)
    for r in rows:
        name = PAPER_NAMES.get(r.selector, r.selector)
        lines.append(
            f"| {r.selector}: {name} | {r.objects if r.objects is not None else 'n/a'} "
            f"| {_cell(r.mask_iou)} | {_cell(gaps.get(r.selector))} | {_cell(r.box_iou)} "
            f"| {_cell(r.pseudo_ap)} | {_cell(r.pseudo_ap50)} "
            f"| {_cell(r.seg_ap, r.seg_trained)} | {_cell(r.seg_ap50, r.seg_trained)} |"
        )
    paper = ", ".join(f"{k} {v}" for k, v in PAPER_TABLE3.items())
    lines += [
        "",
        "Percent. Pseudo-label columns: the training images' pseudo labels against their ground truth "
        "(`sapnet export-pseudo --report`). SOLOv2 columns: mask AP on the validation images after "
        "`sapnet train-seg` on that selector's pseudo labels ('-': not trained; FULL=1 adds top1; "
        "n/a: no value, e.g. the model made no detection on the validation images). Gap closed: the "
        "share of the top1 -> oracle pseudo mask-mIoU gap that the selector closes.",
        f"For orientation only, the paper's Table 3 on full COCO (ViT-H SAM, SOLOv2 R-50 1x): {paper} AP; "
        "a tiny CPU example with a short schedule is not comparable in absolute terms.",
    ]
    return "\n".join(lines) + "\n"


def parse_seg_args(values: list[str]) -> dict[str, Path]:
    """``["sapnet=DIR", ...]`` -> ``{"sapnet": DIR/eval/coco_eval.json}`` (ValueError on a bad item)."""
    out: dict[str, Path] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--seg expects SELECTOR=SEG_DIR, got {v!r}")
        out[name] = seg_eval_path(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pseudo-report", type=Path, required=True, help="export-pseudo report.json")
    ap.add_argument(
        "--seg",
        action="append",
        default=[],
        metavar="SELECTOR=SEG_DIR",
        help="a train-seg output folder (or its eval/coco_eval.json) for one selector; repeatable",
    )
    ap.add_argument("--context", default="", help="a line printed above the table")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json too")
    args = ap.parse_args(argv)
    try:
        report = load_json_file(args.pseudo_report, "pseudo-label report")
        seg = {
            name: load_json_file(path, f"SOLOv2 evaluation of {name}")
            for name, path in parse_seg_args(args.seg).items()
        }
        rows = build_rows(report, seg)
    except (InputError, ValueError) as err:
        print(f"report_table: error: {err}", file=sys.stderr)
        return 2
    text = render_table(rows, args.context)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
        gaps = gap_closed(rows)
        doc = {
            "unit": "percent",
            "rows": [{**asdict(r), "gap_closed": gaps.get(r.selector)} for r in rows],
        }
        args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
