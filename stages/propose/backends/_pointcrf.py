"""Point-centred figure/ground segmentation on a superpixel graph (numpy / scipy / scikit-image only).

The image is over-segmented ONCE into leaf regions (Felzenszwalb graph segmentation); each leaf gets its pixel
count, first and second spatial moments and a colour histogram, and the leaf adjacency graph gets boundary
affinities (weak image edges -> strong coupling). Every proposal is then a figure/ground labelling of the leaves,
computed for many (point, spatial prior) pairs at once as dense ``(P, n)`` matrix operations:

1. a spatial prior ``D`` (``(P, n)`` normalised distance of each leaf from the prompt, ``D = 1`` on the prior's
   boundary: a disc of radius r around the point, or an ellipse fitted to an earlier mask);
2. colour models: the foreground histogram is a Gaussian-weighted (in ``D``) sum of leaf histograms near the
   prompt, the background histogram is that of a ring ``ring[0] < D < ring[1]`` around it;
3. unary log-odds ``U = colour log-likelihood ratio + lam * (1 - D)``;
4. a few mean-field iterations ``q <- sigmoid(U + beta * A (2q - 1))`` over the row-normalised affinity ``A``;
5. the mask is ``q > 0.5`` plus the prompt's own leaf (so it contains its point and is never empty).

Coordinates: leaf centroids and points are ``[x, y]`` in pixel-index coordinates (pixel centre = integer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from skimage import color, filters, segmentation

# Colour quantisation of CIE Lab: bins per channel, and the (lo, hi) range of L, a, b.
LAB_BINS = 8
LAB_RANGE = ((0.0, 100.0), (-80.0, 80.0), (-80.0, 80.0))


@dataclass
class LeafGraph:
    """Leaf regions of one image and their statistics (``n`` leaves).

    Attributes:
        leaf_map: ``(H, W)`` int32 leaf id of each pixel.
        count: ``(n,)`` float64 pixel counts.
        centroid: ``(n, 2)`` float64 ``[x, y]`` leaf centroids (pixel-index coordinates).
        second: ``(n, 3)`` float64 raw second moments ``[sum x^2, sum xy, sum y^2]`` of each leaf.
        hist: ``(n, Q)`` float32 colour histograms (pixel counts per quantised Lab colour), over the Q colour
            bins present in the image only (a speed-up: the other bins are empty for every leaf).
        empty_bins: how many of the ``LAB_BINS**3`` bins are absent from the image (they still receive the
            models' +0.5 smoothing, so the probabilities are those of the full histogram).
        affinity: ``(n, n)`` CSR, row-normalised boundary affinity (rows sum to 1).
        boundary_length: ``(n, n)`` CSR, symmetric: 4-neighbour pixel pairs on each shared boundary.
        boundary_edge: ``(n, n)`` CSR, symmetric: summed colour-gradient magnitude along each shared boundary.
    """

    leaf_map: np.ndarray
    count: np.ndarray
    centroid: np.ndarray
    second: np.ndarray
    hist: np.ndarray
    affinity: sparse.csr_matrix
    boundary_length: sparse.csr_matrix
    boundary_edge: sparse.csr_matrix
    empty_bins: int = 0

    @property
    def num_leaves(self) -> int:
        return int(self.count.shape[0])

    def leaf_at(self, points: np.ndarray) -> np.ndarray:
        """``(K, 2)`` ``[x, y]`` points -> ``(K,)`` leaf ids of the pixels nearest to them (clipped to the image)."""
        h, w = self.leaf_map.shape
        cols = np.clip(np.floor(points[:, 0] + 0.5).astype(np.int64), 0, w - 1)
        rows = np.clip(np.floor(points[:, 1] + 0.5).astype(np.int64), 0, h - 1)
        return self.leaf_map[rows, cols]


def region_adjacency(
    labels: np.ndarray, edge: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Adjacent leaf pairs of a label image (4-connectivity) with their shared boundary statistics.

    Args:
        labels: ``(H, W)`` int labels ``0..N-1``.
        edge: ``(H, W)`` float edge strength; a boundary pixel pair scores the max of its two pixels.

    Returns:
        ``(i, j, length, edge_sum)``: ``(E,)`` arrays with ``i < j``, the number of 4-neighbour pixel pairs on the
        i/j boundary, and the summed edge strength along it.
    """
    n = int(labels.max()) + 1
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()]).astype(np.int64)
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()]).astype(np.int64)
    g = np.concatenate(
        [
            np.maximum(edge[:, :-1], edge[:, 1:]).ravel(),
            np.maximum(edge[:-1, :], edge[1:, :]).ravel(),
        ]
    )
    diff = a != b
    a, b, g = a[diff], b[diff], g[diff]
    key = np.minimum(a, b) * n + np.maximum(a, b)
    uniq, inv = np.unique(key, return_inverse=True)
    length = np.bincount(inv).astype(np.float64)
    edge_sum = np.bincount(inv, weights=g)
    return uniq // n, uniq % n, length, edge_sum


