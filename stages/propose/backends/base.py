"""The proposal-backend interface.

A backend turns one RGB image and the K annotated points on it into M class-agnostic mask proposals per point.
The proposal *order is fixed and documented by each backend* (``proposal_order``) because later stages rely on it:
the SAPNet selector treats proposals 0-2 as the point-prompt masks (BMS candidates).

Backends register themselves in :data:`BACKENDS` under their CLI name (``sam``, ``mobile-sam``, ``sam2``,
``classical``); :func:`get_backend` builds one from keyword options. Heavy imports (segment-anything, timm, sam2)
happen inside the backend module, so importing this interface stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from stages.common.errors import InputError


@dataclass
class ProposalBatch:
    """Proposals for a contiguous run of points of one image.

    Attributes:
        start: index (into the image's K points) of the first point of this batch.
        masks: ``(B, M, H, W)`` bool masks at the image's original resolution.
        scores: ``(B, M)`` float32 backend scores (SAM: predicted IoU; classical: stability score).
    """

    start: int
    masks: np.ndarray
    scores: np.ndarray


@runtime_checkable
class ProposalBackend(Protocol):
    """What `sapnet propose` needs from a backend."""

    name: str
    num_proposals: int  # M
    proposal_order: list[str]  # one human-readable description per proposal index

    def fingerprint(self) -> dict[str, Any]:
        """JSON-serialisable identity (model, checkpoint SHA-256, settings); a store refuses another one."""

    def propose(self, image: np.ndarray, points: np.ndarray) -> Iterator[ProposalBatch]:
        """Yield proposals for all points of one image.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            points: ``(K, 2)`` float32 ``[x, y]`` in pixel-index coordinates (pixel centre = integer).

        Yields batches covering points ``0..K-1`` in order, each with masks ``(B, M, H, W)``.
        """


def check_inputs(
    image: np.ndarray, points: np.ndarray, backend: str, dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Validate what ``propose`` receives: an ``(H, W, 3)`` uint8 RGB image and ``(K, 2)`` finite points
    inside it (pixel-index coordinates, ``-0.5 <= x <= W - 0.5``). Returns ``(image, points as dtype)``;
    InputError otherwise."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise InputError(
            f"{backend} backend expects an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}"
        )
    pts = np.asarray(points, dtype=dtype)
    if pts.size == 0:
        pts = pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"points must be a (K, 2) array of [x, y], got shape {pts.shape}")
    h, w = image.shape[:2]
    bad = ~np.isfinite(pts).all(1)
    bad |= (pts[:, 0] < -0.5) | (pts[:, 0] > w - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > h - 0.5)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"point {i} = {pts[i].tolist()} lies outside the {w}x{h} image")
    return image, pts


# name -> "module:factory"; the factory takes the keyword options of `get_backend`.
BACKENDS: dict[str, str] = {
    "classical": "stages.propose.backends.classical:build_classical_backend",
    "sam": "stages.propose.backends.sam:build_sam_backend",
    "mobile-sam": "stages.propose.backends.sam:build_mobile_sam_backend",
    "sam2": "stages.propose.backends.sam2:build_sam2_backend",
}


def get_backend(name: str, **options: Any) -> ProposalBackend:
    """Build the backend registered as ``name`` with its keyword ``options``.

    ``name`` may also be ``"package.module:factory"`` to plug in a backend of one's own without changing
    sapnet (the factory receives the same keyword options as the built-in ones).
    """
    if name in BACKENDS:
        target = BACKENDS[name]
    elif ":" in name:
        target = name
    else:
        raise InputError(
            f"unknown proposal backend {name!r}; choose one of {sorted(BACKENDS)} "
            "or give your own as package.module:factory"
        )
    module_name, factory_name = target.split(":", 1)
    try:
        factory: Callable[..., ProposalBackend] = getattr(
            importlib.import_module(module_name), factory_name
        )
    except (ImportError, AttributeError) as err:
        raise InputError(f"cannot load proposal backend {name!r}: {err}") from None
    return factory(**options)
