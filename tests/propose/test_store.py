import numpy as np
import pytest

from stages.common.annotations import load_points
from stages.common.errors import StoreError
from stages.common.masks import decode_rles, encode_masks, masks_to_boxes
from stages.propose.store import ProposalStore, UnitResult, plan_units


def test_plan_units_groups_images_and_raises_chunk_to_the_largest_image():
    ptr, c = plan_units(np.array([3, 0, 4, 2, 9, 1]), chunk_points=6)
    assert c == 9  # one image has 9 points
    ptr, c = plan_units(np.array([3, 0, 4, 2, 5, 1]), chunk_points=6)
    assert c == 6
    assert ptr.tolist() == [0, 2, 4, 6]  # [3, 0] | [4, 2] | [5, 1]


def _fill(store: ProposalStore, points) -> dict[int, np.ndarray]:
    """Write deterministic masks for every unit; returns ann_id -> (M, H, W) masks."""
    truth = {}
    m = store.num_proposals
    for u in range(store.num_units):
        lo, hi = store.unit_rows(u)
        n = hi - lo
        res = UnitResult(
            boxes=np.zeros((n, m, 4), np.float32),
            scores=np.zeros((n, m), np.float32),
            area=np.zeros((n, m), np.int64),
            rle=np.full((n, m), "", object),
            status=np.ones(n, np.uint8),
            error=np.full(n, "", object),
        )
        ilo, ihi = store.unit_image_ptr[u], store.unit_image_ptr[u + 1]
        objs = [o for o in range(len(store.objects)) if ilo <= store.objects.image_index[o] < ihi]
        for k, o in enumerate(objs):
            img = store.objects.image_index[o]
            h, w = store.images.height[img], store.images.width[img]
            masks = np.zeros((m, h, w), bool)
            for j in range(m):
                masks[j, (o + j) % h, : j + 1] = True
            res.boxes[k] = masks_to_boxes(masks)
            res.rle[k] = encode_masks(masks)
            res.scores[k] = np.arange(m) + o
            res.area[k] = masks.sum((1, 2))
            truth[int(store.objects.ann_id[o])] = masks
        store.write_unit(u, res)
    return truth


def test_store_round_trip(tmp_path, points4):
    ps = load_points(points4)
    store = ProposalStore.create(
        tmp_path / "s.zarr",
        ps,
        {"name": "test", "model": None},
        3,
        ["a", "b", "c"],
        chunk_points=16,
    )
    assert not store.is_complete()
    assert len(store.pending_images()) == 4
    with pytest.raises(StoreError, match="4 image"):
        store.require_complete()
    truth = _fill(store, ps)
    assert store.finalize()
    re = ProposalStore.open(tmp_path / "s.zarr")
    assert np.array_equal(re.objects.ann_id, ps.ann_id)
    assert np.allclose(re.objects.xy, ps.xy)
    assert re.boxes().shape == (44, 3, 4)
    for o in [0, 7, 43]:
        assert np.array_equal(re.object_masks(o), truth[int(re.objects.ann_id[o])])
        assert np.array_equal(re.scores()[o], np.arange(3) + o)
    img = int(re.objects.image_index[10])
    sl = re.image_objects(img)
    h, w = re.images.height[img], re.images.width[img]
    rles = re.rle(np.arange(sl.start, sl.stop))
    assert np.array_equal(decode_rles(list(rles[0]), h, w), truth[int(re.objects.ann_id[sl.start])])
    assert re.attrs["num_points"] == 44 and re.attrs["proposal_order"] == ["a", "b", "c"]
    assert (re.group["images/status"][:] == 1).all()


def test_open_refuses_non_stores(tmp_path):
    with pytest.raises(StoreError, match="no proposal store"):
        ProposalStore.open(tmp_path / "missing.zarr")
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a sapnet proposal store"):
        ProposalStore.open(tmp_path / "other.zarr")


def test_shards_partition_units(tmp_path, points4):
    ps = load_points(points4)
    store = ProposalStore.create(tmp_path / "s.zarr", ps, {"name": "t"}, 2, ["a", "b"], 8)
    parts = [store.units_for_shard(i, 3) for i in range(3)]
    flat = sorted(u for p in parts for u in p)
    assert flat == list(range(store.num_units))
    # Each unit's rows are exactly one chunk of the per-row arrays.
    c = store.chunk_points
    assert store.group["proposals/rle"].chunks == (c, 2)
    for u in range(store.num_units):
        lo, hi = store.unit_rows(u)
        assert lo == u * c and hi <= (u + 1) * c
