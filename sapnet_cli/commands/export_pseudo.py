"""`sapnet export-pseudo`: pseudo-label COCO JSON from a proposal store and selections, with report/overlays."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.export.config import SELECTOR_NAMES, ErrorThresholds, ExportConfig
from stages.export.point_aware import POINT_RULES, POINT_SCOPES, POINT_TESTS, PointAwareOptions

_PA = PointAwareOptions()


def export_pseudo(
    store: Path = typer.Option(
        ..., "--store", help="Proposal store (OUT.zarr written by `sapnet propose`)."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Pseudo-label COCO JSON of the first selector. With several selectors, every other one "
        "writes OUT.<selector>.json beside it (pseudo.json -> pseudo.top1.json).",
    ),
    selections: Path | None = typer.Option(
        None,
        "--selections",
        help="`sapnet select` run folder (selections.npz); needed by sapnet, psm and --aux-masks.",
    ),
    selector: str = typer.Option(
        "sapnet",
        "--selector",
        help="Selector, or a comma-separated list compared side by side in the report: "
        + ", ".join(SELECTOR_NAMES)
        + ". top1 = backend's best score (SAM-top1), largest = largest area, psm = PSM only, "
        "sapnet = final SAPNet choice, point-aware = training-free choice among the proposals that "
        "contain no other annotated point, oracle = best IoU with --gt (upper bound, not training "
        "data).",
    ),
    point_rule: str = typer.Option(
        _PA.rule,
        "--point-rule",
        help="point-aware: which proposal wins among those without another point: "
        + " | ".join(POINT_RULES)
        + " (consensus = highest mean mask IoU with the bag's proposals; fitted on half the dev data).",
    ),
    point_scope: str = typer.Option(
        _PA.scope,
        "--point-scope",
        help="Points that count against a proposal: same (other points of the same class) or any "
        "(same class first, then any class). Also used by --point-constraint. "
        + " | ".join(POINT_SCOPES),
    ),
    point_test: str = typer.Option(
        _PA.test,
        "--point-test",
        help="A proposal contains a point when the point's pixel centre is strictly inside its box "
        "(box; cheap) or the pixel is in its mask (mask; about 10x slower). "
        + " | ".join(POINT_TESTS),
    ),
    point_constraint: bool = typer.Option(
        True,
        "--point-constraint/--no-point-constraint",
        help="Keep the sapnet and psm picks (sapnet: the proposal matched to the BMS box) and the MPS aux "
        "masks off proposals that contain another annotated point when an alternative exists "
        "(aux masks that do get weight 0).",
    ),
    aux_masks: bool | None = typer.Option(
        None,
        "--aux-masks/--no-aux-masks",
        help="Add MPS auxiliary masks (proposals ranked 2nd/4th/6th by PRM score, weight 0.5/6 each) "
        "as aux_segmentations/aux_weights. Default: on for the sapnet selector only.",
    ),
    gt: Path | None = typer.Option(
        None,
        "--gt",
        help="Ground-truth COCO JSON with masks (matched by annotation id); needed by oracle and "
        "--report, and draws GT outlines in --viz.",
    ),
    report: Path | None = typer.Option(
        None,
        "--report",
        help="Folder for report.html (a self-contained page: quality table and charts, a sortable "
        "gallery of every selector's masks, each object's proposals; thumbnails in report_files/) and, "
        "with --gt, report.md and report.json: mask/box mIoU by size, COCO AP, Gap, group/local errors.",
    ),
    viz: Path | None = typer.Option(
        None, "--viz", help="Folder for PNG overlays (one per selector and a comparison grid)."
    ),
    viz_count: int = typer.Option(
        20, "--viz-count", help="Number of images drawn by --viz (the most crowded first)."
    ),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="Folder of the image files, for --viz and report.html (default: the folder `sapnet "
        "propose` read; without images, a grey canvas).",
    ),
    group_cover: float = typer.Option(
        0.5,
        "--group-cover",
        help="Report: a 'group' error covers at least this fraction of another same-class GT instance.",
    ),
    local_iou: float = typer.Option(
        0.5, "--local-iou", help="Report: a 'local' error has IoU with its GT below this."
    ),
    local_inside: float = typer.Option(
        0.8,
        "--local-inside",
        help="Report: and at least this fraction of the 'local' mask lies inside its GT.",
    ),
) -> None:
    """Write pseudo masks as a COCO instances JSON (compressed RLE), one file per selector."""
    from stages.export.run import run_export

    cfg = ExportConfig(
        store=store,
        out=out,
        selections=selections,
        selectors=tuple(s.strip() for s in selector.split(",") if s.strip()),
        aux_masks=aux_masks,
        gt=gt,
        report=report,
        viz=viz,
        viz_count=viz_count,
        images=images,
        thresholds=ErrorThresholds(group_cover, local_iou, local_inside),
        point_aware=PointAwareOptions(point_rule, point_scope, point_test),
        point_constraint=point_constraint,
    )
    result = run_export(cfg)
    for name, path in result.outputs.items():
        typer.echo(f"{name}: {result.num_objects} pseudo labels -> {path}")
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} object(s) without proposals (listed in info)")
    if result.report_paths is not None:
        typer.echo(result.report_paths[0].read_text(encoding="utf-8"))
    if result.html is not None:
        typer.echo(f"report.html: {result.html.describe()}")
    if result.viz_paths:
        typer.echo(f"{len(result.viz_paths)} overlay image(s) in {viz}")
