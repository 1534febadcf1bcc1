"""`sapnet select`: train the SAPNet proposal selector on a proposal store and pick one proposal per point.

The options are the fields of :class:`stages.select.config.SelectConfig` (see :mod:`sapnet_cli.options`),
plus ``--pnpg/--no-pnpg``, which sets both ``use_ppg`` and ``use_npg``. This module only parses options,
calls :func:`stages.select.run.run_select` and prints a summary.
"""

from __future__ import annotations

from typing import Any, Optional

import typer

from sapnet_cli.options import config_command
from stages.select.config import SelectConfig, epochs_or_iters


def _prepare(given: dict[str, Any], extras: dict[str, Any]) -> None:
    """``--epochs`` and ``--iters`` exclude each other; ``--pnpg/--no-pnpg`` sets PPG and NPG."""
    epochs_or_iters(given)
    if extras["pnpg"] is not None:
        given["use_ppg"] = given["use_npg"] = extras["pnpg"]


def _run(cfg: SelectConfig) -> None:
    from stages.select.run import run_select

    result = run_select(cfg)
    if result.selections is None:  # a non-zero rank of a distributed run
        return
    losses = ", ".join(
        f"{k} {v:.4f}" for k, v in result.last_losses.items() if k.startswith("loss")
    )
    typer.echo(
        f"sapnet select: {result.num_objects} objects on {result.num_images} images, "
        f"{result.iterations} iterations ({result.seconds:.0f} s)"
        + (f", resumed at {result.resumed_from}" if result.resumed_from is not None else "")
    )
    if losses:
        typer.echo(f"  last losses: {losses}; {result.images_per_second:.1f} images/s")
    if result.num_failed_objects:
        typer.echo(
            f"  {result.num_failed_objects} objects without proposals were left out (index -1)"
        )
    typer.echo(f"  selections: {result.selections}")
    typer.echo(f"  selector:   {result.selector}")


select = config_command(
    SelectConfig,
    _run,
    doc="Train the SAPNet selector (PSM + PDG, PNPG, PRM, BMS) and write one selection per point.",
    extra={
        "pnpg": (
            Optional[bool],  # noqa: UP045 - Typer reads typing.Optional
            typer.Option(
                None,
                "--pnpg/--no-pnpg",
                help="PPG positives and NPG negatives (use_ppg and use_npg; default on). Off: PRM on "
                "SAM boxes only.",
                show_default=False,
            ),
        )
    },
    prepare=_prepare,
)
