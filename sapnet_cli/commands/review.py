"""`sapnet review` and `sapnet merge-corrections`: the correction loop of pseudo labels.

The options are the fields of :class:`stages.review.config.ReviewConfig` and
:class:`stages.review.config.MergeConfig` (see :mod:`sapnet_cli.options`).
"""

from __future__ import annotations

import typer

from sapnet_cli.options import config_command
from stages.review.config import MergeConfig, ReviewConfig


def _review(cfg: ReviewConfig) -> None:
    from stages.review.review import run_review

    res = run_review(cfg)
    typer.echo(f"flagged {res.count} of {res.total} objects -> {res.todo} (ranking: {res.ranking})")


def _merge(cfg: MergeConfig) -> None:
    from stages.review.merge import run_merge

    res = run_merge(cfg)
    typer.echo(
        f"{res.corrected} corrected, {res.unchanged} unchanged, {res.deleted} deleted -> {res.out}"
    )


review = config_command(
    ReviewConfig,
    _review,
    doc="Rank pseudo labels by how likely their mask is wrong; write the worst as a COCO file to fix.",
)
merge_corrections = config_command(
    MergeConfig,
    _merge,
    doc="Fold corrected masks back into the pseudo labels by annotation id.",
)
