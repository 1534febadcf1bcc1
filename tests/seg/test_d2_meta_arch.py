"""SOLOv2 meta-architecture: training losses, inference outputs at the original size, mask -> box."""

from __future__ import annotations

import pytest
import torch

from stages.seg.d2 import compat

if not compat.detectron2_available():
    pytest.skip("detectron2 is not installed (run `make install`)", allow_module_level=True)

from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, Instances  # noqa: E402

from stages.seg.d2.config import get_sapnet_cfg  # noqa: E402
from stages.seg.d2.meta_arch import resize_predictions  # noqa: E402
from stages.seg.solov2.inference import SOLOv2Prediction  # noqa: E402

TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.SOLOV2.INSTANCE_IN_CHANNELS", "64",
    "MODEL.SOLOV2.MASK_IN_CHANNELS", "64", "MODEL.SOLOV2.INSTANCE_CHANNELS", "64",
    "MODEL.SOLOV2.NUM_INSTANCE_CONVS", "1", "MODEL.SOLOV2.MASK_CHANNELS", "32",
    "MODEL.SOLOV2.NUM_MASKS", "64", "MODEL.SOLOV2.NUM_KERNELS", "64", "MODEL.SOLOV2.NUM_CLASSES", "3",
    "MODEL.SOLOV2.SCORE_THR", "0.0", "MODEL.SOLOV2.UPDATE_THR", "0.0", "MODEL.SOLOV2.NMS_PRE", "20",
    "MODEL.SOLOV2.MAX_PER_IMG", "5",
]  # fmt: skip


@pytest.fixture(scope="module")
def model():
    cfg = get_sapnet_cfg()
    cfg.merge_from_list(TINY)
    torch.manual_seed(0)
    return build_model(cfg)


def _input(with_aux: bool) -> dict:
    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks[0, 10:60, 20:80] = True
    masks[1, 50:90, 70:120] = True
    inst = Instances((96, 128))
    inst.gt_masks = BitMasks(masks)
    inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
    inst.gt_classes = torch.tensor([0, 2])
    a = 2 if with_aux else 0
    inst.gt_aux_masks = masks[:, None].repeat(1, a, 1, 1)
    inst.gt_aux_weights = torch.full((2, a), 0.5 / 6)
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=gen)
    return {"image": image, "instances": inst, "height": 192, "width": 256}


def test_training_returns_the_two_losses(model) -> None:
    model.train()
    losses = model([_input(True), _input(False)])
    assert set(losses) == {"loss_ins", "loss_cate"}
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    assert model.head.instance_head.cate_pred.weight.grad is not None


def test_inference_outputs_at_the_original_size(model) -> None:
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in _input(False).items() if k != "instances"}])
    inst = out[0]["instances"]
    assert inst.image_size == (192, 256)
    assert len(inst) == 5  # thresholds at 0: max_per_img survivors
    assert inst.pred_masks.shape == (5, 192, 256) and inst.pred_masks.dtype == torch.bool
    assert inst.scores.shape == (5,) and inst.pred_classes.max() < 3
    assert torch.equal(
        inst.pred_boxes.tensor, BitMasks(inst.pred_masks).get_bounding_boxes().tensor
    )


def test_resize_predictions_thresholds_soft_masks_and_boxes_masks() -> None:
    soft = torch.zeros(1, 4, 6)
    soft[0, 1:3, 2:5] = 0.9  # rows 1..2, cols 2..4
    pred = SOLOv2Prediction(
        masks=soft > 0.5, scores=torch.tensor([0.8]), labels=torch.tensor([1]), soft_masks=soft
    )
    masks, boxes = resize_predictions(pred, (8, 12), mask_thr=0.5)
    assert masks.shape == (1, 8, 12)
    # x2 bilinear (align_corners=False): value 0.9 blocks keep > 0.5 over rows 2..5, cols 4..9
    expected = torch.zeros(8, 12, dtype=torch.bool)
    expected[2:6, 4:10] = True
    assert torch.equal(masks[0], expected)
    assert boxes.tolist() == [[4.0, 2.0, 10.0, 6.0]]
    empty = SOLOv2Prediction(
        masks=torch.zeros(0, 4, 6, dtype=torch.bool), scores=torch.zeros(0), labels=torch.zeros(0)
    )
    masks, boxes = resize_predictions(empty, (8, 12), mask_thr=0.5)
    assert masks.shape == (0, 8, 12) and boxes.shape == (0, 4)
