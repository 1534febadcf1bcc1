"""detectron2 compatibility module and the install script (route 1 on the shared venv)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.errors import DependencyError
from stages.seg.d2 import compat

if not compat.detectron2_available():
    pytest.skip("detectron2 is not installed (run `make install`)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install_detectron2.sh"
needs_placeholder = pytest.mark.skipif(
    compat.has_native_ops(), reason="official detectron2 build: the real _C is used"
)


def test_apply_is_idempotent() -> None:
    compat.apply()
    first = sys.modules["detectron2._C"]
    compat.apply()
    compat.import_detectron2()
    assert sys.modules["detectron2._C"] is first


@needs_placeholder
def test_placeholder_names_the_missing_op() -> None:
    from detectron2 import _C

    assert getattr(_C, compat._PLACEHOLDER_MARK) is True
    with pytest.raises(
        compat.UnavailableOpError, match=r"deform_conv_forward.*deformable convolution"
    ):
        _C.deform_conv_forward  # noqa: B018
    # also an AttributeError, so feature probes keep working
    assert not hasattr(_C, "nms_rotated")
    assert _C.has_cuda() is False


@needs_placeholder
def test_rotated_iou_fails_with_a_clear_error() -> None:
    import torch
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]])
    with pytest.raises(DependencyError, match="rotated boxes"):
        pairwise_iou_rotated(boxes, boxes)


def test_pillow_linear_alias() -> None:
    from PIL import Image

    assert Image.LINEAR == Image.BILINEAR
    import detectron2.data.transforms  # noqa: F401  (uses Image.LINEAR as a default argument)


def test_missing_pkg_resources_asks_for_old_setuptools(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *args):
        return None if name == "pkg_resources" else real(name, *args)

    monkeypatch.setattr(compat.importlib.util, "find_spec", fake)
    monkeypatch.setitem(compat._state, "applied", False)
    with pytest.raises(DependencyError, match=r"setuptools<81"):
        compat.apply()


def test_describe_install() -> None:
    info = compat.describe_install()
    assert info["installed"] is True
    assert info["version"] == "0.6"
    assert info["route"] in ("preinstalled", "official", "pb1-patched", "unknown")
    if not info["native_ops"]:
        assert "deformable convolution (DCN)" in info["unavailable"]
        assert any("use_fast_impl=False" in n for n in info["notes"])


def test_route_record(tmp_path: Path) -> None:
    assert compat.read_route_record(tmp_path) == {}
    (tmp_path / compat.ROUTE_FILE_NAME).write_text(json.dumps({"route": "official"}))
    assert compat.read_route_record(tmp_path) == {"route": "official"}


def test_install_script_keeps_an_importable_detectron2() -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), sys.executable], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "route 1 (preinstalled)" in result.stderr


def test_install_script_rejects_a_bad_interpreter(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "no-python")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "not a working Python interpreter" in result.stderr


def test_install_script_fails_loudly_without_torch(tmp_path: Path) -> None:
    import os

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    env = {**os.environ, "SAPNET_D2_SKIP_OFFICIAL": "1"}
    result = subprocess.run(
        ["bash", str(SCRIPT), str(venv / "bin" / "python")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1
    assert "route 2 (official): skipped" in result.stderr
    assert "torch is not importable" in result.stderr and "FAILED" in result.stderr
    assert not (venv / "detectron2-route.txt").exists()
