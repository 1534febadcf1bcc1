"""`sapnet evaluate`: score any COCO prediction / pseudo-label file against a ground truth.

The options are the fields of :class:`stages.export.config.EvaluateConfig` (see :mod:`sapnet_cli.options`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from sapnet_cli.options import config_command
from stages.export.config import EvaluateConfig


def _run(cfg: EvaluateConfig) -> None:
    from stages.export.report import render_markdown
    from stages.export.run import run_evaluate

    typer.echo(render_markdown(run_evaluate(cfg)))
    if cfg.report is not None and (Path(cfg.report) / "report.html").is_file():
        typer.echo(f"report.html: {Path(cfg.report) / 'report.html'}")


evaluate = config_command(
    EvaluateConfig,
    _run,
    doc="Mask/box mIoU by size, COCO AP (segm, bbox) and group/local errors of a COCO file.",
)
