"""A deterministic, instant proposal backend for tests: M centred squares of growing size per point.

``SAPNET_FAKE_SLEEP`` (seconds per image) slows it down so a test can kill a run in the middle.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np

from stages.propose.backends.base import ProposalBatch


class FakeBackend:
    name = "fake"

    def __init__(self, num_proposals: int = 6, batch_points: int = 64):
        self.num_proposals = num_proposals
        self.batch_points = batch_points
        self.proposal_order = [f"square of half-size {2 + 3 * m} px" for m in range(num_proposals)]

    def fingerprint(self) -> dict:
        return {"name": self.name, "num_proposals": self.num_proposals, "model": None}

    def propose(self, image: np.ndarray, points: np.ndarray) -> Iterator[ProposalBatch]:
        time.sleep(float(os.environ.get("SAPNET_FAKE_SLEEP", "0")))
        h, w = image.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w]
        for start in range(0, len(points), self.batch_points):
            pts = points[start : start + self.batch_points]
            b = len(pts)
            masks = np.zeros((b, self.num_proposals, h, w), bool)
            for m in range(self.num_proposals):
                r = 2 + 3 * m
                cx = np.rint(pts[:, 0])[:, None, None]
                cy = np.rint(pts[:, 1])[:, None, None]
                masks[:, m] = (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r)
            scores = np.tile(np.linspace(0.9, 0.4, self.num_proposals, dtype=np.float32), (b, 1))
            # Make scores depend on the image so a wrong image/point pairing would show.
            scores += float(image.mean()) / 1e4
            yield ProposalBatch(start=start, masks=masks, scores=scores)


def build_fake_backend(num_proposals: int = 6, batch_points: int = 64, **_ignored) -> FakeBackend:
    return FakeBackend(num_proposals=num_proposals, batch_points=batch_points)
