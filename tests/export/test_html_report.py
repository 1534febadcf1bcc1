"""report.html without a browser: the embedded data, the thumbnails and the no-GT mode (tiny store)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from export_tinydata import OBJECTS, SHIFT, M
from PIL import Image

from stages.export.config import EvaluateConfig, ExportConfig
from stages.export.html_charts import bar_chart, histogram_counts
from stages.export.html_thumbs import crop_box, sample_index
from stages.export.run import run_evaluate, run_export

ALL = ("sapnet", "top1", "largest", "psm", "oracle")


def page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    m = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', text, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1).replace("<\\/", "</"))


@pytest.fixture(scope="module")
def html_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    cfg = ExportConfig(
        store=tiny.store_path,
        out=out / "pseudo.json",
        selections=tiny.sel_dir,
        selectors=ALL,
        gt=tiny.gt_path,
        report=out / "report",
        images=tiny.images_dir,
    )
    return run_export(cfg)


def test_page_is_self_contained_and_sized(html_run):
    page = html_run.html.path
    text = page.read_text(encoding="utf-8")
    assert page.name == "report.html"
    assert not re.search(r"(src|href)=\"(https?:)?//", text), "the page must not reach the network"
    data = page_data(page)
    links = [t for im in data["images"] for t in im["thumbs"].values()]
    links += [o["strip"] for o in data["objects"]]
    assert len(links) == 2 * len(ALL) + len(OBJECTS)
    for rel in links:
        assert not rel.startswith("/") and (page.parent / rel).is_file(), rel
    files = sum((page.parent / rel).stat().st_size for rel in links)
    assert html_run.html.files_bytes == files
    assert html_run.html.page_bytes == page.stat().st_size
    assert html_run.html.num_files == len(links)


def test_embedded_numbers_per_object(html_run):
    data = page_data(html_run.html.path)
    objs = {o["id"]: o for o in data["objects"]}
    assert data["hasGT"] and data["M"] == M and data["primary"] == "sapnet"
    for ann_id, (_, _, (_, _, c0, c1)) in OBJECTS.items():
        o = objs[ann_id]
        w = c1 - c0 + 1
        assert o["iou"]["sapnet"] == 1.0 and o["iou"]["oracle"] == 1.0
        assert o["iou"]["top1"] == pytest.approx((w - SHIFT) / (w + SHIFT), abs=1e-3)
        assert o["pick"] == {"sapnet": 0, "top1": 3, "largest": 4, "psm": 1, "oracle": 0}
        assert o["prop"]["GT IoU"][0] == 1.0 and len(o["prop"]["backend score"]) == M
        assert o["err"]["sapnet"] == "" and o["err"]["psm"] == "local"  # psm picks the top rows
    # cats 11 and 12 share image 1: the whole-image mask covers the other cat -> group error
    assert objs[11]["err"]["largest"] == "group"
    im1 = next(im for im in data["images"] if im["id"] == 1)
    assert im1["n"] == 3 and im1["stats"]["largest"]["g"] == 2 and im1["stats"]["psm"]["l"] == 3
    assert im1["stats"]["sapnet"]["miou"] == 1.0
    # disagreement among the non-oracle selectors is the same for every object: > 0
    assert all(0 < o["dis"] < 1 for o in objs.values())


def test_quality_table_matches_report_json(html_run):
    text = html_run.html.path.read_text(encoding="utf-8")
    report = json.loads((html_run.html.path.parent / "report.json").read_text())
    for col in report["selectors"]:
        v = col["mask_iou"]["all"]
        cell = f'<td data-key="mask_iou.all" data-selector="{col["name"]}">{100 * v:.1f}</td>'
        assert cell in text
        g = col["errors"]["group"]
        assert f'data-key="errors.group" data-selector="{col["name"]}">{100 * g:.1f}<' in text


def test_thumbnails_show_the_masks(html_run):
    data = page_data(html_run.html.path)
    im = next(i for i in data["images"] if i["id"] == 1)
    root = html_run.html.path.parent
    # the images are a flat grey 40: sapnet's tile is tinted where the masks are, the whole-image
    # "largest" tile is tinted everywhere
    sap = np.asarray(Image.open(root / im["thumbs"]["sapnet"]).convert("RGB")).astype(int)
    big = np.asarray(Image.open(root / im["thumbs"]["largest"]).convert("RGB")).astype(int)
    assert sap.shape[:2] == (40, 50)
    assert np.abs(sap[38, 46] - 40).max() <= 6  # background (away from JPEG colour bleed)
    assert np.abs(big[38, 46] - 40).max() > 20
    strip = Image.open(root / data["objects"][0]["strip"])
    assert strip.size[0] == M * strip.size[1]


def test_no_gt_mode(tiny, tmp_path):
    cfg = ExportConfig(
        store=tiny.store_path,
        out=tmp_path / "pseudo.json",
        selections=tiny.sel_dir,
        selectors=("sapnet", "top1"),
        report=tmp_path / "report",
    )
    res = run_export(cfg)
    assert res.report is None and res.html is not None
    assert not (tmp_path / "report" / "report.json").exists()
    text = res.html.path.read_text(encoding="utf-8")
    assert 'id="quality"' not in text and "no ground truth" in text
    data = page_data(res.html.path)
    assert not data["hasGT"]
    o = data["objects"][0]
    assert "iou" not in o and "err" not in o and "GT IoU" not in o["prop"]
    assert o["score"]["sapnet"] == pytest.approx(0.9, abs=1e-3)
    assert "conf" in data["images"][0]["stats"]["top1"]


def test_evaluate_writes_html(html_run, tiny, tmp_path):
    report = run_evaluate(
        EvaluateConfig(
            pred=html_run.outputs["top1"], gt=tiny.gt_path, report=tmp_path, images=tiny.images_dir
        )
    )
    data = page_data(tmp_path / "report.html")
    assert data["selectors"] == ["top1"] and data["hasGT"] and data["M"] == 0
    assert len(data["objects"]) == len(OBJECTS)
    assert data["objects"][0]["xy"]  # points are read from the pseudo-label file
    v = report["selectors"][0]["mask_iou"]["all"]
    assert f">{100 * v:.1f}</td>" in (tmp_path / "report.html").read_text()


def test_thumbnail_of_a_sub_pixel_box():
    from stages.export.html_thumbs import image_overlay_thumb

    masks = np.zeros((1, 40, 40), bool)
    masks[0, 10, 10] = True  # a 1-pixel object: its box is 0.5 px wide at scale 0.5
    photo = np.full((20, 20, 3), 40, np.uint8)
    boxes = np.array([[10.0, 10.0, 11.0, 11.0]])
    tile = image_overlay_thumb(photo, masks, boxes, np.array([[10.0, 10.0]]), ["x"], None, 0.5)
    assert tile.shape == (20, 20, 3) and (tile != 40).any()


def test_chart_and_thumb_helpers():
    counts, edges = histogram_counts(np.array([0.0, 0.05, 0.5, 1.0]), 0, 1, bins=4)
    assert counts.tolist() == [2, 0, 1, 1] and edges.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    counts, edges = histogram_counts(np.array([3.0, 3.0]))  # constant: one bin holds both
    assert counts.sum() == 2 and edges[0] == 3.0
    svg = bar_chart({"all": [0.5, None]}, ["a", "b"], 100.0)
    assert svg.count("<rect x") == 1 + 2 and 'data-value="50.0"' in svg  # 1 bar + 2 legend keys
    assert sample_index(2, 4).tolist() == [1, 3] and sample_index(4, 2).tolist() == [0, 0, 1, 1]
    # a 10x10 box at (20, 20) in a 100x100 image, padded by max(8, 15 %) = 8 px per side
    assert crop_box(np.array([[20, 20, 30, 30]]), None, 100, 100).tolist() == [12, 12, 38, 38]
    assert crop_box(np.zeros((1, 4)), np.array([0.0, 0.0]), 50, 60).tolist() == [0, 0, 9, 9]
