"""`sapnet select`: train the SAPNet proposal selector on a proposal store and pick one proposal per point.

This module only parses options, calls :func:`stages.select.run.run_select` and prints a summary. Options
left out keep the value of ``--config FILE.yaml`` (if given), else the METHOD.md default.
"""

from __future__ import annotations

from pathlib import Path

import typer

from stages.common.errors import InputError


def _flag(value: bool, when_set: bool) -> bool | None:
    """A switch given on the command line overrides the config file; absent -> None (keep)."""
    return when_set if value else None


def select(
    store: Path | None = typer.Option(
        None, "--store", help="Proposal store (STORE.zarr) written by `sapnet propose`."
    ),
    images: Path | None = typer.Option(
        None, "--images", help="Folder with the store's images (the file names of its source JSON)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Run directory: selections, selector.pt, checkpoints/, metrics.jsonl, config.yaml.",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML/JSON file with any of these options (command line wins)."
    ),
    backbone: str | None = typer.Option(
        None, "--backbone", help="resnet50 (default, as the paper) or resnet18."
    ),
    weights: str | None = typer.Option(
        None,
        "--weights",
        help="Backbone init: imagenet (torchvision weights; default), none (random) or a state-dict PATH.",
    ),
    epochs: int | None = typer.Option(
        None,
        "--epochs",
        help="Training epochs (default 12; lr steps at 8/12 and 11/12 of the run).",
    ),
    iters: int | None = typer.Option(
        None, "--iters", help="Training iterations instead of --epochs (same schedule fractions)."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Images per process and step (default 4)."
    ),
    lr: float | None = typer.Option(
        None, "--lr", help="Base learning rate (default 0.015 x total batch / 32)."
    ),
    short_side: int | None = typer.Option(
        None, "--short-side", help="Resize the short image side to this (default 800)."
    ),
    max_size: int | None = typer.Option(
        None, "--max-size", help="Upper limit of the long image side (default 1333)."
    ),
    device: str | None = typer.Option(
        None,
        "--device",
        help="auto (cuda when available, else cpu; default) | cpu | cuda | cuda:N.",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from OUT/checkpoints/last.pt (same options required)."
    ),
    no_pdg: bool = typer.Option(False, "--no-pdg", help="Switch off point distance guidance."),
    no_pnpg: bool = typer.Option(
        False,
        "--no-pnpg",
        help="Switch off PPG positives and NPG negatives (PRM on SAM boxes only).",
    ),
    no_prm: bool = typer.Option(
        False, "--no-prm", help="PSM only: no refinement stage (implies --no-pnpg)."
    ),
    no_bms: bool = typer.Option(False, "--no-bms", help="Switch off box mining on the final pick."),
    top1_box: str | None = typer.Option(
        None,
        "--top1-box",
        help="Box BMS starts from: weighted (default, the official code: the top-1 proposal times "
        "s / (s + 1e-8) in float32, so low-score picks mostly stay unmerged) or exact (the proposal).",
    ),
    ppg_base: str | None = typer.Option(
        None,
        "--ppg-base",
        help="PPG base box: code (default, the official code: the stage-0 BMS box matched to a proposal "
        "within < 1 px, else proposal 5) or psm (the top-1 PSM proposal, as the paper reads).",
    ),
    head_init: str | None = typer.Option(
        None,
        "--head-init",
        help="Init of the head's shared FCs: normal (default, the official Normal(0, 0.01) on every "
        "Linear) or xavier (Xavier uniform).",
    ),
    psm_normalise: str | None = typer.Option(
        None,
        "--psm-normalise",
        help="Stage-0 loss average: valid-bags (default, the official code: over bags with at least one "
        "valid proposal) or all-bags.",
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of init, data order, flips, negatives (default 0)."
    ),
    predict_only: bool = typer.Option(
        False, "--predict-only", help="Skip training; predict with --checkpoint."
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="selector.pt or last.pt to predict with (--predict-only)."
    ),
    num_workers: int | None = typer.Option(
        None, "--num-workers", help="Data-loading worker processes (default 2)."
    ),
) -> None:
    """Train the SAPNet selector (PSM + PDG, PNPG, PRM, BMS) and write one selection per point."""
    from stages.select.config import build_config
    from stages.select.run import run_select

    if epochs is not None and iters is not None:
        raise InputError("give --epochs or --iters, not both")
    if no_prm:
        no_pnpg = True
    cfg = build_config(
        config,
        store=str(store) if store else None,
        images=str(images) if images else None,
        out=str(out) if out else None,
        backbone=backbone,
        weights=weights,
        epochs=epochs,
        iters=iters,
        batch_size=batch_size,
        lr=lr,
        short_side=short_side,
        max_size=max_size,
        device=device,
        resume=_flag(resume, True),
        use_pdg=_flag(no_pdg, False),
        use_ppg=_flag(no_pnpg, False),
        use_npg=_flag(no_pnpg, False),
        use_prm=_flag(no_prm, False),
        use_bms=_flag(no_bms, False),
        top1_box=top1_box,
        ppg_base=ppg_base,
        head_init=head_init,
        psm_normalise=psm_normalise,
        seed=seed,
        predict_only=_flag(predict_only, True),
        checkpoint=str(checkpoint) if checkpoint else None,
        num_workers=num_workers,
    )
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
