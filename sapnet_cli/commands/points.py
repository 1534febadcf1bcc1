"""`sapnet points`: sample one point per object inside its ground-truth mask.

The options are the fields of :class:`stages.points.run.PointsConfig` (see :mod:`sapnet_cli.options`).
"""

from __future__ import annotations

import typer

from sapnet_cli.options import config_command
from stages.points.run import PointsConfig, run_points


def _run(cfg: PointsConfig) -> None:
    result = run_points(cfg)
    typer.echo(
        f"wrote {result.num_points} points to {result.out} ({result.num_crowd} crowd regions kept "
        f"unprompted, {len(result.problems)} annotation(s) skipped)"
    )


points = config_command(
    PointsConfig,
    _run,
    doc="Sample one point per object (crowd regions are never prompted) for benchmarks and new datasets.",
)
