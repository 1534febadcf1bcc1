"""Validation and registration of the pseudo-label and ground-truth COCO JSONs."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from stages.common.errors import InputError
from stages.seg.d2 import compat

if not compat.detectron2_available():
    pytest.skip("detectron2 is not installed (run `make install`)", allow_module_level=True)

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from stages.seg.d2.data import (  # noqa: E402
    check_same_categories,
    register_datasets,
    validate_coco_json,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "seg"
IMAGES = FIXTURES / "images"


@pytest.fixture
def pseudo() -> dict:
    return json.loads((FIXTURES / "pseudo.json").read_text())


def _write(tmp_path: Path, data: dict, name: str = "p.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_fixture_is_valid() -> None:
    summary = validate_coco_json(FIXTURES / "pseudo.json", IMAGES)
    assert (summary.num_images, summary.num_annotations, summary.num_with_aux) == (2, 14, 13)
    assert sorted(summary.categories) == [1, 15, 31, 36, 62, 77]
    assert summary.categories[1] == "person"
    gt = validate_coco_json(FIXTURES / "gt.json", IMAGES, require_masks=False)
    check_same_categories(summary, gt)


def test_annotations_without_masks(tmp_path: Path, pseudo: dict) -> None:
    del pseudo["annotations"][2]["segmentation"]
    pseudo["annotations"][5]["segmentation"] = []
    with pytest.raises(InputError, match=r"p\.json: 2 annotations have no mask.*ids 3, 6"):
        validate_coco_json(_write(tmp_path, pseudo), IMAGES)


def test_missing_image_files(tmp_path: Path, pseudo: dict) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copy(IMAGES / "000000000536.jpg", images)
    with pytest.raises(
        InputError, match=r"1 of 2 image files missing under .*imgs: 000000425989\.jpg"
    ):
        validate_coco_json(_write(tmp_path, pseudo), images)


def test_category_mismatch(tmp_path: Path, pseudo: dict) -> None:
    train = validate_coco_json(FIXTURES / "pseudo.json", IMAGES)
    gt = copy.deepcopy(pseudo)
    gt["categories"][0]["name"] = "human"
    gt["categories"].append({"id": 90, "name": "toothbrush"})
    val = validate_coco_json(_write(tmp_path, gt, "gt.json"), IMAGES, require_masks=False)
    with pytest.raises(
        InputError, match=r"only in train \[\], only in val \[90\], same id with another name \[1\]"
    ):
        check_same_categories(train, val)
    with pytest.raises(InputError, match="categories differ"):
        register_datasets(FIXTURES / "pseudo.json", IMAGES, tmp_path / "gt.json", IMAGES)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (
            lambda a: a.update(aux_weights=[0.1]),
            "aux_segmentations must be a list with one aux_weights entry each",
        ),
        (
            lambda a: a["segmentation"].update(size=[10, 10]),
            r"segmentation RLE size \[10, 10\] does not match",
        ),
        (lambda a: a.update(category_id=99), "category_id 99 is not in 'categories'"),
        (lambda a: a.update(image_id=12345), "unknown image_id 12345"),
    ],
)
def test_bad_annotations(tmp_path: Path, pseudo: dict, mutate, match: str) -> None:
    mutate(pseudo["annotations"][0])
    with pytest.raises(InputError, match=rf"annotation 1: {match}"):
        validate_coco_json(_write(tmp_path, pseudo), IMAGES)


def test_not_coco(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        validate_coco_json(bad, IMAGES)
    with pytest.raises(InputError, match="missing or invalid 'annotations'"):
        validate_coco_json(_write(tmp_path, {"images": [], "categories": []}), IMAGES)


def test_registration_keeps_aux_keys_and_can_repeat() -> None:
    for _ in range(2):  # re-registering the same names replaces them
        info = register_datasets(
            FIXTURES / "pseudo.json", IMAGES, FIXTURES / "gt.json", IMAGES, "t_train", "t_val"
        )
    assert info["num_classes"] == 6 and info["val"] == "t_val"
    records = DatasetCatalog.get("t_train")
    ann = records[0]["annotations"][0]
    assert len(ann["aux_segmentations"]) == 3 and len(ann["aux_weights"]) == 3
    assert {a["category_id"] for r in records for a in r["annotations"]} <= set(range(6))
    meta = MetadataCatalog.get("t_val")
    assert meta.thing_classes[0] == "person" and meta.evaluator_type == "coco"
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 15: 1, 31: 2, 36: 3, 62: 4, 77: 5}


def test_compact_dataset_equals_load_coco_json(tmp_path) -> None:
    """The compact training set holds the records load_coco_json makes (empty images filtered)."""
    import numpy as np
    from detectron2.data.datasets import load_coco_json

    from stages.seg.d2.compact import CompactCocoDataset
    from stages.seg.d2.data import EXTRA_ANNOTATION_KEYS

    data = json.loads((FIXTURES / "pseudo.json").read_text())
    data["images"].append({"id": 999, "file_name": "none.jpg", "height": 4, "width": 4})
    # the annotations first: a valid, if unusual, key order
    path = _write(tmp_path, {k: data[k] for k in ("annotations", "categories", "images")})
    want = load_coco_json(str(path), str(IMAGES), "t_cmp", EXTRA_ANNOTATION_KEYS)
    want = [r for r in want if any(not a.get("iscrowd", 0) for a in r["annotations"])]
    ds = CompactCocoDataset(path, IMAGES, EXTRA_ANNOTATION_KEYS)
    assert len(ds) == len(want) == len(data["images"]) - 1
    assert [ds[i] for i in range(len(ds))] == want
    assert isinstance(ds.blob, np.ndarray) and ds.blob.dtype == np.uint8  # one shared buffer
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_registered_train_set_is_compact_and_workers_read_it() -> None:
    import torch

    from stages.seg.d2.compact import CompactCocoDataset

    register_datasets(FIXTURES / "pseudo.json", IMAGES, train_name="t_cmp_train")
    ds = DatasetCatalog.get("t_cmp_train")
    assert isinstance(ds, CompactCocoDataset)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=1, multiprocessing_context="fork"
    )
    assert [r["image_id"] for r in loader] == [ds[i]["image_id"] for i in range(len(ds))]
