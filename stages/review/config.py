"""Settings of `sapnet review` and `sapnet merge-corrections` (each field's help text is its ``--help`` line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages.common.config import option
from stages.common.errors import InputError
from stages.review.features import DEFAULT_WEIGHTS, SIGNALS

FORMATS = ("polygon", "rle")


def parse_weights(text: str) -> dict[str, float]:
    """``"low_score=1,disagree=2"`` -> ``{"low_score": 1.0, "disagree": 2.0}`` (the ``--weights`` value)."""
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"--weights: expected NAME=WEIGHT pairs, got {part!r}") from None
    return weights


@dataclass
class ReviewConfig:
    """Options of `sapnet review`.

    Attributes:
        pseudo: the pseudo-label COCO file (`export-pseudo` output).
        out: output folder (``todo.json``, ``ranking.csv``).
        selections: the `sapnet select` run (bag scores, PSM picks), or None (the pseudo ``score`` only).
        store: the proposal store (other selectors' masks for the disagreement); None: the one the
            selections were made from, when it still exists.
        count: how many objects to flag: a number (``"50"``) or a percentage (``"10%"``).
        format: ``polygon`` (CVAT, Label Studio) or ``rle`` (exact) for the starting masks.
        weights: weight of each signal's rank percentile (:mod:`stages.review.features`).
    """

    pseudo: Path = option(help="Pseudo-label COCO JSON (`export-pseudo`).", metavar="PATH")
    out: Path = option(
        help="Output folder: todo.json (COCO, for CVAT / Label Studio) and ranking.csv.",
        metavar="DIR",
    )
    selections: Path | None = option(
        None,
        "`sapnet select` run folder: bag scores and PSM picks (else only the pseudo 'score').",
        metavar="DIR",
    )
    store: Path | None = option(
        None,
        "Proposal store, for the other selectors' masks (default: the store the selections "
        "were made from, when it still exists).",
        metavar="PATH",
    )
    count: str = option(
        "10%", "Objects to flag: a number (50) or a percentage of all objects (10%)."
    )
    format: str = option(
        "polygon",
        "Starting masks in todo.json: polygon (imports everywhere) or rle (exact).",
        choices=FORMATS,
    )
    weights: dict[str, float] = option(
        help="Weights of the signals' rank percentiles as NAME=WEIGHT pairs, e.g. "
        "low_score=1,disagree=2 (signals: " + ", ".join(SIGNALS) + "); the default was fitted on "
        "the dev data (docs/commands.md).",
        factory=lambda: dict(DEFAULT_WEIGHTS),
        from_cli=parse_weights,
        metavar="NAME=W,...",
    )

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        unknown = set(self.weights) - set(SIGNALS)
        if unknown:
            raise InputError(
                f"unknown review signal(s) {', '.join(sorted(unknown))}; choose from {', '.join(SIGNALS)}"
            )


@dataclass
class MergeConfig:
    """Options of `sapnet merge-corrections`.

    Attributes:
        pseudo: the pseudo-label file that was reviewed. corrected: the file the annotation tool exported.
        out: the merged pseudo-label file (may be ``pseudo`` itself; written atomically).
        todo: the ``todo.json`` sent out (the ids under review), when the corrected file lost its ``info``.
        allow_deletions: objects sent for review and missing from the corrected file are deleted; without
            this flag that is an error.
    """

    pseudo: Path = option(help="The pseudo-label file that was reviewed.", metavar="PATH")
    corrected: Path = option(
        help="COCO file exported by the annotation tool (the fixed todo.json).", metavar="PATH"
    )
    out: Path = option(
        help="Merged pseudo-label file (written atomically; may be --pseudo itself).",
        metavar="PATH",
    )
    todo: Path | None = option(
        None,
        "The todo.json sent out, when the tool dropped its info (tells deleted objects apart).",
        metavar="PATH",
    )
    allow_deletions: bool = option(
        False,
        "Delete objects that were sent for review and are missing from the corrected file "
        "(without it, that is an error).",
        flag="--allow-deletions",
    )

    def validate(self) -> None:
        if self.out.suffix.lower() != ".json":
            raise InputError(f"--out must be a .json file, got {self.out}")
