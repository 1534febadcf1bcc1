"""COCO mask/box evaluation of SOLOv2 and the ``eval/coco_eval.{json,md}`` report files.

The evaluator is detectron2's ``COCOEvaluator`` with ``tasks=("segm", "bbox")`` (boxes are the tight extents
of the predicted masks, see :mod:`stages.seg.d2.meta_arch`) and ``use_fast_impl=False``: the fast C++ COCOeval
lives in ``detectron2._C``, which the pure-Python install lacks (pycocotools' COCOeval gives the same numbers).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from stages.common.io import atomic_write_many
from stages.seg.d2 import compat

compat.apply()

from detectron2.evaluation import COCOEvaluator  # noqa: E402

TASKS = ("segm", "bbox")
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
EVAL_JSON = "coco_eval.json"
EVAL_MD = "coco_eval.md"


def build_coco_evaluator(dataset_name: str, output_dir: str | Path) -> COCOEvaluator:
    """``COCOEvaluator(dataset_name, tasks=("segm", "bbox"), use_fast_impl=False)`` writing to ``output_dir``."""
    return COCOEvaluator(
        dataset_name,
        tasks=TASKS,
        distributed=True,
        output_dir=str(output_dir),
        use_fast_impl=False,
    )


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def clean_results(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{task: {metric: value}}`` with NaN/inf (e.g. no predictions, or a class absent from GT) as None."""
    return {
        task: {k: _finite_or_none(float(v)) for k, v in metrics.items()}
        for task, metrics in results.items()
        if isinstance(metrics, dict)
    }


def format_markdown(
    results: dict[str, dict[str, float | None]], title: str = "COCO evaluation"
) -> str:
    """A markdown table with one row per task and the columns AP, AP50, AP75, APs, APm, APl (percent)."""

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        f"# {title}",
        "",
        "| task | " + " | ".join(SUMMARY_KEYS) + " |",
        "|---|" + "---:|" * len(SUMMARY_KEYS),
    ]
    for task in TASKS:
        if task in results:
            row = [cell(results[task].get(k)) for k in SUMMARY_KEYS]
            lines.append(f"| {task} | " + " | ".join(row) + " |")
    lines.append("")
    return "\n".join(lines)


def write_eval_files(
    results: dict[str, Any], eval_dir: str | Path, context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``eval_dir/coco_eval.json`` (``context`` + per-task metrics) and ``eval_dir/coco_eval.md``.

    Returns the JSON record.
    """
    eval_dir = Path(eval_dir)
    cleaned = clean_results(results)
    record = {**(context or {}), "metrics": cleaned}
    title = "COCO evaluation"
    if context and context.get("dataset"):
        title += f" on {Path(str(context['dataset'])).name}"
    text_json = (json.dumps(record, indent=2) + "\n").encode("utf-8")
    text_md = format_markdown(cleaned, title).encode("utf-8")
    atomic_write_many(
        [
            (eval_dir / EVAL_JSON, lambda fh: fh.write(text_json)),
            (eval_dir / EVAL_MD, lambda fh: fh.write(text_md)),
        ]
    )
    return record
