"""`sapnet propose`: M class-agnostic mask proposals per annotated point, into a zarr store.

The options are the fields of :class:`stages.propose.run.ProposeConfig` (see :mod:`sapnet_cli.options`).
"""

from __future__ import annotations

import typer

from sapnet_cli.options import config_command
from stages.propose.run import ProposeConfig, run_propose


def _run(cfg: ProposeConfig) -> None:
    summary = run_propose(cfg)
    typer.echo(summary.line())
    for failure in summary.failures[:20]:
        typer.echo(f"  failed: {failure}", err=True)


propose = config_command(
    ProposeConfig,
    _run,
    doc="Turn every annotated point into M mask proposals (masks as RLE, boxes, scores) in a zarr "
    "store.\n\nRerunning the same command resumes an interrupted run and does nothing on a finished store.",
)
