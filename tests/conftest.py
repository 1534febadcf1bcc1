"""Shared fixtures: the 4-image COCO fixture, and a points JSON sampled from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COCO4 = REPO / "tests" / "fixtures" / "coco4"
FAKE_BACKEND = "tests.propose.fake_backend:build_fake_backend"


@pytest.fixture
def coco4(tmp_path: Path) -> dict[str, Path]:
    """A private copy of the 4-image fixture: {'gt': GT json, 'images': image dir}."""
    images = tmp_path / "images"
    shutil.copytree(COCO4 / "images", images)
    gt = tmp_path / "gt.json"
    shutil.copy(COCO4 / "annotations.json", gt)
    return {"gt": gt, "images": images, "root": tmp_path}


@pytest.fixture
def points4(coco4: dict[str, Path]) -> Path:
    """Points JSON for the 4-image fixture (center-gaussian, seed 0)."""
    from stages.points.run import PointsConfig, run_points

    out = coco4["root"] / "points.json"
    run_points(PointsConfig(coco4["gt"], out, progress=False))
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` are skipped where torch sees no CUDA device (``make gpu-check`` runs them)."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (make gpu-check runs it on a GPU)")
    for item in cuda_items:
        item.add_marker(skip)


def edit_json(path: Path, fn) -> None:
    """Load ``path``, let ``fn`` modify the document in place, write it back."""
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))
