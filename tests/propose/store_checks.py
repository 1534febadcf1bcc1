"""What every finished SAM-family proposal store must satisfy (used for `sam` and `sam2` stores alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.common.masks import masks_to_boxes
from stages.propose.store import STATUS_DONE, ProposalStore


def check_sam_family_store(path: Path, backend: str, num_points: int) -> ProposalStore:
    """Complete, every point done with M = 6 proposals that decode to the image size and agree with the stored
    boxes, areas and finite scores; the fingerprint names ``backend``. Returns the opened store."""
    store = ProposalStore.open(path)
    assert store.is_complete()
    assert store.num_proposals == 6 and len(store.attrs["proposal_order"]) == 6
    assert store.fingerprint["backend"]["backend"] == backend
    assert len(store.objects) == num_points
    assert (store.point_status() == STATUS_DONE).all() and store.errors() == []
    boxes, areas, scores = store.boxes(), store.areas(), store.scores()
    assert boxes.shape == (num_points, 6, 4) and np.isfinite(scores).all()
    nonempty = 0
    for obj in range(num_points):
        masks = store.object_masks(obj)
        img = int(store.objects.image_index[obj])
        assert masks.shape == (6, int(store.images.height[img]), int(store.images.width[img]))
        np.testing.assert_array_equal(masks.sum((1, 2)), areas[obj])
        np.testing.assert_allclose(masks_to_boxes(masks), boxes[obj])
        nonempty += int(masks.any())
    assert nonempty > 0  # not all proposals empty
    return store
