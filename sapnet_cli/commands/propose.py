"""`sapnet propose`: M class-agnostic mask proposals per annotated point, into a zarr store."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.propose.run import ProposeConfig, run_propose


def propose(
    annotations: Path = typer.Option(
        ..., "--annotations", help="Points JSON (COCO instances with 'point': [x, y] per object)."
    ),
    images: Path = typer.Option(
        ..., "--images", help="Folder holding the images' file_name paths."
    ),
    store: Path = typer.Option(..., "--store", help="Output zarr store (OUT.zarr); resumable."),
    backend: str = typer.Option(
        "sam",
        "--backend",
        help="sam (segment-anything), mobile-sam (needs the 'mobile' extra), sam2 (SAM 2.1, needs the "
        "'sam2' extra), classical (weight-free, for offline use and CI), or your own as "
        "package.module:factory.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="sam: vit_h (default) | vit_l | vit_b; mobile-sam: vit_t; sam2: hiera_t | hiera_s | "
        "hiera_b+ | hiera_l (default hiera_l on CUDA, hiera_t on CPU).",
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="SAM checkpoint file. Default: $SAPNET_SAM_CHECKPOINT ($SAPNET_SAM2_CHECKPOINT for sam2), "
        "else the official file, downloaded once into the cache (checksum-verified).",
    ),
    proposals_per_point: int = typer.Option(
        6, "--proposals-per-point", help="M proposals per point (SAPNet uses 6: 3 point + 3 box)."
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto (cuda when available, else cpu) | cpu | cuda | cuda:N."
    ),
    shard: str | None = typer.Option(
        None,
        "--shard",
        help="I/N: process the I-th of N disjoint parts of the images, so N processes (GPUs or "
        "machines on a shared filesystem) fill one store. Under torchrun it comes from RANK/WORLD_SIZE.",
    ),
    devices: str | None = typer.Option(
        None,
        "--devices",
        help="Comma-separated devices, e.g. 0,1,2,3 (= cuda:0..3) or cpu,cpu: one worker per device on "
        "this machine, each taking one shard (not with --shard or under torchrun).",
    ),
    batch_points: int = typer.Option(
        64, "--batch-points", help="Points decoded together per SAM call (larger pays off on GPUs)."
    ),
    precision: str | None = typer.Option(
        None,
        "--precision",
        help="fp32 | bf16 | fp16 (autocast, CUDA only) for the SAM backends. Default: fp32; sam2 on "
        "CUDA: bf16 (as SAM 2's official examples).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a store made from other inputs or another backend."
    ),
    on_error: str = typer.Option(
        "fail",
        "--on-error",
        help="fail: stop at a bad annotation or image (finished work is kept); skip: record the "
        "problem in the store and the log, and go on.",
    ),
    chunk_points: int = typer.Option(
        512,
        "--chunk-points",
        help="Points per work unit / zarr chunk (the granularity of resuming and sharding).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Turn every annotated point into M mask proposals (masks as RLE, boxes, scores) in a zarr store.

    Rerunning the same command resumes an interrupted run and does nothing on a finished store.
    """
    if on_error not in ("fail", "skip"):
        raise typer.BadParameter("choose fail or skip", param_hint="--on-error")
    cfg = ProposeConfig(
        annotations=annotations,
        images=images,
        store=store,
        backend=backend,
        model=model,
        checkpoint=checkpoint,
        proposals_per_point=proposals_per_point,
        device=device,
        shard=shard,
        batch_points=batch_points,
        precision=precision,
        overwrite=overwrite,
        on_error=on_error,  # type: ignore[arg-type]
        chunk_points=chunk_points,
        devices=devices,
        progress=progress,
    )
    summary = run_propose(cfg)
    typer.echo(summary.line())
    for failure in summary.failures[:20]:
        typer.echo(f"  failed: {failure}", err=True)
