"""`sapnet evaluate`: score any COCO prediction / pseudo-label file against a ground truth."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.export.config import ErrorThresholds, EvaluateConfig


def evaluate(
    pred: Path = typer.Option(
        ...,
        "--pred",
        help="Predictions: a COCO instances file (with 'annotations', e.g. `export-pseudo` output) or a "
        "COCO results list. Per-object IoU/error metrics need annotation ids matching the GT.",
    ),
    gt: Path = typer.Option(..., "--gt", help="Ground-truth COCO JSON with masks."),
    report: Path | None = typer.Option(
        None,
        "--report",
        help="Folder for report.md, report.json and report.html (else only printed).",
    ),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="Folder of the image files drawn in report.html (else a grey canvas).",
    ),
    group_cover: float = typer.Option(
        0.5,
        "--group-cover",
        help="A 'group' error covers at least this fraction of another same-class GT instance.",
    ),
    local_iou: float = typer.Option(
        0.5, "--local-iou", help="A 'local' error has IoU with its GT below this."
    ),
    local_inside: float = typer.Option(
        0.8,
        "--local-inside",
        help="And at least this fraction of the 'local' mask is inside its GT.",
    ),
) -> None:
    """Mask/box mIoU by size, COCO AP (segm, bbox) and group/local errors of a COCO file."""
    from stages.export.report import render_markdown
    from stages.export.run import run_evaluate

    cfg = EvaluateConfig(
        pred=pred,
        gt=gt,
        report=report,
        images=images,
        thresholds=ErrorThresholds(group_cover, local_iou, local_inside),
    )
    typer.echo(render_markdown(run_evaluate(cfg)))
    if report is not None and (report / "report.html").is_file():
        typer.echo(f"report.html: {report / 'report.html'}")
