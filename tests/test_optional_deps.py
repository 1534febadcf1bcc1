"""The optional stacks `make install` puts in one environment work together: detectron2 0.6 and SAM 2.1.

sam2 1.1.0 requires iopath >= 0.1.10 while detectron2 0.6 declares iopath < 0.1.10. pyproject.toml's ``sam2``
extra pins iopath 0.1.10 on purpose (installed after detectron2 by the Makefile); these tests show both packages
import and use iopath (their only shared dependency in conflict) with that version.
"""

from __future__ import annotations

import logging
import re
import tomllib
from importlib import metadata
from pathlib import Path

import torch

from tests.conftest import REPO


def _extra_pin(extra: str, package: str) -> str:
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    for req in doc["project"]["optional-dependencies"][extra]:
        m = re.fullmatch(rf"{re.escape(package)}==(\S+)", req)
        if m:
            return m.group(1)
    raise AssertionError(f"no {package}==... pin in the {extra!r} extra")


def test_installed_iopath_is_the_pinned_one_and_detectron2_declares_the_known_conflict() -> None:
    pinned = _extra_pin("sam2", "iopath")
    assert metadata.version("iopath") == pinned
    assert metadata.version("sam2") == _extra_pin("sam2", "sam2")
    d2_dist = next(
        d for d in ("detectron2", "pb1-detectron2") if _has_dist(d)
    )  # official build or the patched sdist (scripts/install_detectron2.sh)
    iopath_reqs = [r for r in metadata.requires(d2_dist) or [] if r.startswith("iopath")]
    # If detectron2 ever drops its "<0.1.10" bound, the pin and its comment in pyproject.toml can go.
    assert iopath_reqs and "<0.1.10" in iopath_reqs[0]


def _has_dist(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_detectron2_works_with_the_pinned_iopath(tmp_path: Path) -> None:
    from stages.seg.d2 import compat

    d2 = compat.import_detectron2()
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.utils.file_io import PathManager

    cfg = get_cfg()  # the YAML is read through iopath's PathManager
    cfg.merge_from_file(
        model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    )
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" and d2.__version__ == "0.6"
    path = tmp_path / "x.txt"
    with PathManager.open(str(path), "w") as f:
        f.write("iopath")
    assert PathManager.exists(str(path)) and PathManager.get_local_path(str(path)) == str(path)


def test_sam2_works_with_the_pinned_iopath_next_to_detectron2(tmp_path: Path, caplog) -> None:
    from stages.seg.d2 import compat

    # Hiera(weights_path=...) logs `logging.info("loading Hiera", <result>)`, a malformed call (sam2 1.1.0)
    # that pytest's log capture turns into an error when the root logger is at INFO: keep it at WARNING.
    caplog.set_level(logging.WARNING)

    compat.import_detectron2()  # both in one process, as in a `make reproduce` run
    from sam2.modeling.backbones.hieradet import Hiera

    def tiny(**kw) -> Hiera:
        return Hiera(embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(3,), **kw)

    torch.manual_seed(0)
    src = tiny()
    weights = tmp_path / "hiera.pt"
    torch.save(src.state_dict(), weights)
    loaded = tiny(weights_path=str(weights))  # sam2 reads the file through iopath's g_pathmgr
    for (name, a), (_, b) in zip(
        src.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
