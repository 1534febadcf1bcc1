"""The `make reproduce` table builder on hand-made report JSONs (layouts of export-pseudo and train-seg)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "report_table.py"
_spec = importlib.util.spec_from_file_location("report_table", _SCRIPT)
report_table = importlib.util.module_from_spec(_spec)
sys.modules["report_table"] = report_table  # dataclasses look their module up there
_spec.loader.exec_module(report_table)
build_rows, main, parse_seg_args = (
    report_table.build_rows,
    report_table.main,
    report_table.parse_seg_args,
)
pseudo_rows, render_table = report_table.pseudo_rows, report_table.render_table
seg_eval_path = report_table.seg_eval_path


def _col(name: str, miou: float | None, biou: float, ap: float, ap50: float, n: int = 10) -> dict:
    """One selector column as stages.export.report writes it (fractions in [0, 1])."""
    return {
        "name": name,
        "num_predictions": n,
        "objects": {"all": n, "small": 2, "medium": 3, "large": n - 5},
        "mask_iou": {"all": miou, "small": 0.1, "medium": 0.2, "large": 0.3},
        "box_iou": {"all": biou, "small": None, "medium": 0.5, "large": 0.6},
        "ap_segm": {"AP": ap, "AP50": ap50, "AP75": 0.0, "APs": None, "APm": 0.1, "APl": 0.2},
        "ap_bbox": {"AP": 0.9, "AP50": 0.9, "AP75": 0.9, "APs": None, "APm": 0.9, "APl": 0.9},
    }


@pytest.fixture
def report() -> dict:
    # report order differs from the table order on purpose
    return {
        "gt": "gt.json",
        "num_images": 3,
        "selectors": [
            _col("sapnet", 0.712, 0.655, 0.301, 0.52),
            _col("oracle", 0.9, 0.85, 0.7, 0.95),
            _col("top1", 0.5, 0.45, 0.2, 0.4),
            _col("largest", None, 0.3, 0.1, 0.2),
            _col("psm", 0.6, 0.55, 0.25, 0.45),
        ],
    }


def _seg_doc(ap: float, ap50: float) -> dict:
    """train-seg's eval/coco_eval.json (detectron2 COCOEvaluator: percent)."""
    return {
        "dataset": "val.json",
        "metrics": {
            "segm": {"AP": ap, "AP50": ap50, "AP75": 1.0, "APs": None, "APm": 2.0, "APl": 3.0},
            "bbox": {"AP": 9.0, "AP50": 9.0},
        },
    }


def test_rows_ordered_and_scaled_to_percent(report: dict) -> None:
    rows = pseudo_rows(report)
    assert [r.selector for r in rows] == ["top1", "largest", "psm", "sapnet", "oracle"]
    sap = rows[3]
    assert sap.mask_iou == pytest.approx(71.2)
    assert sap.box_iou == pytest.approx(65.5)
    assert sap.pseudo_ap == pytest.approx(30.1)
    assert sap.pseudo_ap50 == pytest.approx(52.0)
    assert sap.objects == 10
    assert rows[1].mask_iou is None  # missing stays missing
    assert not any(r.seg_trained for r in rows)


def test_seg_results_in_percent_unchanged(report: dict) -> None:
    rows = build_rows(report, {"sapnet": _seg_doc(3.25, 8.5), "top1": _seg_doc(1.5, 4.0)})
    by = {r.selector: r for r in rows}
    assert by["sapnet"].seg_ap == pytest.approx(3.25)
    assert by["sapnet"].seg_ap50 == pytest.approx(8.5)
    assert by["top1"].seg_ap == pytest.approx(1.5)
    assert by["psm"].seg_trained is False and by["psm"].seg_ap is None


def test_seg_nan_and_unknown_selector() -> None:
    doc = {"metrics": {"segm": {"AP": float("nan"), "AP50": 2.0}}}
    rows = build_rows({"selectors": [_col("top1", 0.5, 0.5, 0.1, 0.2)]}, {"sapnet": doc})
    assert [r.selector for r in rows] == ["top1", "sapnet"]
    assert rows[1].seg_trained and rows[1].seg_ap is None and rows[1].seg_ap50 == 2.0
    assert rows[1].mask_iou is None


def test_render_table_cells(report: dict) -> None:
    text = render_table(build_rows(report, {"sapnet": _seg_doc(3.25, 8.5)}), "ctx line")
    lines = {ln.split(":")[0].strip("| "): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "ctx line" in text
    cells = [c.strip() for c in lines["sapnet"].strip("|").split("|")]
    # gap closed: (71.2 - 50) / (90 - 50) of the top1 -> oracle mask-mIoU gap
    assert cells[1:] == ["10", "71.2", "53.0", "65.5", "30.1", "52.0", "3.2", "8.5"]
    top1 = [c.strip() for c in lines["top1"].strip("|").split("|")]
    assert top1[-2:] == ["-", "-"]  # no SOLOv2 trained on top1
    largest = [c.strip() for c in lines["largest"].strip("|").split("|")]
    assert largest[2] == "n/a" and largest[3] == "n/a"  # no mIoU, no gap share
    assert top1[3] == "0.0" and [c.strip() for c in lines["oracle"].split("|")][4] == "100.0"


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="selectors"):
        pseudo_rows({"gt": "x"})
    with pytest.raises(ValueError, match="SELECTOR=SEG_DIR"):
        parse_seg_args(["sapnet"])
    (tmp_path / "eval").mkdir()
    assert seg_eval_path(tmp_path) == tmp_path / "eval" / "coco_eval.json"
    assert main(["--pseudo-report", str(tmp_path / "missing.json")]) == 2


def test_main_writes_md_and_json(tmp_path: Path, report: dict, capsys) -> None:
    rep = tmp_path / "report.json"
    rep.write_text(json.dumps(report))
    seg_dir = tmp_path / "seg_sapnet"
    (seg_dir / "eval").mkdir(parents=True)
    (seg_dir / "eval" / "coco_eval.json").write_text(json.dumps(_seg_doc(4.0, 9.0)))
    out = tmp_path / "table"
    assert main(["--pseudo-report", str(rep), "--seg", f"sapnet={seg_dir}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        "| sapnet: SAPNet (PRM + BMS) | 10 | 71.2 | 53.0 | 65.5 | 30.1 | 52.0 | 4.0 | 9.0 |"
        in printed
    )
    assert out.with_suffix(".md").read_text() == printed
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["unit"] == "percent"
    assert [r["selector"] for r in doc["rows"]][3] == "sapnet"
    assert doc["rows"][3]["seg_ap"] == pytest.approx(4.0)
    assert doc["rows"][3]["gap_closed"] == pytest.approx(53.0)


def test_point_aware_row_before_oracle(report: dict) -> None:
    report["selectors"].append(_col("point-aware", 0.7, 0.6, 0.3, 0.5))
    rows = pseudo_rows(report)
    assert [r.selector for r in rows][-2:] == ["point-aware", "oracle"]
    assert "point-aware (other points, no training)" in render_table(rows)
