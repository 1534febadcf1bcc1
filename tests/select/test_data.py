"""Selector data: resize/flip/normalise of images, boxes and points; padding; deterministic sharded order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stages.common.errors import InputError
from stages.propose.store import ProposalStore
from stages.select.data import (
    PIXEL_MEAN,
    PIXEL_STD,
    EpochBatchSampler,
    SelectDataset,
    batches_per_epoch,
    collate,
    load_store_arrays,
    resized_shape,
    rois_from_boxes,
)


def test_resized_shape():
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)  # short side 800
    assert resized_shape(400, 1600, 800, 1333) == (333, 1333)  # long side capped
    assert resized_shape(64, 96, 64, 96) == (64, 96)
    assert resized_shape(64, 96, 32, 1333) == (32, 48)


def test_item_coordinates_scale_and_flip(synth):
    arrays = load_store_arrays(ProposalStore.open(synth.store))
    plain = SelectDataset(arrays, synth.images_dir, 32, 1333)[(0, 0)]  # 96x64 -> 48x32, scale 0.5
    objs = plain["objects"].numpy()
    assert plain["image"].shape == (3, 32, 48)
    assert plain["size"] == (32, 48) and plain["scale"] == (0.5, 0.5)
    np.testing.assert_allclose(plain["boxes"].numpy(), arrays.boxes[objs] * 0.5)
    np.testing.assert_allclose(plain["points"].numpy(), (arrays.xy[objs] + 0.5) * 0.5)
    assert plain["labels"].tolist() == arrays.labels[objs].tolist()

    flipped_ds = SelectDataset(arrays, synth.images_dir, 32, 1333, flip_prob=1.0)
    flipped = flipped_ds[(3, 0)]
    assert flipped["flipped"]
    b, fb = plain["boxes"], flipped["boxes"]
    torch.testing.assert_close(fb[..., 0], 48 - b[..., 2])
    torch.testing.assert_close(fb[..., 2], 48 - b[..., 0])
    torch.testing.assert_close(fb[..., 1::2], b[..., 1::2])
    torch.testing.assert_close(flipped["points"][:, 0], 48 - plain["points"][:, 0])
    torch.testing.assert_close(flipped["image"], plain["image"].flip(-1))


def test_normalisation_and_native_size(synth):
    arrays = load_store_arrays(ProposalStore.open(synth.store))
    item = SelectDataset(arrays, synth.images_dir, 64, 96)[(0, 1)]
    rgb = np.asarray(Image.open(synth.images_dir / arrays.file_names[1]).convert("RGB"), np.float32)
    expected = (rgb - np.array(PIXEL_MEAN)) / np.array(PIXEL_STD)
    np.testing.assert_allclose(
        item["image"].permute(1, 2, 0).numpy(), expected, rtol=1e-5, atol=1e-5
    )


def test_flip_is_a_function_of_seed_epoch_image(synth):
    arrays = load_store_arrays(ProposalStore.open(synth.store))
    ds = SelectDataset(arrays, synth.images_dir, 64, 96, flip_prob=0.5, seed=3)
    flips = [[ds.flipped(e, i) for i in range(6)] for e in range(8)]
    assert flips == [[ds.flipped(e, i) for i in range(6)] for e in range(8)]
    rate = np.mean(flips)
    assert 0.2 < rate < 0.8


def test_image_size_mismatch_is_an_input_error(synth, tmp_path):
    arrays = load_store_arrays(ProposalStore.open(synth.store))
    images = tmp_path / "images"
    images.mkdir()
    for name in arrays.file_names:
        Image.new("RGB", (50, 40)).save(images / name)
    with pytest.raises(InputError, match="does not match the store"):
        SelectDataset(arrays, images, 64, 96)[(0, 0)]


def test_collate_pads_to_multiples_of_32():
    items = []
    for h, w in ((33, 40), (20, 70)):
        items.append(
            {
                "image": torch.ones(3, h, w),
                "boxes": torch.zeros(1, 6, 4),
                "points": torch.zeros(1, 2),
                "labels": torch.zeros(1, dtype=torch.long),
                "objects": torch.zeros(1, dtype=torch.long),
                "image_index": 0,
                "scale": (1.0, 1.0),
                "size": (h, w),
                "flipped": False,
            }
        )
    batch = collate(items)
    assert batch["images"].shape == (2, 3, 64, 96)
    assert batch["images"][0, :, :33, :40].eq(1).all() and batch["images"][0, :, 33:].eq(0).all()
    assert batch["images"][1, :, :, 70:].eq(0).all()


def test_sampler_is_deterministic_sharded_and_resumable():
    images = np.arange(10, 17)  # 7 images
    a = list(EpochBatchSampler(images, 2, epoch=4, seed=1))
    assert a == list(EpochBatchSampler(images, 2, epoch=4, seed=1))
    assert a != list(EpochBatchSampler(images, 2, epoch=5, seed=1))
    assert len(a) == batches_per_epoch(7, 2) == 4
    assert sorted(i for b in a for _, i in b) == list(range(10, 17))
    assert all(e == 4 for b in a for e, _ in b)
    # two ranks: 7 images padded to 8, disjoint halves of the same order
    r0 = EpochBatchSampler(images, 2, 4, 1, rank=0, world_size=2).shard()
    r1 = EpochBatchSampler(images, 2, 4, 1, rank=1, world_size=2).shard()
    assert len(r0) == len(r1) == 4
    assert set(r0) | set(r1) == set(range(10, 17))
    # resuming at batch 2 yields the tail of the same epoch
    assert list(EpochBatchSampler(images, 2, 4, 1, start_batch=2)) == a[2:]
    # no shuffle keeps the given order
    assert [i for b in EpochBatchSampler(images, 3, 0, shuffle=False) for _, i in b] == list(
        range(10, 17)
    )


def test_rois_from_boxes():
    rois = rois_from_boxes([torch.ones(2, 3, 4), torch.zeros(0, 3, 4), torch.full((1, 3, 4), 2.0)])
    assert rois.shape == (9, 5)
    assert rois[:, 0].tolist() == [0.0] * 6 + [2.0] * 3
