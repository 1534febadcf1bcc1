"""Options of `sapnet review` and `sapnet merge-corrections`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stages.common.errors import InputError
from stages.review.features import DEFAULT_WEIGHTS, SIGNALS

FORMATS = ("polygon", "rle")


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

    pseudo: Path
    out: Path
    selections: Path | None = None
    store: Path | None = None
    count: str = "10%"
    format: str = "polygon"
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

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

    pseudo: Path
    corrected: Path
    out: Path
    todo: Path | None = None
    allow_deletions: bool = False

    def validate(self) -> None:
        if self.out.suffix.lower() != ".json":
            raise InputError(f"--out must be a .json file, got {self.out}")
