"""Signals that a pseudo mask is wrong, and their combination into one review score (pure functions).

Every signal is a ``(P,)`` float array over the P pseudo-labelled objects, larger = more suspicious:

- ``low_score``: minus the selector's confidence (the SAPNet bag score, else the pseudo label's ``score``).
- ``disagree``: 1 - mean IoU of the pseudo mask with the other selectors' picks of the same object (PSM top-1,
  backend top-1, largest proposal); 0 when they all pick the same mask.
- ``foreign_point``: how many points of *other objects of the same class* lie inside the pseudo mask (a mask
  that swallows a neighbour: the group error). Points of other classes do not count (a person holds a cup).
- ``size_outlier``: robust z-score of log(mask area / image area) within the object's class (median and MAD;
  classes with fewer than ``MIN_CLASS`` objects use all objects), absolute value: tiny or huge for its class.
- ``low_fill``: minus the fill ratio R_v = mask area / tight-box area (a fragmented or stringy mask fills little
  of its box; the paper's Gap metric reads the same ratio).

:func:`review_score` turns each signal into its rank percentile in [0, 1] (ties share the mean rank) and adds
them with weights, so the weights compare signals of different units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIGNALS = ("low_score", "disagree", "foreign_point", "size_outlier", "low_fill")
# Equal weights. benchmarks/review_ranking.py fits weights on one half of the coco-dev images and reports the
# other half: with the weight-free classical proposals the fitted weights (mostly foreign_point) beat equal ones
# by only 0.3-0.9 mIoU points at K = 5-20 %, too little to impose weights fitted on classical proposals on SAM.
DEFAULT_WEIGHTS = dict.fromkeys(SIGNALS, 1.0)
MIN_CLASS = 5
MAD_TO_STD = 1.4826


def rank_percentile(values: np.ndarray) -> np.ndarray:
    """``(N,)`` in [0, 1]: the rank of each value (0 = smallest, 1 = largest), ties get their mean rank.

    A constant input maps to 0.5 everywhere; a single value to 0.5.
    """
    values = np.asarray(values, np.float64)
    n = len(values)
    if n == 0:
        return np.zeros(0)
    if n == 1:
        return np.full(1, 0.5)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(n, dtype=np.float64)
    uniq, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks, minlength=len(uniq))
    counts = np.bincount(inverse, minlength=len(uniq))
    return (sums / counts)[inverse] / (n - 1)


def size_outlier(area: np.ndarray, image_area: np.ndarray, category: np.ndarray) -> np.ndarray:
    """``(N,)`` |robust z| of ``log(area / image_area)`` per class (see the module docstring).

    Args:
        area: ``(N,)`` mask areas (pixels); image_area: ``(N,)`` H * W of each object's image;
        category: ``(N,)`` class ids. An empty mask counts as 1 pixel.
    """
    x = np.log(np.maximum(np.asarray(area, np.float64), 1.0) / np.asarray(image_area, np.float64))
    category = np.asarray(category)
    out = np.zeros(len(x))

    def robust_z(values: np.ndarray, ref: np.ndarray) -> np.ndarray:
        med = np.median(ref)
        mad = np.median(np.abs(ref - med)) * MAD_TO_STD
        return np.abs(values - med) / max(mad, 1e-6)

    for c in np.unique(category):
        rows = category == c
        ref = x[rows] if rows.sum() >= MIN_CLASS else x
        out[rows] = robust_z(x[rows], ref)
    return out


def same_class_points_inside(
    masks: np.ndarray, points: np.ndarray, category: np.ndarray
) -> np.ndarray:
    """``(K,)`` count of the other same-class objects' points inside each of K masks of one image.

    Args:
        masks: ``(K, H, W)`` bool; points: ``(K, 2)`` ``[x, y]`` pixel-index coordinates (rounded to the
            pixel, clipped to the image); category: ``(K,)``.
    """
    k, h, w = masks.shape
    if k == 0:
        return np.zeros(0, np.int64)
    px = np.clip(np.round(points[:, 0]).astype(np.int64), 0, w - 1)
    py = np.clip(np.round(points[:, 1]).astype(np.int64), 0, h - 1)
    inside = masks[:, py, px]  # (K masks, K points)
    same = category[:, None] == category[None, :]
    np.fill_diagonal(same, False)
    return (inside & same).sum(axis=1)


@dataclass
class Signals:
    """The review signals of P objects (``(P,)`` each, larger = more suspicious)."""

    low_score: np.ndarray
    disagree: np.ndarray
    foreign_point: np.ndarray
    size_outlier: np.ndarray
    low_fill: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in SIGNALS}


def review_score(signals: Signals, weights: dict[str, float] | None = None) -> np.ndarray:
    """``(P,)`` weighted sum of the signals' rank percentiles (:func:`rank_percentile`)."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    unknown = set(weights) - set(SIGNALS)
    if unknown:
        raise ValueError(f"unknown review signal(s) {sorted(unknown)}; choose from {SIGNALS}")
    d = signals.as_dict()
    total = np.zeros(len(d["low_score"]))
    for name, w in weights.items():
        if w:
            total += w * rank_percentile(d[name])
    return total


def reasons(signals: Signals, top: float = 0.9) -> list[list[str]]:
    """Per object, the signals in their top 10 % (by rank percentile) or, for points, any hit: why flagged."""
    d = signals.as_dict()
    pct = {n: rank_percentile(v) for n, v in d.items()}
    out = []
    for i in range(len(d["low_score"])):
        why = [n for n in SIGNALS if n != "foreign_point" and pct[n][i] >= top]
        if d["foreign_point"][i] > 0:
            why.append("foreign_point")
        out.append(why)
    return out
