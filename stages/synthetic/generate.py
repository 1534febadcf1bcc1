"""A seeded synthetic point-annotation dataset with proposal bags whose correct member is known.

Used by the selector tests and benchmarks (no real data or SAM weights needed). Every object is an ellipse
split into a left and a right half with a class-specific colour pair: class k paints ``PALETTE[k]`` on the
left and ``PALETTE[(k + 1) % C]`` on the right, so one colour belongs to two classes and only the whole
object identifies its class. One-colour half ellipses of the class colours ("distractors", parts of no
object) clutter the background. With probability ``group_prob`` an object comes as a row of ``group_size``
same-class objects overlapping by ``group_overlap`` of their width, which makes a "group" proposal possible.

Each annotated point gets ``M = 6`` mask proposals (shuffled per object, seeded) of these kinds:

- ``correct``: the object's own mask;
- ``group``: the union of its row of same-class objects (objects in a row only);
- ``local``: the first ``num_local`` of: its left half, its right half, its top-left quarter;
- ``offset``: the mask moved by half the object's width or height (half object, half background), to fill
  the bag up to 6.

Observed with a randomly initialised selector (see ``tests/select/test_learnability.py``): a MIL head learns
to pick ``correct`` well above chance when the bag holds no ``local`` parts; with parts inside the object
(``num_local > 0``) it prefers them (the "local issue" of single MIL). ``group`` proposals contain the point
of another same-class object, which PDG penalises.

:func:`make_synthetic` writes ``images/*.png``, ``annotations.json`` (COCO with ``point``, ``bbox`` and
``segmentation`` RLE ground truth), the proposal store ``store.zarr`` and ``truth.npz`` (per object: the
kinds of its M proposals and the index of the correct one).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.masks import encode_masks, masks_to_boxes

PALETTE = np.array(
    [[220, 40, 40], [40, 200, 60], [50, 80, 230], [230, 210, 40], [200, 60, 220], [40, 210, 220]],
    dtype=np.float32,
)
KINDS = ("correct", "local", "group", "offset")
PROPOSAL_ORDER = [
    "synthetic proposal (shuffled kind: correct / local / group / offset; see truth.npz)"
] * 6


@dataclass
class SyntheticConfig:
    """Size and content of a synthetic dataset (all draws come from ``seed``)."""

    num_images: int = 8
    height: int = 96
    width: int = 128
    num_classes: int = 3
    objects_per_image: tuple[int, int] = (2, 4)
    object_size: tuple[int, int] = (22, 34)
    group_prob: float = 0.6
    noise: float = 12.0
    distractors: int = 6
    num_local: int = 0
    group_overlap: float = 0.2
    group_size: int = 2
    seed: int = 0
    chunk_points: int = 16


@dataclass
class SyntheticData:
    """What :func:`make_synthetic` wrote, plus the ground truth of every object in store order."""

    root: Path
    images_dir: Path
    annotations: Path
    store: Path
    ann_id: np.ndarray  # (P,) int64
    kinds: np.ndarray  # (P, M) str
    correct_index: np.ndarray  # (P,) int64
    gt_boxes: np.ndarray  # (P, 4) float32 xyxy edge coordinates
    config: SyntheticConfig = field(default_factory=SyntheticConfig)


def _ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0


def _place_objects(cfg: SyntheticConfig, rng: np.random.Generator) -> list[dict]:
    """Ellipse parameters of one image's objects (disjoint, except the members of a row)."""
    objs: list[dict] = []
    lo, hi = cfg.objects_per_image
    target = int(rng.integers(lo, hi + 1))
    tries = 0
    while len(objs) < target and tries < 200:
        tries += 1
        w = float(rng.uniform(*cfg.object_size))
        h = float(rng.uniform(*cfg.object_size)) * 0.8
        cls = int(rng.integers(cfg.num_classes))
        size = cfg.group_size if rng.random() < cfg.group_prob else 1
        if len(objs) + size > max(hi, cfg.group_size):
            size = 1
        group = size > 1
        step = (1.0 - cfg.group_overlap) * w
        span_w = w + (size - 1) * step
        if span_w + 4 > cfg.width or h + 4 > cfg.height:
            continue
        x0 = float(rng.uniform(2, cfg.width - span_w - 2))
        y0 = float(rng.uniform(2, cfg.height - h - 2))
        box = (x0 - 2, y0 - 2, x0 + span_w + 2, y0 + h + 2)
        if any(_boxes_overlap(box, o["area_box"]) for o in objs):
            continue
        first = {"cls": cls, "cx": x0 + w / 2, "cy": y0 + h / 2, "rx": w / 2, "ry": h / 2}
        # group members in a row, each overlapping the previous one by group_overlap of the width
        members = [{**first, "cx": first["cx"] + j * step} for j in range(size)]
        gid = len(objs)
        for m in members:
            objs.append({**m, "area_box": box, "group": gid if group else -1})
    return objs


