"""Options of `sapnet export-pseudo` and `sapnet evaluate`, with the reference defaults.

Several selectors in one run write one file each: the first selector listed writes ``--out``, every other one
writes ``OUT.<selector>.json`` beside it (``pseudo.json`` -> ``pseudo.top1.json``); see :func:`output_paths`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stages.common.config import option
from stages.common.errors import InputError
from stages.export.point_aware import PointAwareOptions

SELECTOR_NAMES = ("sapnet", "psm", "top1", "largest", "point-aware", "oracle")


def split_names(text: str) -> tuple[str, ...]:
    """``"sapnet, top1"`` -> ``("sapnet", "top1")`` (the ``--selector`` list)."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


# MPS (docs/method.md §10): PRM-score ranks of the auxiliary masks (1 = best) and the weight of each.
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

    group_cover: float = option(
        0.5,
        "Report: a 'group' error covers at least this fraction of another same-class GT instance.",
    )
    local_iou: float = option(0.5, "Report: a 'local' error has IoU with its GT below this.")
    local_inside: float = option(
        0.8, "Report: and at least this fraction of the 'local' mask lies inside its GT."
    )


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

    store: Path = option(
        help="Proposal store (OUT.zarr written by `sapnet propose`).", metavar="PATH"
    )
    out: Path = option(
        help="Pseudo-label COCO JSON of the first selector. With several selectors, every other one "
        "writes OUT.<selector>.json beside it (pseudo.json -> pseudo.top1.json).",
        metavar="PATH",
    )
    selections: Path | None = option(
        None,
        "`sapnet select` run folder (selections.npz); needed by sapnet, psm and --aux-masks.",
        metavar="DIR",
    )
    selectors: tuple[str, ...] = option(
        ("sapnet",),
        "Selector, or a comma-separated list compared side by side in the report: "
        + ", ".join(SELECTOR_NAMES)
        + ". top1 = backend's best score (SAM-top1), largest = largest area, psm = PSM only, "
        "sapnet = final SAPNet choice, point-aware = training-free choice among the proposals that "
        "contain no other annotated point, oracle = best IoU with --gt (upper bound, not training "
        "data).",
        flag="--selector",
        from_cli=split_names,
        metavar="NAMES",
    )
    aux_masks: bool | None = option(
        None,
        "Add MPS auxiliary masks (proposals ranked 2nd/4th/6th by PRM score, weight 0.5/6 each) "
        "as aux_segmentations/aux_weights. Default: on for the sapnet selector only.",
    )
    gt: Path | None = option(
        None,
        "Ground-truth COCO JSON with masks (matched by annotation id); needed by oracle and "
        "--report, and draws GT outlines in --viz.",
        metavar="PATH",
    )
    report: Path | None = option(
        None,
        "Folder for report.html (a self-contained page: quality table and charts, a sortable "
        "gallery of every selector's masks, each object's proposals; thumbnails in report_files/) and, "
        "with --gt, report.md and report.json: mask/box mIoU by size, COCO AP, Gap, group/local errors.",
        metavar="DIR",
    )
    viz: Path | None = option(
        None, "Folder for PNG overlays (one per selector and a comparison grid).", metavar="DIR"
    )
    viz_count: int = option(20, "Number of images drawn by --viz (the most crowded first).")
    images: Path | None = option(
        None,
        "Folder of the image files, for --viz and report.html (default: the folder `sapnet "
        "propose` read; without images, a grey canvas).",
        metavar="DIR",
    )
    thresholds: ErrorThresholds = field(default_factory=ErrorThresholds)
    ap_max_images: int | None = AP_MAX_IMAGES
    point_aware: PointAwareOptions = field(default_factory=PointAwareOptions)
    point_constraint: bool = option(
        True,
        "Keep the sapnet and psm picks (sapnet: the proposal matched to the BMS box) and the MPS aux "
        "masks off proposals that contain another annotated point when an alternative exists "
        "(aux masks that do get weight 0).",
    )

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

    pred: Path = option(
        help="Predictions: a COCO instances file (with 'annotations', e.g. `export-pseudo` output) or a "
        "COCO results list. Per-object IoU/error metrics need annotation ids matching the GT.",
        metavar="PATH",
    )
    gt: Path = option(help="Ground-truth COCO JSON with masks.", metavar="PATH")
    report: Path | None = option(
        None,
        "Folder for report.md, report.json, report.html and config.yaml (else only printed).",
        metavar="DIR",
    )
    images: Path | None = option(
        None, "Folder of the image files drawn in report.html (else a grey canvas).", metavar="DIR"
    )
    thresholds: ErrorThresholds = field(default_factory=ErrorThresholds)
    ap_max_images: int | None = AP_MAX_IMAGES
