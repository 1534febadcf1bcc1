"""Fixtures of the export tests: the tiny store of :mod:`export_tinydata`."""

from __future__ import annotations

import pytest
from export_tinydata import TinyRun, build_store, write_images, write_selections


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """A complete store (read-only in tests), its GT, images and SAPNet selections = the GT masks."""
    root = tmp_path_factory.mktemp("tiny")
    store_path, gt_path = build_store(root)
    sel_dir = write_selections(store_path, root / "select", final_index=[0, 0, 0, 0])
    return TinyRun(root, store_path, gt_path, write_images(root), sel_dir)