def _boxes_overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _render(cfg: SyntheticConfig, objs: list[dict], rng: np.random.Generator) -> tuple:
    """Paint the image; returns ``(rgb uint8 (H, W, 3), masks (K, H, W), halves (K, 2, H, W))``."""
    h, w = cfg.height, cfg.width
    base = rng.uniform(90, 160)
    img = np.full((h, w, 3), base, np.float32)
    coarse = rng.normal(0, 18, (h // 8 + 1, w // 8 + 1, 1)).astype(np.float32)
    img += np.kron(coarse, np.ones((8, 8, 1), np.float32))[:h, :w]
    masks = np.zeros((len(objs), h, w), bool)
    halves = np.zeros((len(objs), 2, h, w), bool)
    xx = np.arange(w)[None, :] + 0.5
    for _ in range(
        cfg.distractors
    ):  # one-colour half ellipses: parts of no object, behind the objects
        rx, ry = rng.uniform(*cfg.object_size) / 2, rng.uniform(*cfg.object_size) * 0.4
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        side = (xx < cx) if rng.random() < 0.5 else (xx >= cx)
        img[_ellipse(h, w, cx, cy, rx, ry) & side] = PALETTE[int(rng.integers(cfg.num_classes))]
    for k, o in enumerate(objs):
        m = _ellipse(h, w, o["cx"], o["cy"], o["rx"], o["ry"])
        left = m & (xx < o["cx"])
        masks[k], halves[k, 0], halves[k, 1] = m, left, m & ~left
        img[left] = PALETTE[o["cls"] % len(PALETTE)]
        img[m & ~left] = PALETTE[(o["cls"] + 1) % cfg.num_classes % len(PALETTE)]
    img += rng.normal(0, cfg.noise, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), masks, halves


def _shifted(mask: np.ndarray, dx: int) -> np.ndarray:
    """The mask moved ``dx`` pixels sideways (it then covers part of the object and background)."""
    out = np.zeros_like(mask)
    if dx >= 0:
        out[:, dx:] = mask[:, : mask.shape[1] - dx]
    else:
        out[:, :dx] = mask[:, -dx:]
    return out


def _proposals(
    cfg: SyntheticConfig, objs: list[dict], masks, halves, rng
) -> tuple[np.ndarray, np.ndarray]:
    """``(K, 6, H, W)`` proposal masks and ``(K, 6)`` kinds, shuffled per object."""
    k_all = len(objs)
    h, w = masks.shape[1:]
    props = np.zeros((k_all, 6, h, w), bool)
    kinds = np.empty((k_all, 6), dtype=object)
    yy = np.arange(h)[:, None] + 0.5
    for k, o in enumerate(objs):
        partner = [
            j for j, p in enumerate(objs) if j != k and o["group"] >= 0 and p["group"] == o["group"]
        ]
        sx, sy = max(int(round(o["rx"])), 1), max(int(round(o["ry"])), 1)
        locals_ = [halves[k, 0], halves[k, 1], halves[k, 0] & (yy < o["cy"])][: cfg.num_local]
        offsets = [
            _shifted(masks[k], sx),
            _shifted(masks[k], -sx),
            np.roll(masks[k], sy, axis=0),
            np.roll(masks[k], -sy, axis=0),
            _shifted(masks[k], -2 * sx),
        ]
        cands = [(masks[k], "correct")]
        cands.append(
            (masks[k] | masks[partner[0]], "group") if partner else (offsets.pop(), "offset")
        )
        cands += [(m, "local") for m in locals_]
        cands += [(m, "offset") for m in offsets[: 6 - len(cands)]]
        order = rng.permutation(6)
        for slot, src in enumerate(order):
            props[k, slot], kinds[k, slot] = cands[src]
    return props, kinds


def _point(mask: np.ndarray, o: dict, rng: np.random.Generator) -> list[float]:
    """A quasi-centre point: Gaussian around the centre (sigma 0.25 of the size), on the mask."""
    for _ in range(50):
        x = o["cx"] + rng.normal(0, 0.25 * o["rx"])
        y = o["cy"] + rng.normal(0, 0.25 * o["ry"])
        c, r = int(np.floor(x)), int(np.floor(y))
        if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and mask[r, c]:
            return [float(c), float(r)]
    r, c = np.argwhere(mask)[len(np.argwhere(mask)) // 2]
    return [float(c), float(r)]


def make_synthetic(out_dir: str | Path, cfg: SyntheticConfig | None = None) -> SyntheticData:
    """Write a synthetic dataset and its complete proposal store under ``out_dir``.

    Layout: ``images/img_XXXX.png``, ``annotations.json``, ``store.zarr``, ``truth.npz``. Deterministic for a
    given config (same seed, same files).
    """
    from stages.common.annotations import load_points
    from stages.propose.store import ProposalStore, UnitResult

    cfg = cfg or SyntheticConfig()
    root = Path(out_dir)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    coco: dict = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 10 + k, "name": f"class{k}"} for k in range(cfg.num_classes)],
    }
    per_image: list[tuple] = []
    ann_id = 1
    for i in range(cfg.num_images):
        objs = _place_objects(cfg, rng)
        img, masks, halves = _render(cfg, objs, rng)
        name = f"img_{i:04d}.png"
        Image.fromarray(img).save(images_dir / name)
        coco["images"].append(
            {"id": i + 1, "file_name": name, "height": cfg.height, "width": cfg.width}
        )
        props, kinds = _proposals(cfg, objs, masks, halves, rng)
        gt_rle = encode_masks(masks) if len(objs) else []
        gt_boxes = masks_to_boxes(masks)
        for k, o in enumerate(objs):
            b = gt_boxes[k]
            coco["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": i + 1,
                    "category_id": 10 + o["cls"],
                    "point": _point(masks[k], o, rng),
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                    "area": int(masks[k].sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": [cfg.height, cfg.width], "counts": gt_rle[k]},
                }
            )
            ann_id += 1
        per_image.append((props, kinds, gt_boxes))
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps(coco))

    points = load_points(annotations)
    store_path = root / "store.zarr"
    if store_path.exists():  # a store from an earlier call would be reopened, not rebuilt
        shutil.rmtree(store_path)
    store = ProposalStore.create(
        store_path,
        points,
        {"name": "synthetic", "config": json.loads(json.dumps(asdict(cfg)))},
        6,
        PROPOSAL_ORDER,
        chunk_points=cfg.chunk_points,
    )
    props_all = [p for p, _, _ in per_image]
    for unit in range(store.num_units):
        lo, hi = store.unit_image_ptr[unit], store.unit_image_ptr[unit + 1]
        unit_props = [props_all[i] for i in range(lo, hi)]
        n = sum(len(p) for p in unit_props)
        flat = np.concatenate(unit_props) if n else np.zeros((0, 6, cfg.height, cfg.width), bool)
        rle = np.array([encode_masks(obj) for obj in flat], dtype=object).reshape(n, 6)
        store.write_unit(
            unit,
            UnitResult(
                boxes=masks_to_boxes(flat.reshape(-1, cfg.height, cfg.width)).reshape(n, 6, 4),
                scores=np.ones((n, 6), np.float32),
                area=flat.reshape(n, 6, -1).sum(-1).astype(np.int64),
                rle=rle,
                status=np.ones(n, np.uint8),
                error=np.full(n, "", dtype=object),
            ),
        )
    store.finalize()
    kinds = (
        np.concatenate([k for _, k, _ in per_image]).astype(str)
        if points.num_points
        else np.zeros((0, 6), str)
    )
    truth = SyntheticData(
        root=root,
        images_dir=images_dir,
        annotations=annotations,
        store=store_path,
        ann_id=points.ann_id,
        kinds=kinds,
        correct_index=np.argmax(kinds == "correct", axis=1).astype(np.int64),
        gt_boxes=np.concatenate([g for _, _, g in per_image]).astype(np.float32),
        config=cfg,
    )
    np.savez(
        root / "truth.npz",
        ann_id=truth.ann_id,
        kinds=truth.kinds,
        correct_index=truth.correct_index,
        gt_boxes=truth.gt_boxes,
    )
    return truth
