"""`sapnet review` and `sapnet merge-corrections`: the correction loop of pseudo labels."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.review.config import FORMATS, MergeConfig, ReviewConfig
from stages.review.features import SIGNALS


def _weights(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f"expected NAME=WEIGHT pairs, got {part!r}", param_hint="--weights"
            ) from None
    return weights


def review(
    pseudo: Path = typer.Option(..., "--pseudo", help="Pseudo-label COCO JSON (`export-pseudo`)."),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output folder: todo.json (COCO, for CVAT / Label Studio) and ranking.csv.",
    ),
    selections: Path | None = typer.Option(
        None,
        "--selections",
        help="`sapnet select` run folder: bag scores and PSM picks (else only the pseudo 'score').",
    ),
    store: Path | None = typer.Option(
        None,
        "--store",
        help="Proposal store, for the other selectors' masks (default: the store the selections "
        "were made from, when it still exists).",
    ),
    count: str = typer.Option(
        "10%",
        "--count",
        help="Objects to flag: a number (50) or a percentage of all objects (10%).",
    ),
    fmt: str = typer.Option(
        "polygon",
        "--format",
        help="Starting masks in todo.json: "
        + " | ".join(FORMATS)
        + " (polygons import everywhere; "
        "rle is exact).",
    ),
    weights: str | None = typer.Option(
        None,
        "--weights",
        help="Weights of the signals' rank percentiles, e.g. low_score=1,disagree=2 (signals: "
        + ", ".join(SIGNALS)
        + "; default: those fitted on the dev data, docs/commands.md).",
    ),
) -> None:
    """Rank pseudo labels by how likely their mask is wrong; write the worst as a COCO file to fix."""
    from stages.review.review import run_review

    cfg = ReviewConfig(pseudo=pseudo, out=out, selections=selections, store=store, count=count)
    cfg.format = fmt
    w = _weights(weights)
    if w is not None:
        cfg.weights = w
    res = run_review(cfg)
    typer.echo(f"flagged {res.count} of {res.total} objects -> {res.todo} (ranking: {res.ranking})")


def merge_corrections(
    pseudo: Path = typer.Option(..., "--pseudo", help="The pseudo-label file that was reviewed."),
    corrected: Path = typer.Option(
        ..., "--corrected", help="COCO file exported by the annotation tool (the fixed todo.json)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Merged pseudo-label file (written atomically; may be --pseudo itself)."
    ),
    todo: Path | None = typer.Option(
        None,
        "--todo",
        help="The todo.json sent out, when the tool dropped its info (tells deleted objects apart).",
    ),
    allow_deletions: bool = typer.Option(
        False,
        "--allow-deletions",
        help="Delete objects that were sent for review and are missing from the corrected file "
        "(without it, that is an error).",
    ),
) -> None:
    """Fold corrected masks back into the pseudo labels by annotation id."""
    from stages.review.merge import run_merge

    res = run_merge(MergeConfig(pseudo, corrected, out, todo, allow_deletions))
    typer.echo(
        f"{res.corrected} corrected, {res.unchanged} unchanged, {res.deleted} deleted -> {res.out}"
    )
