"""The selections file: what `sapnet select` decided for every object, read by `sapnet export-pseudo`.

``RUN_DIR/selections.npz`` holds per-object arrays in the store's object order; ``RUN_DIR/selections.json``
holds the metadata (which store they belong to, how they were made). Indices refer to the store's M proposals
unless said otherwise; boxes are xyxy in original-image edge coordinates.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.errors import InputError, StoreError
from stages.common.io import atomic_write_many, json_default, load_json

SELECTIONS_NPZ = "selections.npz"
SELECTIONS_JSON = "selections.json"
ARRAYS = (
    "ann_id",
    "psm_top1",
    "prm_top1",
    "bms_box",
    "final_index",
    "psm_scores",
    "prm_scores",
    "bag_score",
)


@dataclass
class Selections:
    """Per-object selector outputs (P objects, M proposals).

    Attributes:
        ann_id: ``(P,)`` int64 annotation ids (store object order).
        psm_top1: ``(P,)`` int64 PSM (stage 0) top-1 proposal index in ``[0, M)``.
        prm_top1: ``(P,)`` int64 PRM (stage 1) top-1 index into the PRM bag ``[0, M + 20)``;
            values ``< M`` are store proposals, the rest PPG boxes.
        bms_box: ``(P, 4)`` float32 final box after BMS, xyxy, original-image edge coordinates.
        final_index: ``(P,)`` int64 the chosen proposal: the one whose box has the highest IoU with ``bms_box``.
        psm_scores: ``(P, M)`` float32 PSM selection scores of the M proposals (GT class).
        prm_scores: ``(P, M)`` float32 PRM selection scores of the M proposals (used to rank aux masks).
        bag_score: ``(P,)`` float32 the selector's bag score of the GT class (the pseudo label's ``score``).
        meta: store identity (``store``), selector config, method flags.
    """

    ann_id: np.ndarray
    psm_top1: np.ndarray
    prm_top1: np.ndarray
    bms_box: np.ndarray
    final_index: np.ndarray
    psm_scores: np.ndarray
    prm_scores: np.ndarray
    bag_score: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ann_id.shape[0])


def store_identity(store: Any) -> dict[str, Any]:
    """What ties selections to one store: its source checksum, backend, M and creation time."""
    attrs = store.attrs
    return {
        "path": str(store.path),
        "source_sha256": attrs.get("source_sha256"),
        "backend": attrs.get("fingerprint", {}).get("backend"),
        "num_proposals": attrs.get("num_proposals"),
        "created_at": attrs.get("sapnet_store", {}).get("created_at"),
        "num_points": attrs.get("num_points"),
    }


def save_selections(sel: Selections, run_dir: str | Path) -> Path:
    """Write ``selections.npz`` and ``selections.json`` into ``run_dir`` atomically."""
    import io

    run_dir = Path(run_dir)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{name: getattr(sel, name) for name in ARRAYS})
    meta = json.dumps({"num_objects": len(sel), **sel.meta}, indent=2, default=json_default)
    # Both files or neither: a disk-full or permission error leaves the previous pair intact.
    atomic_write_many(
        [
            (run_dir / SELECTIONS_NPZ, lambda fh: fh.write(buf.getvalue())),
            (run_dir / SELECTIONS_JSON, lambda fh: fh.write(meta.encode("utf-8"))),
        ]
    )
    return run_dir / SELECTIONS_NPZ


def load_selections(run_dir: str | Path) -> Selections:
    """Read the selections of a `sapnet select` run directory (StoreError if missing or broken)."""
    run_dir = Path(run_dir)
    npz_path = run_dir / SELECTIONS_NPZ
    if not npz_path.is_file():
        raise StoreError(
            f"no selections in {run_dir} (expected {SELECTIONS_NPZ}; run `sapnet select` first)"
        )
    json_path = run_dir / SELECTIONS_JSON
    if not json_path.is_file():
        raise StoreError(
            f"selections metadata {json_path} is missing (the run directory is incomplete; "
            "re-run `sapnet select`)"
        )
    try:
        meta = load_json(json_path, "selections metadata")
    except InputError as err:
        raise StoreError(f"{err} (re-run `sapnet select`)") from None
    if not isinstance(meta, dict):
        raise StoreError(f"selections metadata {json_path} is not a JSON object")
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ARRAYS}
    except KeyError as err:
        raise StoreError(f"selections file {npz_path} lacks the array {err}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise StoreError(
            f"selections file {npz_path} is broken (truncated or not a .npz: {err}); "
            "re-run `sapnet select`"
        ) from None
    n = len(arrays["ann_id"])
    short = [name for name, a in arrays.items() if a.ndim == 0 or a.shape[0] != n]
    if short:
        raise StoreError(
            f"selections file {npz_path} is inconsistent: {', '.join(short)} do not have "
            f"{n} rows like ann_id"
        )
    return Selections(**arrays, meta=meta)


def check_matches_store(sel: Selections, store: Any) -> None:
    """StoreError unless ``sel`` was made from ``store`` (same identity and the same objects)."""
    ident = store_identity(store)
    made_from = sel.meta.get("store", {})
    for key in ("source_sha256", "created_at", "num_proposals"):
        if made_from.get(key) != ident.get(key):
            raise StoreError(
                f"selections were made from another proposal store ({key}: {made_from.get(key)!r} vs "
                f"{ident.get(key)!r} in {store.path}); re-run `sapnet select` on this store"
            )
    if not np.array_equal(sel.ann_id, store.objects.ann_id):
        raise StoreError(
            f"selections cover {len(sel)} objects but store {store.path} has {len(store.objects)}"
            " (or a different order); re-run `sapnet select`"
        )
