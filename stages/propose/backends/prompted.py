"""What the SAM-family proposal backends (``sam``, ``mobile-sam``, ``sam2``) share.

The two-stage prompt scheme (M = 6; M = 3 keeps only the first stage): proposals 0-2 are the model's three
multimask outputs for the point prompt (label 1), 3-5 its three outputs for the same point plus a box around the
**largest** of masks 0-2 (:func:`prompt_boxes_from_masks`). :class:`PromptedBackend` holds the device and
precision set-up, the proposal order, the precision contexts and the per-image loop (encode once, decode the
points in chunks of ``batch_points``); each family supplies its predictor calls (``sam.py``, ``sam2.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from stages.common.devices import resolve_device
from stages.common.errors import InputError
from stages.propose.backends.base import ProposalBatch, check_inputs

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
BOX_RULE = "largest"


def prompt_boxes_from_masks(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Box prompts for the second stage: around the largest of each point's masks, vectorised.

    Args:
        masks: ``(B, C, H, W)`` bool first-stage masks.
        points: ``(B, 2)`` float ``[x, y]`` pixel-index points (fallback for all-empty masks).

    Returns:
        ``(B, 4)`` float32 ``xyxy`` boxes in SAM's prompt convention: *inclusive* pixel indices
        ``[first col, first row, last col, last row]`` (a one-pixel mask at (r, c) gives ``[c, r, c, r]``).
        The largest mask is chosen by pixel count, ties to the lowest index. Where all C masks are empty the box is
        the point's pixel ``[x, y, x, y]`` (rounded, clipped to the image).
    """
    b, _, h, w = masks.shape
    area = masks.flatten(2).sum(-1)  # (B, C)
    chosen = masks[torch.arange(b, device=masks.device), area.argmax(1)]  # (B, H, W)
    cols, rows = chosen.any(1), chosen.any(2)  # (B, W), (B, H)
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    x1 = torch.where(cols, xs, w).amin(1)
    x2 = torch.where(cols, xs, -1).amax(1)
    y1 = torch.where(rows, ys, h).amin(1)
    y2 = torch.where(rows, ys, -1).amax(1)
    boxes = torch.stack([x1, y1, x2, y2], 1).to(torch.float32)
    px = points[:, 0].round().clamp(0, w - 1).to(torch.float32)
    py = points[:, 1].round().clamp(0, h - 1).to(torch.float32)
    fallback = torch.stack([px, py, px, py], 1)
    return torch.where(cols.any(1)[:, None], boxes, fallback)


def check_prompt_options(who: str, num_proposals: int, batch_points: int, precision: str) -> None:
    """InputError for options no SAM-family backend takes; ``who`` begins the message ("SAM backends make")."""
    if num_proposals not in (3, 6):
        raise InputError(f"{who} 3 or 6 proposals per point, not {num_proposals}")
    if int(batch_points) < 1:
        raise InputError(f"batch_points must be >= 1, got {batch_points}")
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")


class PromptedBackend:
    """What the SAM-family backends (``sam``, ``mobile-sam``, ``sam2``) share: device and precision set-up, the
    two-stage prompt scheme and its proposal order, the precision contexts and the per-image propose loop.

    A subclass sets ``label`` ("SAM", "SAM 2"), calls :meth:`_setup` and implements ``encode`` and the four
    predictor calls: ``_image_hw``, ``_point_coords``, ``_box_coords`` (pixel-index points / inclusive boxes
    to the model's input frame) and ``_predict`` (one batched decoder call, multimask output), plus ``_reset``.
    """

    label = "SAM"

    def _setup(
        self, num_proposals: int, batch_points: int, precision: str, device: str | torch.device
    ) -> None:
        self.device = resolve_device(device)
        if precision != "fp32" and self.device.type != "cuda":
            raise InputError(
                f"precision {precision!r} needs a CUDA device (got {self.device}); use fp32 on CPU"
            )
        self.num_proposals, self.batch_points = int(num_proposals), int(batch_points)
        self.precision = precision

    def _proposal_order(self, first_stage: list[str]) -> list[str]:
        """``first_stage`` (proposals 0-2) plus, with M = 6, the point + box prompt's outputs (3-5)."""
        if self.num_proposals != 6:
            return first_stage
        return first_stage + [
            f"point + box around the {BOX_RULE} of proposals 0-2, {self.label} multimask output {i}"
            for i in range(3)
        ]

    def _prompts(self) -> dict[str, Any]:
        """The fingerprint's ``prompts`` entry."""
        return {
            "first": "point (label 1), multimask_output=True",
            "second": "point + box around the largest first-stage mask (inclusive pixel "
            "indices), multimask_output=True"
            if self.num_proposals == 6
            else None,
        }

    def _context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        dtype = PRECISIONS[self.precision]
        if dtype is not None:
            stack.enter_context(torch.autocast(device_type="cuda", dtype=dtype))
        return stack

    def encode(self, image: np.ndarray) -> None:
        raise NotImplementedError

    def _image_hw(self) -> tuple[int, int]:
        raise NotImplementedError

    def _point_coords(self, points: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def _box_coords(self, boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def _predict(
        self, coords: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _reset(self) -> None:
        raise NotImplementedError

    def decode(
        self, points: np.ndarray, num_proposals: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Proposals for ``(B, 2)`` pixel-index points of the encoded image, one decoder call per stage.

        ``num_proposals`` (3 or 6) overrides the backend's M for this call (benchmarks).
        Returns ``masks (B, M, H, W)`` bool and ``scores (B, M)`` float32, on the backend's device.
        """
        m = self.num_proposals if num_proposals is None else num_proposals
        hw = self._image_hw()
        with self._context():
            pts = torch.as_tensor(points, dtype=torch.float32, device=self.device)
            coords = self._point_coords(pts[:, None, :], hw)  # (B, 1, 2)
            labels = torch.ones(coords.shape[:2], dtype=torch.int, device=self.device)
            masks, scores = self._predict(coords, labels, None)
            if m == 6:
                boxes = self._box_coords(prompt_boxes_from_masks(masks, pts), hw)
                masks2, scores2 = self._predict(coords, labels, boxes)
                masks, scores = torch.cat([masks, masks2], 1), torch.cat([scores, scores2], 1)
        return masks, scores.float()

    def propose(self, image: np.ndarray, points: np.ndarray) -> Iterator[ProposalBatch]:
        """Encode ``image`` once, then yield proposals for chunks of ``batch_points`` points."""
        image, pts = check_inputs(image, points, self.label, np.float32)
        if len(pts) == 0:
            return
        self.encode(image)
        try:
            for start in range(0, len(pts), self.batch_points):
                masks, scores = self.decode(pts[start : start + self.batch_points])
                yield ProposalBatch(start, masks.cpu().numpy(), scores.cpu().numpy())
        finally:
            self._reset()
