"""Point samplers: one point per object, inside its ground-truth mask.

Modes:
- ``center-gaussian``: the P2BNet/SAPNet "quasi-centre" sampler (docs/method.md §2): a 2-D gaussian over the box
  (mean at the box centre, sigma 0.25 of the box size), times the mask, times a central ellipse with semi-axes
  ``min(96, 0.125 w)`` x ``min(96, 0.125 h)`` (dropped if it leaves nothing), one pixel drawn from that
  distribution, then a uniform jitter in [-0.5, 0.5) on x and y.
- ``uniform``: a mask pixel drawn uniformly, plus the same jitter.
- ``center``: the mask pixel nearest to the mask's centre of mass (no randomness, no jitter).

Points are ``[x, y]`` in pixel-index coordinates; the jitter keeps them inside their pixel, so
``floor(x + 0.5), floor(y + 0.5)`` is always a mask pixel. Each object's generator is seeded with
``(seed, annotation id)``: the result does not depend on object order, sharding or the other objects.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Mode = Literal["center-gaussian", "uniform", "center"]
MODES: tuple[str, ...] = ("center-gaussian", "uniform", "center")

GAUSSIAN_SIGMA = 0.25
ELLIPSE_SIZE_RANGE = 0.25
ELLIPSE_MAX_SEMI_AXIS = 96.0


def _gaussian_weights(mask_crop: np.ndarray) -> np.ndarray:
    """Box-relative gaussian times the central ellipse over a ``(h, w)`` crop (the mask's tight box)."""
    h, w = mask_crop.shape
    u = np.linspace(-0.5, 0.5, w)
    v = np.linspace(-0.5, 0.5, h)
    gauss = np.exp(-(v[:, None] ** 2 + u[None, :] ** 2) / (2 * GAUSSIAN_SIGMA**2))
    weights = gauss * mask_crop
    # Central ellipse of semi-axes min(96, w * 0.25 / 2) x min(96, h * 0.25 / 2) (in pixels).
    ax = max(min(ELLIPSE_MAX_SEMI_AXIS, w * ELLIPSE_SIZE_RANGE / 2), 0.5)
    ay = max(min(ELLIPSE_MAX_SEMI_AXIS, h * ELLIPSE_SIZE_RANGE / 2), 0.5)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    xs = np.arange(w)[None, :]
    ys = np.arange(h)[:, None]
    ellipse = ((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2 <= 1.0
    restricted = weights * ellipse
    return restricted if restricted.sum() > 0 else weights


def sample_point_in_mask(
    mask: np.ndarray, mode: Mode, rng: np.random.Generator
) -> tuple[float, float]:
    """Sample one point ``(x, y)`` inside a non-empty ``(H, W)`` bool mask.

    Raises ValueError on an empty mask or an unknown mode.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("empty mask")
    if mode == "center":
        cy, cx = ys.mean(), xs.mean()
        k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
        return float(xs[k]), float(ys[k])
    if mode == "uniform":
        k = int(rng.integers(ys.size))
        px, py = xs[k], ys[k]
    elif mode == "center-gaussian":
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        weights = _gaussian_weights(mask[y0:y1, x0:x1]).ravel()
        k = int(rng.choice(weights.size, p=weights / weights.sum()))
        py, px = divmod(k, x1 - x0)
        px, py = px + x0, py + y0
    else:
        raise ValueError(f"unknown point mode {mode!r}; choose one of {MODES}")
    jitter = rng.uniform(-0.5, 0.5, size=2)
    return float(px + jitter[0]), float(py + jitter[1])


def object_rng(seed: int, ann_id: int) -> np.random.Generator:
    """The generator of one object: seeded by ``(seed, annotation id)``, independent of object order."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(ann_id) & 0xFFFFFFFFFFFF])
