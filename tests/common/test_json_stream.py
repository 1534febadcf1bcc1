"""Streaming a COCO-style JSON one list element at a time."""

from __future__ import annotations

import json

import pytest

import stages.common.json_stream as js
from stages.common.errors import InputError

DOC = {
    "info": {"n": [1, 2, {"x": "a,b]}"}]},
    "images": [{"id": 1, "w": 640}, {"id": 22, "w": 12345678901234}],
    "categories": [],
    "annotations": [{"id": i, "v": i * 1.25e-3, "s": "é" * i} for i in range(40)],
    "empty": [],
}


@pytest.mark.parametrize("chars", [3, 7, 1 << 22])
def test_stream_equals_json_load_at_any_buffer_size(tmp_path, monkeypatch, chars):
    monkeypatch.setattr(js, "READ_CHARS", chars)  # values and numbers cut at every buffer boundary
    path = tmp_path / "a.json"
    path.write_text(json.dumps(DOC, indent=1), encoding="utf-8")
    got: dict = {}
    for key, value, element in js.iter_top_level(path, ("images", "annotations", "empty")):
        if element:
            got[key].append(value)
        else:
            assert key not in got
            got[key] = value
    assert got == DOC


def test_list_keys_with_other_values_and_errors(tmp_path):
    path = tmp_path / "b.json"
    path.write_text('{"images": 3, "annotations": []}')
    assert list(js.iter_top_level(path)) == [("images", 3, False), ("annotations", [], False)]
    for bad in ('{"images": [1, 2', '{"images": [1 2]}', "[1, 2]", '{"a": 1} x', '{"a" 1}'):
        path.write_text(bad)
        with pytest.raises(InputError, match="b.json"):
            list(js.iter_top_level(path))
    with pytest.raises(InputError, match="cannot read"):
        list(js.iter_top_level(tmp_path / "missing.json"))
