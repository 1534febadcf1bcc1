"""`sapnet points`: sample one point per object inside its ground-truth mask."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.points.run import PointsConfig, run_points
from stages.points.sampler import MODES


def points(
    annotations: Path = typer.Option(
        ..., "--annotations", help="COCO instances JSON with ground-truth masks (GT.json)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output points JSON: the input with 'point': [x, y] on every object."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same points."),
    mode: str = typer.Option(
        "center-gaussian",
        "--mode",
        help="center-gaussian: P2BNet quasi-centre sampler (gaussian sigma 0.25 of the box, times the "
        "mask and a central ellipse, jittered); uniform: any mask pixel; center: the mask pixel "
        "nearest to the centre of mass.",
    ),
    on_error: str = typer.Option(
        "fail",
        "--on-error",
        help="fail: stop on the first bad annotation (nothing written); skip: drop it, log it and go on.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Sample one point per object (crowd regions are never prompted) for benchmarks and new datasets."""
    if mode not in MODES:
        raise typer.BadParameter(f"choose one of {', '.join(MODES)}", param_hint="--mode")
    if on_error not in ("fail", "skip"):
        raise typer.BadParameter("choose fail or skip", param_hint="--on-error")
    result = run_points(
        PointsConfig(annotations, out, seed, mode, on_error, progress)  # type: ignore[arg-type]
    )
    typer.echo(
        f"wrote {result.num_points} points to {result.out} ({result.num_crowd} crowd regions kept "
        f"unprompted, {len(result.problems)} annotation(s) skipped)"
    )
