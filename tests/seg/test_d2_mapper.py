"""SOLOv2 dataset mapper: RLE main + auxiliary masks go through the same resize and flip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.common.masks import encode_masks
from stages.seg.d2 import compat

if not compat.detectron2_available():
    pytest.skip("detectron2 is not installed (run `make install`)", allow_module_level=True)

from detectron2.data import transforms as T  # noqa: E402

from stages.seg.d2.config import get_sapnet_cfg  # noqa: E402
from stages.seg.d2.mapper import SOLOv2DatasetMapper  # noqa: E402

H, W = 20, 30


def _rle(mask: np.ndarray) -> dict:
    return {"size": [H, W], "counts": encode_masks(mask[None])[0]}


def _masks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    main = np.zeros((H, W), bool)
    main[2:8, 3:12] = True  # rows 2..7, cols 3..11
    main[8, 3] = True  # asymmetric tail: rows 2..8
    aux_a = np.zeros((H, W), bool)
    aux_a[10:12, 0:2] = True  # left edge: lands on the right edge after the flip
    aux_b = np.zeros((H, W), bool)
    aux_b[15:19, 20:29] = True
    return main, aux_a, aux_b


def _record(tmp_path: Path) -> dict:
    main, aux_a, aux_b = _masks()
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
    other = np.zeros((H, W), bool)
    other[12:16, 20:25] = True
    return {
        "file_name": str(path),
        "height": H,
        "width": W,
        "image_id": 1,
        "annotations": [
            {
                "id": 1,
                "category_id": 2,
                "iscrowd": 0,
                "bbox": [3, 2, 9, 7],
                "bbox_mode": 1,
                "segmentation": _rle(main),
                "aux_segmentations": [_rle(aux_a), _rle(aux_b)],
                "aux_weights": [0.25, 0.5],
            },
            {"id": 2, "category_id": 0, "iscrowd": 0, "segmentation": _rle(other)},
            {"id": 3, "category_id": 1, "iscrowd": 1, "segmentation": _rle(other)},
        ],
    }


def _up_flip(mask: np.ndarray) -> np.ndarray:
    """x2 nearest upscale (PIL NEAREST at an exact x2 = pixel repetition), then horizontal flip."""
    return mask.repeat(2, axis=0).repeat(2, axis=1)[:, ::-1]


def test_main_and_aux_masks_are_resized_and_flipped_together(tmp_path: Path) -> None:
    mapper = SOLOv2DatasetMapper(
        True,
        augmentations=[T.Resize((2 * H, 2 * W)), T.RandomFlip(prob=1.0)],
        image_format="RGB",
        use_aux_masks=True,
    )
    out = mapper(_record(tmp_path))
    main, aux_a, aux_b = _masks()
    inst = out["instances"]
    assert out["image"].shape == (3, 2 * H, 2 * W)
    assert len(inst) == 2  # the crowd annotation is dropped
    assert inst.gt_classes.tolist() == [2, 0]
    assert np.array_equal(inst.gt_masks.tensor[0].numpy(), _up_flip(main))
    assert inst.gt_aux_masks.shape == (2, 2, 2 * H, 2 * W)
    assert np.array_equal(inst.gt_aux_masks[0, 0].numpy(), _up_flip(aux_a))
    assert np.array_equal(inst.gt_aux_masks[0, 1].numpy(), _up_flip(aux_b))
    assert not inst.gt_aux_masks[1].any()  # no aux masks: empty slots with weight 0
    assert inst.gt_aux_weights.tolist() == [[0.25, 0.5], [0.0, 0.0]]
    # rows 2..8 -> 4..17, cols 3..11 -> 6..23 -> flipped: 60 - 1 - 23 = 36 .. 53
    assert inst.gt_boxes.tensor[0].tolist() == [36.0, 4.0, 54.0, 18.0]
    # aux_a cols 0..1 -> 0..3 -> flipped 56..59: on the right edge
    assert inst.gt_aux_masks[0, 0, 20:24, 56:60].all()


def test_aux_masks_can_be_switched_off(tmp_path: Path) -> None:
    mapper = SOLOv2DatasetMapper(True, augmentations=[], image_format="RGB", use_aux_masks=False)
    inst = mapper(_record(tmp_path))["instances"]
    assert inst.gt_aux_masks.shape == (2, 0, H, W)
    assert inst.gt_aux_weights.shape == (2, 0)
    assert np.array_equal(inst.gt_masks.tensor[0].numpy(), _masks()[0])


def test_test_mode_drops_annotations_and_config_builds_resize_flip(tmp_path: Path) -> None:
    cfg = get_sapnet_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    train = SOLOv2DatasetMapper(cfg, True)
    kinds = [type(a).__name__ for a in train.augmentations.augs]
    assert kinds == ["ResizeShortestEdge", "RandomFlip"]
    assert train.use_aux_masks is True
    cfg.INPUT.MIN_SIZE_TEST = 40
    out = SOLOv2DatasetMapper(cfg, False)(_record(tmp_path))
    assert "instances" not in out and "annotations" not in out
    assert out["image"].shape == (3, 40, 60)


def test_aux_weight_count_mismatch(tmp_path: Path) -> None:
    record = _record(tmp_path)
    record["annotations"][0]["aux_weights"] = [0.5]
    mapper = SOLOv2DatasetMapper(True, augmentations=[], image_format="RGB")
    with pytest.raises(ValueError, match="2 aux_segmentations but 1 aux_weights"):
        mapper(record)
