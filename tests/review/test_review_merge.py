"""`sapnet review` -> (an annotator fixes the masks) -> `sapnet merge-corrections`, and bad corrected files.

Data: the tiny store of tests/export (image 1: cats 11, 12 and dog 13; image 2: dog 21). The pseudo labels pick
the GT mask for every object except cat 11, which gets the union of both cats (a group error: it holds cat
12's point).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sapnet_cli.app import main
from stages.common.errors import InputError
from stages.export.config import ExportConfig
from stages.export.run import run_export
from stages.review.config import MergeConfig, ReviewConfig
from stages.review.merge import corrected_rle, run_merge
from stages.review.review import run_review
from tests.export.export_tinydata import (
    build_store,
    gt_mask,
    write_images,
    write_selections,
)

FOREIGN = {"foreign_point": 1.0}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    store, gt = build_store(root)
    write_images(root)
    # final_index: 11 -> proposal 2 (both cats), others the GT (0)
    sel = write_selections(store, root / "select", final_index=[2, 0, 0, 0])
    res = run_export(
        ExportConfig(
            store=store,
            out=root / "pseudo.json",
            selections=sel,
            selectors=("sapnet",),
            point_constraint=False,  # keep the planted group pick: review must flag it
        )
    )
    return {"root": root, "store": store, "gt": gt, "sel": sel, "pseudo": res.outputs["sapnet"]}


def _todo(run, tmp_path: Path, **kw) -> dict:
    cfg = ReviewConfig(
        pseudo=run["pseudo"], out=tmp_path / "todo", selections=run["sel"], count="1", **kw
    )
    cfg.weights = kw.get("weights", FOREIGN)
    res = run_review(cfg)
    return json.loads(res.todo.read_text())


def _anns(path: Path) -> dict[int, dict]:
    return {a["id"]: a for a in json.loads(Path(path).read_text())["annotations"]}


def _decode(seg: dict) -> np.ndarray:
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}) > 0


def _rect_polygon(ann_id: int) -> list[list[float]]:
    m = gt_mask(ann_id)
    rows, cols = np.nonzero(m)
    x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
    return [
        [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]
    ]


def test_review_flags_the_group_mask(run, tmp_path):
    todo = _todo(run, tmp_path)
    assert [a["id"] for a in todo["annotations"]] == [11]
    assert [im["id"] for im in todo["images"]] == [1]
    ann = todo["annotations"][0]
    assert isinstance(ann["segmentation"], list) and ann["attributes"]["sapnet_id"] == 11
    assert ann["attributes"]["review_rank"] == 1 and "foreign_point" in ann["attributes"]["reasons"]
    assert todo["info"]["sapnet_review"]["ids"] == [11]
    assert todo["categories"] and ann["point"]
    ranking = (tmp_path / "todo" / "ranking.csv").read_text().splitlines()
    assert (
        ranking[0].startswith("rank,id,") and ranking[1].startswith("1,11,") and len(ranking) == 5
    )
    # the starting polygon is the pseudo mask
    poly = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 40, 50)))
    start = _decode(_anns(run["pseudo"])[11]["segmentation"])
    assert (poly.astype(bool) & start).sum() / (poly.astype(bool) | start).sum() > 0.9


def test_review_rle_format_percent_and_default_weights(run, tmp_path):
    cfg = ReviewConfig(
        pseudo=run["pseudo"], out=tmp_path / "t", selections=run["sel"], count="50%", format="rle"
    )
    res = run_review(cfg)
    todo = json.loads(res.todo.read_text())
    assert res.count == 2 and res.total == 4 and len(todo["annotations"]) == 2
    pseudo = _anns(run["pseudo"])
    for ann in todo["annotations"]:
        assert ann["segmentation"] == pseudo[ann["id"]]["segmentation"]
    # the group mask holds another cat's point and disagrees with top1/largest/PSM: flagged by default
    assert 11 in [a["id"] for a in todo["annotations"]]


def test_round_trip_review_fix_merge(run, tmp_path):
    todo = _todo(run, tmp_path)
    todo["annotations"][0]["segmentation"] = _rect_polygon(11)  # the annotator redraws cat 11
    fixed = tmp_path / "todo_fixed.json"
    fixed.write_text(json.dumps(todo))
    out = tmp_path / "pseudo_fixed.json"
    res = run_merge(MergeConfig(run["pseudo"], fixed, out))
    assert (res.corrected, res.unchanged, res.deleted) == (1, 0, 0)
    before, after = _anns(run["pseudo"]), _anns(out)
    assert sorted(after) == sorted(before)
    new = after[11]
    mask = _decode(new["segmentation"])
    gt = gt_mask(11)
    assert (mask & gt).sum() / (mask | gt).sum() > 0.95  # was 0.5 (the union of two equal cats)
    assert new["corrected"] is True and "aux_segmentations" not in new
    assert "proposal_index" not in new and new["area"] == int(mask.sum())
    assert new["bbox"] == [5.0, 5.0, 15.0, 10.0]
    for k in (12, 13, 21):
        assert after[k] == before[k]
    info = json.loads(out.read_text())["info"]
    assert info["corrections"][-1]["corrected"] == 1 and info["num_corrected"] == 1
    assert info["num_objects"] == 4 and info["selector"] == "sapnet"
    # merging the same file again onto the result: the same polygon gives the same RLE -> unchanged
    res2 = run_merge(MergeConfig(out, fixed, out))
    assert (res2.corrected, res2.unchanged) == (0, 1)
    assert len(json.loads(out.read_text())["info"]["corrections"]) == 2


def test_deleted_objects_need_the_flag(run, tmp_path):
    todo = _todo(run, tmp_path)
    todo["annotations"] = []
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(todo))
    out = tmp_path / "out.json"
    with pytest.raises(InputError, match="ids 11; pass --allow-deletions"):
        run_merge(MergeConfig(run["pseudo"], fixed, out))
    assert not out.exists()
    res = run_merge(MergeConfig(run["pseudo"], fixed, out, allow_deletions=True))
    assert res.deleted == 1 and sorted(_anns(out)) == [12, 13, 21]
    assert json.loads(out.read_text())["info"]["corrections"][-1]["deleted_ids"] == [11]
    # a tool that drops info: the ids under review come from --todo
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"images": todo["images"], "annotations": []}))
    todo_path = tmp_path / "todo" / "todo.json"
    with pytest.raises(InputError, match="missing"):
        run_merge(MergeConfig(run["pseudo"], bare, out, todo=todo_path))
    res = run_merge(
        MergeConfig(run["pseudo"], bare, tmp_path / "o2.json")
    )  # no list: nothing deleted
    assert res.deleted == 0 and res.corrected == 0


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t["annotations"][0].update(id=999, attributes={}), "999 are not in the pseudo"),
        (
            lambda t: t["images"][0].update(id=77, file_name="other.jpg"),
            "is not in the pseudo labels .* made for other images",
        ),
        (
            lambda t: t["images"][0].update(file_name="elsewhere/c.png"),
            "made for other images",
        ),
        (lambda t: t["images"][0].update(width=64), "made for other images"),
        (
            lambda t: t["annotations"][0].update(segmentation=[[1.0, 1.0, 5.0, 5.0]]),
            "annotation 11: broken mask: a polygon needs",
        ),
        (
            lambda t: t["annotations"][0].update(segmentation={"size": [10, 10], "counts": "abc"}),
            "annotation 11: broken mask: RLE size",
        ),
        (
            lambda t: t["annotations"][0].update(segmentation={"size": [40, 50], "counts": [5, 3]}),
            "annotation 11: broken mask: uncompressed RLE",
        ),
        (
            lambda t: t["annotations"][0].update(segmentation=[[0, 0, 900, 0, 900, 900]]),
            "leaves the 50x40 image",
        ),
        (
            lambda t: t["annotations"][0].update(segmentation={"size": [40, 50], "counts": [2000]}),
            "annotation 11: the mask is empty",
        ),
        (lambda t: t["annotations"].append(dict(t["annotations"][0])), "more than once"),
        (lambda t: t["annotations"][0].update(category_id=9), "unknown category 9"),
        (lambda t: t["annotations"][0].update(image_id=2), "is on image 2"),
    ],
)
def test_bad_corrected_files_are_errors(run, tmp_path, edit, match):
    todo = _todo(run, tmp_path)
    edit(todo)
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(todo))
    out = tmp_path / "out.json"
    out.write_text("previous")
    with pytest.raises(InputError, match=match):
        run_merge(MergeConfig(run["pseudo"], fixed, out))
    assert out.read_text() == "previous"  # nothing half-written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.json")] == []


def test_corrected_rle_accepts_every_coco_form():
    m = np.zeros((6, 8), np.uint8, order="F")
    m[1:4, 2:6] = 1
    comp = mask_utils.encode(m)
    counts_str = comp["counts"].decode()
    a = corrected_rle({"size": [6, 8], "counts": counts_str}, 6, 8, "x")
    assert a["counts"] == counts_str
    # uncompressed: column-major run lengths (rows 1-3 of columns 2-5 are set)
    runs = [13, 3, 3, 3, 3, 3, 3, 3, 14]  # 2 empty columns + 1 row = 13 zeros first; 48 in all
    b = corrected_rle({"size": [6, 8], "counts": runs}, 6, 8, "x")
    assert b["counts"] == counts_str
    c = corrected_rle([[2, 1, 6, 1, 6, 4, 2, 4]], 6, 8, "x")
    assert int(mask_utils.area({"size": [6, 8], "counts": c["counts"].encode()})) > 0


def test_cli_review_and_merge_exit_codes(run, tmp_path, capsys):
    def cli(*argv) -> int:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in argv])
        return int(exc.value.code or 0)

    todo_dir = tmp_path / "todo"
    args = ["review", "--pseudo", run["pseudo"], "--selections", run["sel"], "--out", todo_dir]
    assert cli(*args, "--count", "2", "--weights", "foreign_point=1") == 0
    assert "flagged 2 of 4 objects" in capsys.readouterr().out
    assert cli(*args, "--count", "lots") == 2
    assert cli(*args, "--weights", "bogus=1") == 2
    fixed = tmp_path / "fixed.json"
    doc = json.loads((todo_dir / "todo.json").read_text())
    doc["annotations"][0]["segmentation"] = _rect_polygon(doc["annotations"][0]["id"])
    fixed.write_text(json.dumps(doc))
    out = tmp_path / "merged.json"
    merge = ["merge-corrections", "--pseudo", run["pseudo"], "--corrected", fixed, "--out", out]
    assert cli(*merge) == 0
    assert "deleted" in capsys.readouterr().out
    doc["annotations"][0]["id"] = 12345
    doc["annotations"][0]["attributes"] = {}
    fixed.write_text(json.dumps(doc))
    assert cli(*merge) == 2