def edge_map(lab: np.ndarray, sigma: float) -> np.ndarray:
    """``(H, W)`` colour gradient magnitude: Sobel of the Gaussian-smoothed Lab channels, L2 over channels."""
    smooth = filters.gaussian(lab, sigma=sigma, channel_axis=-1)
    return np.sqrt(sum(filters.sobel(smooth[..., c]) ** 2 for c in range(3)))


def quantise_lab(lab: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` Lab -> ``(H, W)`` int64 joint colour bin in ``[0, LAB_BINS**3)``."""
    q = np.zeros(lab.shape[:2], dtype=np.int64)
    for c, (lo, hi) in enumerate(LAB_RANGE):
        b = np.clip((lab[..., c] - lo) / (hi - lo) * LAB_BINS, 0, LAB_BINS - 1e-6).astype(np.int64)
        q = q * LAB_BINS + b
    return q


def build_leaf_graph(
    image: np.ndarray,
    fz_scale: float = 50.0,
    fz_sigma: float = 0.8,
    fz_min_size: int = 10,
    edge_sigma: float = 2.0,
    edge_scale: float = 10.0,
) -> LeafGraph:
    """Over-segment ``(H, W, 3)`` uint8 RGB ``image`` and compute the leaf statistics and affinities.

    The affinity of two adjacent leaves is ``L * exp(-e / edge_scale)`` with ``L`` their shared boundary length
    (4-neighbour pixel pairs) and ``e`` the mean colour-gradient magnitude along it.
    """
    leaf_map = segmentation.felzenszwalb(
        image, scale=fz_scale, sigma=fz_sigma, min_size=fz_min_size
    )
    leaf_map = leaf_map.astype(np.int64)
    n = int(leaf_map.max()) + 1
    h, w = leaf_map.shape
    flat = leaf_map.ravel()
    lab = color.rgb2lab(image)
    count = np.bincount(flat, minlength=n).astype(np.float64)
    ys, xs = np.indices((h, w), dtype=np.float64)
    xs, ys = xs.ravel(), ys.ravel()
    centroid = np.stack(
        [np.bincount(flat, xs, n) / count, np.bincount(flat, ys, n) / count], axis=1
    )
    second = np.stack(
        [
            np.bincount(flat, xs * xs, n),
            np.bincount(flat, xs * ys, n),
            np.bincount(flat, ys * ys, n),
        ],
        axis=1,
    )
    nbins = LAB_BINS**3
    hist = np.bincount(flat * nbins + quantise_lab(lab).ravel(), minlength=n * nbins)
    hist = hist.reshape(n, nbins).astype(np.float32)
    present = hist.any(axis=0)
    hist = hist[:, present]
    i, j, length, edge_sum = region_adjacency(leaf_map, edge_map(lab, edge_sigma))

    def symmetric(v: np.ndarray) -> sparse.csr_matrix:
        return sparse.coo_matrix((np.r_[v, v], (np.r_[i, j], np.r_[j, i])), shape=(n, n)).tocsr()

    a = symmetric(length * np.exp(-(edge_sum / length) / edge_scale))
    deg = np.asarray(a.sum(axis=1)).ravel()
    a = (sparse.diags(1.0 / np.maximum(deg, 1e-12)) @ a).tocsr()
    return LeafGraph(
        leaf_map.astype(np.int32),
        count,
        centroid,
        second,
        hist,
        a,
        symmetric(length),
        symmetric(edge_sum),
        int(nbins - present.sum()),
    )


def disc_distance(graph: LeafGraph, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised leaf distance to discs: ``(K, 2)`` points x ``(R,)`` radii -> ``(K, R, n)``.

    ``D[k, r, i] = |centroid_i - point_k| / radii[r]``.
    """
    d = np.sqrt(((graph.centroid[None, :, :] - points[:, None, :]) ** 2).sum(-1))  # (K, n)
    return d[:, None, :] / np.asarray(radii, dtype=np.float64)[None, :, None]


def mask_moments(graph: LeafGraph, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area, centroid and covariance of leaf selections ``(P, n)`` bool -> ``(P,)``, ``(P, 2)``, ``(P, 2, 2)``."""
    s = sel.astype(np.float64)
    area = s @ graph.count
    first = s @ (graph.centroid * graph.count[:, None])  # (P, 2)
    sec = s @ graph.second  # (P, 3)
    mean = first / area[:, None]
    cxx = sec[:, 0] / area - mean[:, 0] ** 2
    cxy = sec[:, 1] / area - mean[:, 0] * mean[:, 1]
    cyy = sec[:, 2] / area - mean[:, 1] ** 2
    cov = np.stack([np.stack([cxx, cxy], -1), np.stack([cxy, cyy], -1)], -2)
    return area, mean, cov


def ellipse_distance(
    graph: LeafGraph, centres: np.ndarray, cov: np.ndarray, scale: float = 1.0
) -> np.ndarray:
    """Normalised leaf distance to ellipses ``(P, 2)`` centres, ``(P, 2, 2)`` covariances -> ``(P, n)``.

    The ellipse is that of a uniform region with covariance ``cov`` (semi-axes ``2 sqrt(eigenvalues)``), grown by
    ``scale``; ``D = 1`` on its boundary. Covariances are regularised by 0.25 px^2 (a single pixel's variance).
    """
    c = cov + 0.25 * np.eye(2)[None]
    det = c[:, 0, 0] * c[:, 1, 1] - c[:, 0, 1] ** 2
    inv = np.stack(
        [np.stack([c[:, 1, 1], -c[:, 0, 1]], -1), np.stack([-c[:, 0, 1], c[:, 0, 0]], -1)], -2
    )
    inv = inv / det[:, None, None]
    d = graph.centroid[None, :, :] - centres[:, None, :]  # (P, n, 2)
    m2 = np.einsum("pni,pij,pnj->pn", d, inv, d)
    return np.sqrt(m2 / 4.0) / scale


def figure_ground(
    graph: LeafGraph,
    dist: np.ndarray,
    seeds: np.ndarray,
    lam: float = 3.0,
    beta: float = 3.0,
    iters: int = 5,
    fg_sigma: float = 0.5,
    ring: tuple[float, float] = (1.5, 3.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Figure/ground labelling of the leaves for P spatial priors at once.

    Args:
        graph: the image's leaf graph (n leaves).
        dist: ``(P, n)`` normalised distance of each leaf from prompt p (1 on the prior's boundary).
        seeds: ``(P,)`` leaf id that must be foreground (the leaf under the point).

    Returns:
        ``(sel, q)``: ``(P, n)`` bool foreground leaves (always containing the seed) and float32 posteriors.
    """
    p = dist.shape[0]
    dist = dist.astype(np.float32)
    cnt = graph.count.astype(np.float32)[None, :]
    w_fg = np.exp(-0.5 * (dist / np.float32(fg_sigma)) ** 2) * cnt
    w_bg = ((dist > ring[0]) & (dist < ring[1])) * cnt
    hist = graph.hist
    p_fg = w_fg @ hist + 0.5
    p_bg = w_bg @ hist + 0.5
    smoothing = 0.5 * graph.empty_bins
    llr = np.log(p_fg / (p_fg.sum(1, keepdims=True) + smoothing)) - np.log(
        p_bg / (p_bg.sum(1, keepdims=True) + smoothing)
    )
    # Leaves x prompts layout (n, P), so the sparse affinity multiplies contiguous columns.
    unary = (hist / cnt.T) @ llr.T + np.float32(lam) * (1.0 - dist.T)
    at = graph.affinity.astype(np.float32)
    q = _sigmoid(unary)
    for _ in range(iters):
        q = _sigmoid(unary + np.float32(beta) * (at @ (2.0 * q - 1.0)))
    q = np.ascontiguousarray(q.T)
    sel = q > 0.5
    sel[np.arange(p), seeds] = True
    return sel, q


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
