"""Dataset mapper for SOLOv2 on pseudo labels: RLE masks plus SAPNet's auxiliary masks, one augmentation.

Input: a detectron2 dataset dict from ``load_coco_json(..., extra_annotation_keys=["aux_segmentations",
"aux_weights"])``. Each annotation has ``segmentation`` (COCO RLE dict, compressed or not, or polygons),
``category_id`` (already contiguous) and optionally ``aux_segmentations`` (list of RLE dicts) and
``aux_weights`` (list of floats, same length).

Output ``instances`` (``Instances`` at the augmented image size ``(H, W)``, crowd annotations dropped):

* ``gt_masks``: ``BitMasks (n, H, W)``; ``gt_classes``: ``(n,)`` long;
* ``gt_boxes``: ``Boxes (n, 4)`` xyxy, edge coordinates, recomputed from the transformed masks;
* ``gt_aux_masks``: ``(n, A, H, W)`` bool and ``gt_aux_weights``: ``(n, A)`` float32, A = the largest number
  of auxiliary masks of an annotation in the image (missing ones are empty masks with weight 0; A = 0 when
  no annotation has any).

Main and auxiliary masks go through the same ``transforms.apply_segmentation`` (the resize and flip sampled
once per image), exactly as detectron2 transforms bitmask annotations; instances whose main mask becomes empty
are dropped.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from stages.seg.d2 import compat

compat.apply()

from detectron2.config import configurable  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402

from stages.common.masks import segmentation_to_mask  # noqa: E402


def decode_annotation_masks(
    anno: dict[str, Any], height: int, width: int
) -> tuple[np.ndarray, list]:
    """Decode an annotation's main and auxiliary masks: ``((1 + A, H, W) bool, A weights)``.

    The masks are not checked again: the training file was validated when its dataset was registered
    (``data.validate_coco_json``).

    Raises:
        ValueError: ``aux_segmentations`` and ``aux_weights`` have different lengths.
    """
    aux = anno.get("aux_segmentations") or []
    weights = anno.get("aux_weights")
    if weights is None:
        weights = [0.5 / 6] * len(aux)
    if len(weights) != len(aux):
        raise ValueError(
            f"annotation {anno.get('id', '?')}: {len(aux)} aux_segmentations but {len(weights)} aux_weights"
        )
    segs = [anno["segmentation"], *aux]
    masks = [segmentation_to_mask(seg, height, width, check=False) for seg in segs]
    return np.stack(masks), [float(w) for w in weights]


def annotations_to_solov2_instances(
    annos: list[dict[str, Any]],
    transforms: T.TransformList,
    orig_size: tuple[int, int],
    image_size: tuple[int, int],
) -> Instances:
    """Transform the annotations of one image and build its ``Instances`` (see the module docstring).

    ``orig_size`` is the ``(H0, W0)`` of the stored image (the masks' size), ``image_size`` the ``(H, W)``
    after ``transforms``.
    """
    h0, w0 = orig_size
    h, w = image_size
    annos = [a for a in annos if int(a.get("iscrowd", 0)) == 0]
    decoded = [decode_annotation_masks(a, h0, w0) for a in annos]
    num_aux = max((len(wts) for _, wts in decoded), default=0)
    n = len(annos)
    masks = np.zeros((n, 1 + num_aux, h, w), dtype=bool)
    weights = np.zeros((n, num_aux), dtype=np.float32)
    for i, (stack, wts) in enumerate(decoded):
        for j, mask in enumerate(stack):
            masks[i, j] = transforms.apply_segmentation(mask.astype(np.uint8)) > 0
        weights[i, : len(wts)] = wts
    keep = masks[:, 0].reshape(n, -1).any(axis=1)
    masks, weights = masks[keep], weights[keep]
    classes = [int(a["category_id"]) for a, k in zip(annos, keep, strict=True) if k]

    instances = Instances((h, w))
    main = BitMasks(torch.from_numpy(np.ascontiguousarray(masks[:, 0])))
    instances.gt_masks = main
    instances.gt_boxes = Boxes(main.get_bounding_boxes().tensor)
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    instances.gt_aux_masks = torch.from_numpy(np.ascontiguousarray(masks[:, 1:]))
    instances.gt_aux_weights = torch.from_numpy(weights)
    return instances


class SOLOv2DatasetMapper:
    """Reads the image, samples one augmentation, transforms image, masks and auxiliary masks.

    Training: returns ``{"image": (3, H, W) uint8 tensor, "instances": Instances, "height", "width",
    "file_name", "image_id"}``. Test: the same without ``instances`` (annotations are dropped).
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: list[T.Augmentation | T.Transform],
        image_format: str,
        use_aux_masks: bool = True,
    ) -> None:
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.use_aux_masks = use_aux_masks

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict[str, Any]:
        return {
            "is_train": is_train,
            "augmentations": utils.build_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "use_aux_masks": bool(cfg.MODEL.SOLOV2.USE_AUX_MASKS),
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        orig_size = image.shape[:2]
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_size = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        annos = dataset_dict.pop("annotations", None)
        if not self.is_train or annos is None:
            return dataset_dict
        if not self.use_aux_masks:
            annos = [{k: v for k, v in a.items() if not k.startswith("aux_")} for a in annos]
        dataset_dict["instances"] = annotations_to_solov2_instances(
            annos, transforms, orig_size, image_size
        )
        return dataset_dict
