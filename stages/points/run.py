"""`run_points`: write a points JSON (one ``point`` per non-crowd object) from a COCO JSON with masks."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common.annotations import ON_ERROR, Problem, load_coco, parse_images
from stages.common.config import option, save_resolved_config, sidecar_config_path
from stages.common.errors import InputError, first_items
from stages.common.io import atomic_write_json, check_output_path, sha256_file
from stages.common.masks import segmentation_to_mask
from stages.common.progress import progress as progress_bar
from stages.points.sampler import MODES, Mode, object_rng, sample_point_in_mask

log = logging.getLogger(__name__)


@dataclass
class PointsConfig:
    """Settings of `sapnet points` (each field's help text is its ``--help`` line)."""

    annotations: Path = option(
        help="COCO instances JSON with ground-truth masks (GT.json).", metavar="PATH"
    )
    out: Path = option(
        help="Output points JSON: the input with 'point': [x, y] on every object.", metavar="PATH"
    )
    seed: int = option(0, "Random seed; the same seed gives the same points.")
    mode: str = option(
        "center-gaussian",
        "center-gaussian: P2BNet quasi-centre sampler (gaussian sigma 0.25 of the box, times the mask "
        "and a central ellipse, jittered); uniform: any mask pixel; center: the mask pixel nearest to "
        "the centre of mass.",
        choices=MODES,
    )
    on_error: str = option(
        "fail",
        "fail: stop on the first bad annotation (nothing written); skip: drop it, log it and go on.",
        choices=ON_ERROR,
    )
    progress: bool = option(True, "Show a progress bar.")


@dataclass
class PointsResult:
    out: Path
    num_points: int
    num_crowd: int
    problems: list[Problem]


def sample_points(
    coco: dict[str, Any], mode: Mode = "center-gaussian", seed: int = 0
) -> dict[int, tuple[float, float]]:
    """``{annotation id: (x, y)}`` for every non-crowd annotation of ``coco`` with a usable mask."""
    return sample_points_with_problems(coco, mode, seed)[0]


def sample_points_with_problems(
    coco: dict[str, Any],
    mode: Mode = "center-gaussian",
    seed: int = 0,
    source: str = "<memory>",
    progress: bool = False,
) -> tuple[dict[int, tuple[float, float]], list[Problem]]:
    """Sample one point per non-crowd annotation of ``coco`` inside its mask.

    Returns ``({annotation id: (x, y)}, problems)``; an annotation without a usable mask (no
    ``segmentation``, unknown image, malformed polygon or RLE, empty mask) or that shares its id with another
    annotation becomes a Problem naming the annotation id instead of a point.
    """
    if mode not in MODES:
        raise InputError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
    images = {img.image_id: img for img in parse_images(coco, source)}
    points: dict[int, tuple[float, float]] = {}
    problems: list[Problem] = []
    anns = coco["annotations"]
    uses = Counter(ann.get("id") for ann in anns if isinstance(ann, dict))
    for order, ann in enumerate(
        progress_bar(anns, desc="points", unit="obj", disable=not progress)
    ):
        if not isinstance(ann, dict):
            problems.append(Problem(source, f"annotations[{order}] is not an object"))
            continue
        ann_id, image_id = ann.get("id"), ann.get("image_id")
        if ann_id is None or image_id is None:
            problems.append(
                Problem(source, "annotation missing 'id' or 'image_id'", ann_id, image_id)
            )
            continue
        if uses[ann_id] > 1:  # ambiguous: no later stage could tell the objects apart
            problems.append(
                Problem(
                    source,
                    f"duplicate annotation id ({uses[ann_id]} annotations share it)",
                    ann_id,
                    image_id,
                )
            )
            continue
        if int(ann.get("iscrowd", 0)) == 1:
            continue
        img = images.get(int(image_id))
        if img is None:
            problems.append(Problem(source, "unknown image id", ann_id, image_id))
            continue
        if not ann.get("segmentation"):
            problems.append(
                Problem(source, "no 'segmentation' to sample a point in", ann_id, image_id)
            )
            continue
        try:
            mask = segmentation_to_mask(ann["segmentation"], img.height, img.width)
        except (ValueError, TypeError, KeyError) as err:
            problems.append(Problem(source, f"invalid segmentation: {err}", ann_id, image_id))
            continue
        if not mask.any():
            problems.append(Problem(source, "empty mask", ann_id, image_id))
            continue
        points[int(ann_id)] = sample_point_in_mask(mask, mode, object_rng(seed, int(ann_id)))
    return points, problems


def run_points(cfg: PointsConfig) -> PointsResult:
    """Write ``cfg.out``: the input JSON with ``point: [x, y]`` on every non-crowd annotation.

    Ground truth (``segmentation``, ``bbox``) is kept for evaluation. Problems fail the run (nothing written)
    under ``on_error="fail"``; under ``"skip"`` those annotations are dropped from the output and listed in the
    log and in the output's ``info.sapnet_points.problems``.
    """
    source = str(cfg.annotations)
    coco = load_coco(cfg.annotations, "ground-truth annotations file")
    if Path(cfg.out).resolve() == Path(cfg.annotations).resolve():
        raise InputError(f"--out {cfg.out} would overwrite the input annotations file")
    check_output_path(cfg.out, "file", "--out")
    points, problems = sample_points_with_problems(
        coco,
        cfg.mode,
        cfg.seed,
        source,
        progress=cfg.progress,  # type: ignore[arg-type]
    )
    if problems and cfg.on_error == "fail":
        raise InputError(
            f"{len(problems)} annotation(s) cannot get a point in {source}:\n  "
            f"{first_items(problems, sep=chr(10) + '  ')}\n"
            "(use --on-error skip to drop them and go on)"
        )
    for problem in problems:
        log.warning("skipped: %s", problem)
    bad = {p.ann_id for p in problems}
    out_anns = []
    num_crowd = 0
    for ann in coco["annotations"]:
        if not isinstance(ann, dict) or ann.get("id") in bad:
            continue
        ann = dict(ann)
        if int(ann.get("iscrowd", 0)) == 1:
            num_crowd += 1
        else:
            x, y = points[int(ann["id"])]
            ann["point"] = [round(x, 3), round(y, 3)]
        out_anns.append(ann)
    info = dict(coco.get("info") or {})
    info["sapnet_points"] = {
        "mode": cfg.mode,
        "seed": cfg.seed,
        "source": source,
        "source_sha256": sha256_file(cfg.annotations),
        "convention": "point [x, y] in pixel-index coordinates (pixel centre = integer)",
        "problems": [p.to_dict() for p in problems],
    }
    doc = {**coco, "info": info, "annotations": out_anns}
    atomic_write_json(cfg.out, doc)
    save_resolved_config(cfg, sidecar_config_path(cfg.out))
    log.info(
        "wrote %d points (%d crowd regions kept unprompted, %d skipped) to %s",
        len(points),
        num_crowd,
        len(problems),
        cfg.out,
    )
    return PointsResult(Path(cfg.out), len(points), num_crowd, problems)
