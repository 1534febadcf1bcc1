"""Bad inputs, stage by stage, through the CLI: exit code, a message naming the file/record and the problem,
no traceback, and every file in the work folder byte-identical afterwards (nothing half-written).

Each case copies the finished tiny pipeline (``work``), breaks one thing, and runs one command. The cases the
campaign of issue 10 found broken are marked with their defect number in the id.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import FAKE_BACKEND
from tests.reliability.conftest import SELECT_ARGS, run_cli, tree_hash


def edit(path: str, fn: Callable[[dict], None]) -> None:
    doc = json.loads(Path(path).read_text())
    fn(doc)
    Path(path).write_text(json.dumps(doc))


def first_ann(doc: dict, crowd: bool = False) -> dict:
    return next(a for a in doc["annotations"] if bool(a.get("iscrowd", 0)) == crowd)


def truncate(path: str, keep: float = 0.5) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


@dataclass
class Case:
    id: str
    setup: Callable[[Path], None]
    args: list[str]
    code: int
    message: list[str]  # regexes that must all appear in the output
    new_ok: str | None = (
        None  # an output that may appear: a resumable store with the failed image pending
    )


def _dup_id(doc: dict) -> None:
    a, b = [x for x in doc["annotations"] if not x.get("iscrowd")][:2]
    b["id"] = a["id"]


def _bad_polygon(doc: dict) -> None:
    first_ann(doc)["segmentation"] = [[1, 2, 3]]


def _garbage_rle(doc: dict) -> None:
    ann = first_ann(doc)
    img = next(i for i in doc["images"] if i["id"] == ann["image_id"])
    ann["segmentation"] = {"size": [img["height"], img["width"]], "counts": "garbage!!"}


def _point(value) -> Callable[[dict], None]:
    def fn(doc: dict) -> None:
        first_ann(doc)["point"] = value

    return fn


def _first_image_file(work: Path) -> Path:
    doc = json.loads((work / "points.json").read_text())
    return work / "images" / doc["images"][0]["file_name"]


def _truncate_image(work: Path) -> None:
    truncate(str(_first_image_file(work)), 0.3)


def _shrink_image(work: Path) -> None:
    from PIL import Image

    path = _first_image_file(work)
    with Image.open(path) as img:
        img.resize((img.width // 2, img.height // 2)).save(path)


def _mkdir(*names: str) -> Callable[[Path], None]:
    def fn(work: Path) -> None:
        for name in names:
            (work / name).mkdir(parents=True)

    return fn


def _file(name: str) -> Callable[[Path], None]:
    return lambda work: (work / name).write_text("not a folder\n")


def _foreign_checkpoint(work: Path) -> None:
    """Another store (a copy of this one, created at another time) next to the run trained on this one."""
    import shutil

    import zarr

    shutil.copytree(work / "store.zarr", work / "other.zarr")
    group = zarr.open_group(str(work / "other.zarr"), mode="r+")
    meta = dict(group.attrs["sapnet_store"])
    meta["created_at"] = "2000-01-01T00:00:00+00:00"
    group.attrs["sapnet_store"] = meta


def _no_annotations(doc: dict) -> None:
    doc["annotations"] = []


def _rle_size(doc: dict) -> None:
    seg = doc["annotations"][0]["segmentation"]
    seg["size"] = [seg["size"][0] + 1, seg["size"][1]]


def _pred(fn: Callable[[list[dict]], None]) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        edit(str(work / "pseudo.json"), lambda doc: fn(doc["annotations"]))

    return setup


def _set(key: str, value) -> Callable[[list[dict]], None]:
    def fn(anns: list[dict]) -> None:
        anns[0][key] = value

    return fn


def _rle_other_size(anns: list[dict]) -> None:
    anns[0]["segmentation"] = {"size": [10, 10], "counts": "0`1"}  # 100 pixels of a 10x10 mask


def _garbage_counts(anns: list[dict]) -> None:
    anns[0]["segmentation"] = {**anns[0]["segmentation"], "counts": ""}


def _seg_checkpoint(kind: str) -> Callable[[Path], None]:
    """A train-seg output folder with a broken checkpoint and a config.yaml to keep."""

    def setup(work: Path) -> None:
        seg = work / "seg"
        seg.mkdir()
        (seg / "config.yaml").write_text("# the run's config, must survive a refused --resume\n")
        good = {"model": {"w": torch.zeros(3)}, "iteration": 1}
        if kind == "truncated":
            torch.save(good, seg / "model_0000001.pth")
            truncate(str(seg / "model_0000001.pth"), 0.5)
            (seg / "last_checkpoint").write_text("model_0000001.pth")
        elif kind == "empty-final":
            (seg / "model_final.pth").write_bytes(b"")
        elif kind == "empty-final-tagged":
            (seg / "model_final.pth").write_bytes(b"")
            (seg / "last_checkpoint").write_text("model_final.pth")

    return setup


TRAIN_SEG = ["train-seg", "--train", "pseudo.json", "--images", "images", "--out", "seg",
             "--iters", "2", "--ims-per-batch", "1", "--min-size", "64", "--max-size", "96",
             "--device", "cpu"]  # fmt: skip
PROPOSE = ["propose", "--annotations", "points.json", "--images", "images", "--store", "new.zarr",
           "--backend", FAKE_BACKEND, "--chunk-points", "16", "--no-progress"]  # fmt: skip
SELECT = ["select", "--store", "store.zarr", "--images", "images", "--out", "sel", *SELECT_ARGS]
EXPORT = ["export-pseudo", "--store", "store.zarr", "--selections", "sel", "--out", "p2.json",
          "--selector", "sapnet,top1"]  # fmt: skip
EVALUATE = ["evaluate", "--pred", "pseudo.json", "--gt", "gt.json", "--report", "ev"]
POINTS = ["points", "--annotations", "gt.json", "--out", "pts.json", "--no-progress"]


def _json(name: str, fn: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda work: edit(str(work / name), fn)


def _text(name: str, text: str) -> Callable[[Path], None]:
    return lambda work: (work / name).write_text(text)


def _rm(name: str) -> Callable[[Path], None]:
    return lambda work: (work / name).unlink()


def _both(*fns: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        for fn in fns:
            fn(work)

    return setup


CASES = [
    # ------------------------------------------------------------------ points
    Case("points/invalid-json", _text("gt.json", '{"images": ['), POINTS, 2,
         ["gt.json", "not valid JSON"]),
    Case("points/no-annotations-key", _json("gt.json", lambda d: d.pop("annotations")), POINTS, 2,
         ["gt.json", "missing top-level key 'annotations'"]),
    Case("points/unknown-image", _json("gt.json", lambda d: first_ann(d).update(image_id=999)),
         POINTS, 2, ["gt.json", "unknown image id", "image id 999"]),
    Case("points/duplicate-ann-id[defect2]", _json("gt.json", _dup_id), POINTS, 2,
         ["gt.json", "annotation id \\d+", "duplicate annotation id"]),
    Case("points/polygon-3-values[defect8]", _json("gt.json", _bad_polygon), POINTS, 2,
         ["gt.json", "annotation id \\d+", "polygon 0 has 3 coordinate"]),
    Case("points/garbage-rle", _json("gt.json", _garbage_rle), POINTS, 2,
         ["gt.json", "annotation id \\d+", "RLE counts"]),
    Case("points/out-is-a-directory[defect7]", _mkdir("pts.json"), POINTS, 2,
         ["pts.json", "is a directory"]),
    Case("points/out-under-a-file[defect7]", _file("blocker"),
         ["points", "--annotations", "gt.json", "--out", "blocker/pts.json"], 2,
         ["blocker", "not a folder|is a file"]),
    Case("points/out-is-input", lambda w: None,
         ["points", "--annotations", "gt.json", "--out", "gt.json"], 2, ["would overwrite"]),
    # ------------------------------------------------------------------ propose
    Case("propose/point-outside", _json("points.json", _point([-50, 3])), PROPOSE, 2,
         ["points.json", "annotation id \\d+", "outside"]),
    Case("propose/nan-point", _json("points.json", _point([math.nan, 3])), PROPOSE, 2,
         ["points.json", "annotation id \\d+", "not finite"]),
    Case("propose/duplicate-ann-id", _json("points.json", _dup_id), PROPOSE, 2,
         ["points.json", "duplicate annotation id"]),
    Case("propose/missing-image", lambda w: _first_image_file(w).unlink(), PROPOSE, 2,
         ["missing", "\\.jpg"]),
    Case("propose/truncated-image", _truncate_image, PROPOSE, 2, ["\\.jpg", "cannot be decoded"],
         new_ok="new.zarr"),
    Case("propose/image-wrong-size", _shrink_image, PROPOSE, 2,
         ["\\.jpg", "annotations say", "image id \\d+"], new_ok="new.zarr"),
    Case("propose/store-is-a-file", _file("new.zarr"), PROPOSE, 3,
         ["new.zarr", "not a proposal store"]),
    Case("propose/foreign-store", lambda w: None,
         [*PROPOSE[:6], "store.zarr", "--backend", FAKE_BACKEND, "--chunk-points", "8"], 3,
         ["store.zarr", "other inputs", "chunk_points"]),
    Case("propose/store-under-a-file[defect7]", _file("blocker"),
         [*PROPOSE[:6], "blocker/s.zarr", *PROPOSE[7:]], 2, ["blocker", "not a folder|is a file"]),
    Case("propose/bad-shard", lambda w: None, [*PROPOSE, "--shard", "3/2"], 2, ["--shard"]),
    # ------------------------------------------------------------------ select
    Case("select/no-store", lambda w: None, [*SELECT[:2], "none.zarr", *SELECT[3:]], 3,
         ["none.zarr", "no proposal store"]),
    Case("select/missing-image", lambda w: _first_image_file(w).unlink(), SELECT, 2,
         ["missing", "\\.jpg"]),
    Case("select/image-wrong-size", _shrink_image, SELECT, 2, ["\\.jpg", "store says"]),
    Case("select/out-is-a-file[defect7]", _file("selx"), [*SELECT[:6], "selx", *SELECT[7:]], 2,
         ["selx", "not a folder"]),
    Case("select/resume-other-options[defect4]", lambda w: None, [*SELECT, "--resume", "--seed", "1"],
         4, ["last.pt", "seed"]),
    Case("select/resume-other-store[defect3]", _foreign_checkpoint,
         [*SELECT[:2], "other.zarr", *SELECT[3:], "--resume"], 4,
         ["last.pt", "another proposal store"]),
    Case("select/resume-truncated-checkpoint", lambda w: truncate(str(w / "sel/checkpoints/last.pt")),
         [*SELECT, "--resume"], 4, ["last.pt", "cannot be read"]),
    Case("select/predict-only-empty-selector", _text("empty.pt", ""),
         [*SELECT[:6], "selp", *SELECT[7:], "--predict-only", "--checkpoint", "empty.pt"], 4,
         ["empty.pt", "cannot be read"]),
    # ------------------------------------------------------------------ export-pseudo
    Case("export/truncated-selections-npz[defect9]", lambda w: truncate(str(w / "sel/selections.npz")),
         EXPORT, 3, ["selections.npz", "broken"]),
    Case("export/missing-selections-json[defect9]", _rm("sel/selections.json"), EXPORT, 3,
         ["selections.json", "missing"]),
    Case("export/selections-of-another-store", _json("sel/selections.json",
         lambda d: d["store"].update(created_at="yesterday")), EXPORT, 3,
         ["another proposal store", "created_at"]),
    Case("export/gt-polygon-3-values[defect8]", _json("gt.json", _bad_polygon),
         [*EXPORT, "--gt", "gt.json", "--report", "rep"], 2,
         ["gt.json", "annotation id \\d+", "polygon 0 has 3"]),
    Case("export/out-is-a-directory[defect7]", _mkdir("p2.json"), EXPORT, 2,
         ["p2.json", "is a directory"]),
    Case("export/second-out-is-a-directory[defect16]", _mkdir("p2.top1.json"), EXPORT, 2,
         ["p2.top1.json", "is a directory"]),
    Case("export/report-is-a-file[defect7]", _file("rep"),
         [*EXPORT, "--gt", "gt.json", "--report", "rep"], 2, ["rep", "not a folder|is a file"]),
    Case("export/unknown-selector", lambda w: None, [*EXPORT[:-1], "sapnet,nosuch"], 2, ["nosuch"]),
    # ------------------------------------------------------------------ evaluate
    Case("evaluate/rle-size-differs[defect12]", _pred(_rle_other_size), EVALUATE, 2,
         ["pseudo.json", "record 0", "RLE size"]),
    Case("evaluate/garbage-rle-counts[defect12]", _pred(_garbage_counts), EVALUATE, 2,
         ["pseudo.json", "record 0", "RLE counts"]),
    Case("evaluate/unknown-category[defect12]", _pred(_set("category_id", 999)), EVALUATE, 2,
         ["pseudo.json", "record 0", "category id 999"]),
    Case("evaluate/one-unmatched-id[defect12]", _pred(_set("id", 123456789)), EVALUATE, 2,
         ["pseudo.json", "123456789", "not in the GT"]),
    Case("evaluate/score-null[defect12]", _pred(_set("score", None)), EVALUATE, 2,
         ["pseudo.json", "record 0", "score None"]),
    Case("evaluate/unknown-image", _pred(_set("image_id", 999)), EVALUATE, 2,
         ["pseudo.json", "image id 999"]),
    Case("evaluate/gt-polygon-3-values[defect8]", _json("gt.json", _bad_polygon), EVALUATE, 2,
         ["gt.json", "annotation id \\d+", "polygon 0 has 3"]),
    Case("evaluate/report-is-a-file[defect7]", _file("ev"), EVALUATE, 2,
         ["ev", "not a folder|is a file"]),
    # ------------------------------------------------------------------ train-seg
    Case("train-seg/no-annotations[defect11]", _json("pseudo.json", _no_annotations), TRAIN_SEG, 2,
         ["pseudo.json", "no annotations to train on"]),
    Case("train-seg/rle-size-differs", _json("pseudo.json", _rle_size), TRAIN_SEG, 2,
         ["pseudo.json", "annotation \\d+", "RLE size"]),
    Case("train-seg/missing-image", lambda w: _first_image_file(w).unlink(), TRAIN_SEG, 2,
         ["pseudo.json", "missing"]),
    Case("train-seg/val-polygon-3-values[defect8]", _json("gt.json", _bad_polygon),
         [*TRAIN_SEG, "--val", "gt.json"], 2, ["gt.json", "annotation \\d+", "polygon 0 has 3"]),
    Case("train-seg/out-is-a-file[defect7]", _file("seg"), TRAIN_SEG, 2, ["seg", "not a folder"]),
    Case("train-seg/resume-truncated-checkpoint[defect10,4]", _seg_checkpoint("truncated"),
         [*TRAIN_SEG, "--resume"], 4, ["model_0000001.pth", "cannot be read"]),
    Case("train-seg/resume-empty-final-model[defect1]", _seg_checkpoint("empty-final"),
         [*TRAIN_SEG, "--resume"], 4, ["model_final.pth", "empty"]),
    Case("train-seg/resume-empty-tagged-final[defect1]", _seg_checkpoint("empty-final-tagged"),
         [*TRAIN_SEG, "--resume"], 4, ["model_final.pth", "empty"]),
    Case("train-seg/eval-only-empty-checkpoint[defect10]", _seg_checkpoint("empty-final"),
         [*TRAIN_SEG, "--eval-only", "--val", "gt.json"], 4, ["model_final.pth", "empty"]),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, work: Path, capfd):
    case.setup(work)
    before = tree_hash(work)
    res = run_cli(case.args, capfd)
    assert res.code == case.code, res.text
    for pattern in case.message:
        assert re.search(pattern, res.text), (pattern, res.text)
    assert "Traceback" not in res.text
    after = tree_hash(work)
    if case.new_ok is not None:
        from stages.propose.store import ProposalStore

        assert not ProposalStore.open(work / case.new_ok).is_complete()
        sidecar = (
            Path(case.new_ok).stem + ".config.yaml"
        )  # the store's resolved config, written with it
        after = {
            k: v for k, v in after.items() if not k.startswith(case.new_ok + "/") and k != sidecar
        }
    assert after == before, "a failed run changed files"


# --------------------------------------------------------------------------- outcomes that are not errors
def test_points_skip_drops_every_duplicate_and_counts_right(work: Path, capfd):
    """Defect 2: with --on-error skip both annotations of a duplicated id are dropped and the count is true."""
    edit("gt.json", _dup_id)
    res = run_cli([*POINTS, "--on-error", "skip"], capfd)
    assert res.code == 0, res.text
    doc = json.loads(Path("pts.json").read_text())
    with_point = [a for a in doc["annotations"] if "point" in a]
    ids = [a["id"] for a in with_point]
    assert len(ids) == len(set(ids))
    assert f"wrote {len(with_point)} points" in res.text
    problems = doc["info"]["sapnet_points"]["problems"]
    assert len(problems) == 2 and all("duplicate annotation id" in p["message"] for p in problems)


def test_points_skip_names_a_malformed_polygon(work: Path, capfd):
    """Defect 8: under --on-error skip a malformed polygon is skipped and recorded with its id."""
    edit("gt.json", _bad_polygon)
    bad_id = first_ann(json.loads(Path("gt.json").read_text()))["id"]
    res = run_cli([*POINTS, "--on-error", "skip"], capfd)
    assert res.code == 0, res.text
    doc = json.loads(Path("pts.json").read_text())
    problems = doc["info"]["sapnet_points"]["problems"]
    assert [p["ann_id"] for p in problems] == [bad_id]
    assert bad_id not in {a["id"] for a in doc["annotations"]}


def test_evaluate_ids_that_match_nothing_still_score_ap(work: Path, capfd):
    """A file whose ids match no GT annotation at all (a model's output) is scored for AP only."""
    edit("pseudo.json", lambda d: [a.update(id=a["id"] + 10**9) for a in d["annotations"]])
    res = run_cli(EVALUATE, capfd)
    assert res.code == 0, res.text
    assert "per-object metrics skipped" in Path("ev/report.json").read_text()


def test_selections_npz_that_is_not_a_zip(work: Path, capfd):
    Path("sel/selections.npz").write_bytes(b"\x00" * 100)
    assert not zipfile.is_zipfile("sel/selections.npz")
    res = run_cli(EXPORT, capfd)
    assert res.code == 3 and "selections.npz" in res.text and "Traceback" not in res.text
