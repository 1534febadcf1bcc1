"""Options of `sapnet export-pseudo` and `sapnet evaluate`, with the reference defaults.

Several selectors in one run write one file each: the first selector listed writes ``--out``, every other one
writes ``OUT.<selector>.json`` beside it (``pseudo.json`` -> ``pseudo.top1.json``); see :func:`output_paths`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stages.common.errors import InputError
from stages.export.point_aware import PointAwareOptions

SELECTOR_NAMES = ("sapnet", "psm", "top1", "largest", "point-aware", "oracle")
# MPS (METHOD section 7): PRM-score ranks of the auxiliary masks (1 = best) and the weight of each.
AUX_RANKS = (2, 4, 6)
AUX_WEIGHT = 0.5 / 6
# The report's COCO AP runs on a seeded sample of this many images when there are more (see report.py).
AP_MAX_IMAGES = 20_000


@dataclass(frozen=True)
class ErrorThresholds:
    """Definitions of the report's error classes (all fractions in [0, 1]).

    - group: the selected mask covers at least ``group_cover`` of the area of another non-crowd GT instance of
      the same class in the same image (``|sel & gt_other| / |gt_other| >= group_cover``).
    - local: the selected mask has IoU < ``local_iou`` with its own GT instance and at least ``local_inside``
      of the selected mask lies inside that GT (``|sel & gt| / |sel| >= local_inside``): a part of the object.
    """

    group_cover: float = 0.5
    local_iou: float = 0.5
    local_inside: float = 0.8


@dataclass
class ExportConfig:
    """Options of `sapnet export-pseudo`.

    Attributes:
        store: the proposal store (``sapnet propose`` output).
        out: the pseudo-label COCO JSON of the first selector (see :func:`output_paths` for the others).
        selections: a ``sapnet select`` run folder (needed by ``sapnet`` and ``psm``, and for aux masks).
        selectors: selector names, the first is the primary one (written to ``out``).
        aux_masks: add the MPS auxiliary masks; None = only for the ``sapnet`` selector.
        gt: ground-truth COCO JSON with masks (needed by ``oracle``, ``report`` and GT outlines in ``viz``).
        report: folder for ``report.html`` (always) and ``report.md`` / ``report.json`` (with ``gt``).
        viz: folder for PNG overlays; viz_count: how many images (the most crowded first).
        images: folder of the image files (for ``viz``); None: a grey canvas is drawn instead.
        thresholds: definitions of the group/local error classes in the report.
        ap_max_images: the report's COCO AP on a seeded sample of this many images when there are more
            (None: every image; the other metrics always use every object).
        point_aware: the choices of the ``point-aware`` selector (rule, scope, test); the constraint uses
            its scope and test.
        point_constraint: keep the ``sapnet`` and ``psm`` picks (sapnet: the proposal matched to the BMS
            box) and the MPS aux masks off proposals that contain another annotated point (same class
            first, then any class with scope "any") when an alternative exists.
    """

    store: Path
    out: Path
    selections: Path | None = None
    selectors: tuple[str, ...] = ("sapnet",)
    aux_masks: bool | None = None
    gt: Path | None = None
    report: Path | None = None
    viz: Path | None = None
    viz_count: int = 20
    images: Path | None = None
    thresholds: ErrorThresholds = field(default_factory=ErrorThresholds)
    ap_max_images: int | None = AP_MAX_IMAGES
    point_aware: PointAwareOptions = field(default_factory=PointAwareOptions)
    point_constraint: bool = True

    def validate(self) -> None:
        """InputError for inconsistent options (unknown selector, oracle without GT, ...)."""
        self.point_aware.validate()
        if not self.selectors:
            raise InputError("no selector given; choose from " + ", ".join(SELECTOR_NAMES))
        unknown = [s for s in self.selectors if s not in SELECTOR_NAMES]
        if unknown:
            raise InputError(
                f"unknown selector(s) {', '.join(unknown)}; choose from {', '.join(SELECTOR_NAMES)}"
            )
        if len(set(self.selectors)) != len(self.selectors):
            raise InputError(f"selector listed twice in {','.join(self.selectors)}")
        needs_sel = [s for s in self.selectors if s in ("sapnet", "psm")]
        if needs_sel and self.selections is None:
            raise InputError(
                f"selector(s) {', '.join(needs_sel)} need --selections RUN_DIR (a `sapnet select` run)"
            )
        if self.aux_masks and self.selections is None:
            raise InputError("--aux-masks ranks proposals by PRM score and needs --selections")
        if "oracle" in self.selectors and self.gt is None:
            raise InputError("the oracle selector needs --gt GT.json")
        if self.viz_count < 0:
            raise InputError(f"--viz-count must be >= 0, got {self.viz_count}")
        if self.out.suffix.lower() != ".json":
            raise InputError(f"--out must be a .json file, got {self.out}")

    def wants_aux(self, selector: str) -> bool:
        """Whether ``selector``'s file carries aux masks (default: only the ``sapnet`` selector)."""
        if self.aux_masks is None:
            return selector == "sapnet"
        return self.aux_masks


def output_paths(out: Path, selectors: tuple[str, ...] | list[str]) -> dict[str, Path]:
    """``{selector: file}``: the first selector writes ``out``, the others ``OUT.<selector>.json``."""
    out = Path(out)
    paths = {}
    for i, name in enumerate(selectors):
        paths[name] = out if i == 0 else out.with_name(f"{out.stem}.{name}{out.suffix}")
    return paths


@dataclass
class EvaluateConfig:
    """Options of `sapnet evaluate`: any COCO predictions / pseudo labels against a ground truth.

    ``report``: folder for report.md, report.json and report.html; ``images``: the image files drawn in
    report.html (else a grey canvas).
    """

    pred: Path
    gt: Path
    report: Path | None = None
    images: Path | None = None
    thresholds: ErrorThresholds = field(default_factory=ErrorThresholds)
    ap_max_images: int | None = AP_MAX_IMAGES
