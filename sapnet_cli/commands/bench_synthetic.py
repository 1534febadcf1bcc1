"""`sapnet bench-synthetic`: the controlled synthetic ablation of the selector (paper Table 4 rows).

Only parses options and calls :func:`stages.synthetic.ablation.run_benchmark` (same as
``benchmarks/synthetic_ablation.py``).
"""

from __future__ import annotations

from pathlib import Path

import typer


def bench_synthetic(
    out: Path = typer.Option(
        Path("runs/bench/synthetic.json"), "--out", help="JSON report (the table is printed too)."
    ),
    seeds: int | None = typer.Option(
        None, "--seeds", help="Number of seeds (datasets and training seeds); default 3, quick 1."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="The reduced run of the test suite (about 1-2 minutes)."
    ),
    images: int | None = typer.Option(None, "--images", help="Synthetic images per seed."),
    iters: int | None = typer.Option(None, "--iters", help="Training iterations per row."),
    rows: list[str] | None = typer.Option(
        None,
        "--row",
        help="Only these rows (repeat the option): mil1, +PDG, +mil2, +PNPG, +BMS, mil1+BMS, "
        "'+PDG paper d=1'. Default: the Table 4 rows.",
    ),
    work: Path | None = typer.Option(
        None, "--work", help="Keep the datasets and run directories here (default: a temp folder)."
    ),
    variants: list[str] | None = typer.Option(
        None,
        "--variant",
        help="Selector variant(s), repeat to compare side by side: official (default: the official "
        "code's top-1 box, PPG base, head init, loss normalisation) and clean (--top1-box exact "
        "--ppg-base psm --head-init xavier --psm-normalise all-bags).",
    ),
) -> None:
    """Plant group/local failure modes in synthetic bags and score each Table 4 row of the selector."""
    from stages.synthetic.ablation import run_benchmark

    report = run_benchmark(
        out, seeds, quick, images, iters, rows or None, work,
        log=lambda s: typer.echo(s, err=True), variants=variants or None,
    )  # fmt: skip
    typer.echo(report["table"])
    typer.echo(f"{report['seconds']:.0f} s; report written to {out}")
