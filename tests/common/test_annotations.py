import json

import numpy as np
import pytest

from stages.common.annotations import load_points
from stages.common.errors import InputError
from tests.conftest import edit_json


def test_loads_points_in_object_order(points4):
    ps = load_points(points4)
    assert ps.num_points == 44 and ps.num_crowd == 1
    assert np.all(np.diff(ps.image_index) >= 0)  # grouped by image, images in file order
    ptr = ps.image_ptr()
    assert ptr[-1] == 44 and len(ptr) == len(ps.images) + 1
    doc = json.loads(points4.read_text())
    first_img = doc["images"][0]["id"]
    expected = [a["id"] for a in doc["annotations"] if a["image_id"] == first_img and "point" in a]
    assert list(ps.ann_id[: ptr[1]]) == expected


def test_pointsup_point_coords_are_accepted(points4):
    def to_pointsup(doc):
        for ann in doc["annotations"]:
            if "point" in ann:
                x, y = ann.pop("point")
                ann["point_coords"] = [[0, 0], [int(x), int(y)]]
                ann["point_labels"] = [0, 1]

    edit_json(points4, to_pointsup)
    ps = load_points(points4)
    assert ps.num_points == 44
    assert np.all(ps.xy == np.floor(ps.xy))  # the first positive (integer) point was taken


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["annotations"][0].update(point=[1e9, 5]), "outside"),
        (lambda d: d["annotations"][0].update(point=[float("nan"), 5]), "not finite"),
        (lambda d: d["annotations"][0].update(category_id=99999), "unknown category"),
        (lambda d: d["annotations"][0].update(image_id=-7), "unknown image"),
        (lambda d: d["annotations"][0].pop("category_id"), "missing key"),
        (
            lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]),
            "duplicate annotation",
        ),
        (lambda d: d["annotations"][0].pop("point"), "no point"),
    ],
)
def test_bad_records_fail_naming_the_annotation_or_skip(points4, mutate, message):
    doc = json.loads(points4.read_text())
    if "point" not in doc["annotations"][0]:
        pytest.skip("first annotation is a crowd region")
    ann_id = doc["annotations"][0]["id"]
    mutate(doc)
    points4.write_text(json.dumps(doc))
    with pytest.raises(InputError) as err:
        load_points(points4)
    assert message in str(err.value) and str(points4) in str(err.value)
    assert str(ann_id) in str(err.value)
    ps = load_points(points4, on_error="skip")
    assert ps.num_points == 43 and len(ps.problems) == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"images": [], "annotations": []}', "missing top-level key 'categories'"),
    ],
)
def test_structural_problems_always_fail(tmp_path, text, message):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_points(path, on_error="skip")


def test_missing_file_and_duplicate_image_ids(tmp_path, points4):
    with pytest.raises(InputError, match="not found"):
        load_points(tmp_path / "nope.json")
    edit_json(points4, lambda d: d["images"].append(dict(d["images"][0])))
    with pytest.raises(InputError, match="duplicate image id"):
        load_points(points4, on_error="skip")
