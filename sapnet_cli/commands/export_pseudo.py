"""`sapnet export-pseudo`: pseudo-label COCO JSON from a proposal store and selections, with report/overlays.

The options are the fields of :class:`stages.export.config.ExportConfig` (see :mod:`sapnet_cli.options`).
"""

from __future__ import annotations

import typer

from sapnet_cli.options import config_command
from stages.export.config import ExportConfig


def _run(cfg: ExportConfig) -> None:
    from stages.export.run import run_export

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
        typer.echo(f"{len(result.viz_paths)} overlay image(s) in {cfg.viz}")


export_pseudo = config_command(
    ExportConfig,
    _run,
    doc="Write pseudo masks as a COCO instances JSON (compressed RLE), one file per selector.",
)
