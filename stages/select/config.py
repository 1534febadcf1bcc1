"""`SelectConfig`: every setting of `sapnet select` (the SAPNet proposal selector), with the method's defaults.

The defaults are the official code's (docs/method.md). Sources, lowest priority first: the dataclass defaults,
a YAML/JSON config file (``--config``), the command-line options that were given, then ``--opts KEY VALUE``
(:func:`stages.common.config.resolve_config`); :meth:`SelectConfig.validate` checks the result (InputError
naming the option) without changing it.

Ablation switches (paper Table 4; see ``ABLATIONS``)::

    mil1      --no-pdg --no-prm --no-pnpg --no-bms    PSM only
    +PDG      --no-prm --no-pnpg --no-bms             PSM with point-distance guidance
    +mil2     --no-pnpg --no-bms                      + PRM over the M SAM proposals only (no PPG, no NPG)
    +PNPG     --no-bms                                + PPG positives (M + 20 bag) and NPG negatives
    +BMS      (defaults)                              + box mining on the PRM pick (the full selector)

``--no-pnpg`` switches off both halves of PNPG; the config file or ``--opts`` may switch them separately with
``use_ppg`` / ``use_npg`` (paper Table 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common.config import check_choices, option, resolve_config
from stages.common.devices import normalize_device
from stages.common.errors import InputError

BACKBONES = ("resnet50", "resnet18")
PDG_MODES = ("logits", "paper")
PPG_BASES = ("code", "psm")
TOP1_BOXES = ("weighted", "exact")
HEAD_INITS = ("normal", "xavier")
"""Init of the shared FCs: "normal" (official, Normal(0, 0.01)) or "xavier" (Xavier uniform)."""
PSM_NORMALISE = ("valid-bags", "all-bags")
REFERENCE_BATCH = 32
"""Total batch of the reference lr (4 images x 8 GPUs)."""
REFERENCE_LR = 0.015

ABLATIONS: dict[str, dict[str, bool]] = {
    "mil1": {
        "use_pdg": False,
        "use_prm": False,
        "use_ppg": False,
        "use_npg": False,
        "use_bms": False,
    },
    "+PDG": {
        "use_pdg": True,
        "use_prm": False,
        "use_ppg": False,
        "use_npg": False,
        "use_bms": False,
    },
    "+mil2": {
        "use_pdg": True,
        "use_prm": True,
        "use_ppg": False,
        "use_npg": False,
        "use_bms": False,
    },
    "+PNPG": {"use_pdg": True, "use_prm": True, "use_ppg": True, "use_npg": True, "use_bms": False},
    "+BMS": {"use_pdg": True, "use_prm": True, "use_ppg": True, "use_npg": True, "use_bms": True},
}
"""The configuration rows of paper Table 4 (without MPS, which belongs to SOLOv2 training)."""


@dataclass
class SelectConfig:
    """Settings of one `sapnet select` run; the fields with help text are also command-line options.

    Paths: ``store`` (proposal store from `sapnet propose`), ``images`` (folder with the store's images),
    ``out`` (run directory), ``checkpoint`` (weights for ``predict_only``).

    Model: ``backbone`` resnet50 | resnet18; ``weights`` "imagenet" (torchvision weights, downloaded or from
    the torch cache), "none" (random init) or a path to a state dict of the backbone (or of the whole
    selector); ``fpn_channels`` and ``fc_dim`` (docs/method.md §4).

    Schedule (docs/method.md §11): ``epochs`` or ``iters`` (when set, it wins);
    ``batch_size`` images per process; ``lr`` None = 0.015 x total batch / 32; ``momentum``,
    ``weight_decay``, ``grad_clip`` (L2), ``warmup_iters`` from ``warmup_ratio``, x``lr_gamma`` steps at
    ``lr_steps`` = fractions of the run (epochs 8 and 11 of 12), ``flip`` probability.

    Method switches: ``use_pdg``, ``use_prm``, ``use_ppg``, ``use_npg``, ``use_bms`` (without PRM, PPG and
    NPG are switched off when the config is built); ``pdg_mode`` "logits"
    (code: class logits x S^d in the PSM loss) or "paper" (S^d multiplied into S_cls * S_ins, also for the
    PSM pick); ``pdg_power`` d = 1/64, ``pdg_distance_power`` 0.5; ``num_negatives`` 500 background negatives per
    image; BMS ``bms_t1`` 0.6, ``bms_t2`` 0.3.

    Official-code behaviour (defaults) and the cleaner variants (docs/method.md §14, §15):
    ``top1_box`` "weighted" (the box handed to BMS is the top-1 proposal times ``s / (s + 1e-8)`` in
    float32, s = its selection score, as the code's top-k average with k = 1) or "exact" (the proposal
    itself); ``ppg_base`` "code" (stage-0 BMS box matched to the first proposal within strictly < 1 px on
    all 4 coordinates, else proposal 5) or "psm" (box_psm, the top-1 PSM proposal); ``head_init``
    "normal" (Normal(0, 0.01) on every Linear of the head, shared FCs included) or "xavier" (Xavier-uniform
    on the shared FCs); ``psm_normalise`` "valid-bags" (stage-0 loss averaged over the bags with at least
    one valid proposal, empty bags weigh 0) or "all-bags" (over all bags).

    Run: ``device`` auto | cpu | cuda | cuda:N (:mod:`stages.common.devices`); ``seed``; ``num_workers`` data-loader processes; ``resume``;
    ``checkpoint_interval`` extra checkpoint every N iterations (0: epochs and end only); ``progress`` tqdm bars.
    """

    store: str = option(
        "", "Proposal store (STORE.zarr) written by `sapnet propose`. Required.", metavar="PATH"
    )
    images: str = option(
        "",
        "Folder with the store's images (the file names of its source JSON). Required.",
        metavar="DIR",
    )
    out: str = option(
        "",
        "Run directory: selections, selector.pt, checkpoints/, metrics.jsonl, config.yaml. Required.",
        metavar="DIR",
    )
    backbone: str = option(
        "resnet50", "ResNet of the selector (resnet50 as the paper).", choices=BACKBONES
    )
    weights: str = option(
        "imagenet",
        "Backbone init: imagenet (torchvision weights), none (random) or a state-dict PATH.",
    )
    fpn_channels: int = 256
    fc_dim: int = 1024
    epochs: int = option(12, "Training epochs (lr steps at lr_steps fractions of the run).")
    iters: int | None = option(
        None, "Training iterations instead of --epochs (same schedule fractions)."
    )
    batch_size: int = option(4, "Images per process and step.")
    lr: float | None = option(
        None, f"Base learning rate (default {REFERENCE_LR} x total batch / {REFERENCE_BATCH})."
    )
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 35.0
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    lr_steps: tuple[float, ...] = (8 / 12, 11 / 12)
    lr_gamma: float = 0.1
    flip: float = 0.5
    short_side: int = option(800, "Resize the short image side to this.")
    max_size: int = option(1333, "Upper limit of the long image side.")
    use_pdg: bool = option(True, "Point distance guidance (PDG).", flag="--pdg/--no-pdg")
    use_prm: bool = option(
        True,
        "The refinement stage (PRM); without it PSM only, and no PPG/NPG.",
        flag="--prm/--no-prm",
    )
    use_ppg: bool = True
    use_npg: bool = True
    use_bms: bool = option(True, "Box mining on the final pick (BMS).", flag="--bms/--no-bms")
    pdg_mode: str = option("logits", cli=False, choices=PDG_MODES)
    pdg_power: float = 1.0 / 64.0
    pdg_distance_power: float = 0.5
    ppg_base: str = option(
        "code",
        "PPG base box: code (the official code: the stage-0 BMS box matched to a proposal within "
        "< 1 px, else proposal 5) or psm (the top-1 PSM proposal, as the paper reads).",
        choices=PPG_BASES,
    )
    top1_box: str = option(
        "weighted",
        "Box BMS starts from: weighted (the official code: the top-1 proposal times s / (s + 1e-8) in "
        "float32, so low-score picks mostly stay unmerged) or exact (the proposal).",
        choices=TOP1_BOXES,
    )
    head_init: str = option(
        "normal",
        "Init of the head's shared FCs: normal (the official Normal(0, 0.01) on every Linear) or "
        "xavier (Xavier uniform).",
        choices=HEAD_INITS,
    )
    psm_normalise: str = option(
        "valid-bags",
        "Stage-0 loss average: valid-bags (the official code: over bags with at least one valid "
        "proposal) or all-bags.",
        choices=PSM_NORMALISE,
    )
    num_negatives: int = 500
    bms_t1: float = 0.6
    bms_t2: float = 0.3
    device: str = option("auto", "auto (cuda when available, else cpu) | cpu | cuda | cuda:N.")
    seed: int = option(0, "Seed of init, data order, flips, negatives.")
    num_workers: int = option(2, "Data-loading worker processes.")
    resume: bool = option(
        False, "Continue from OUT/checkpoints/last.pt (same options required).", flag="--resume"
    )
    predict_only: bool = option(
        False, "Skip training; predict with --checkpoint.", flag="--predict-only"
    )
    checkpoint: str | None = option(
        None, "selector.pt or last.pt to predict with (--predict-only).", metavar="PATH"
    )
    checkpoint_interval: int = 0
    progress: bool = True

    def base_lr(self, world_size: int = 1) -> float:
        """The lr actually used: ``lr`` if given, else 0.015 scaled linearly by the total batch / 32."""
        if self.lr is not None:
            return float(self.lr)
        return REFERENCE_LR * self.batch_size * world_size / REFERENCE_BATCH

    def __post_init__(self) -> None:
        # PNPG only feeds the PRM stage: without PRM there are no PPG positives and no NPG negatives
        # (``--no-prm`` implies ``--no-pnpg``). The one place this rule is applied: when the config is
        # built, so the recorded config says what ran; validate() never changes the config.
        if not self.use_prm:
            self.use_ppg = self.use_npg = False

    def flags(self) -> dict[str, Any]:
        """The method switches, as recorded in the selections metadata."""
        return {
            "use_pdg": self.use_pdg,
            "use_prm": self.use_prm,
            "use_ppg": self.use_ppg,
            "use_npg": self.use_npg,
            "use_bms": self.use_bms,
            "pdg_mode": self.pdg_mode,
            "ppg_base": self.ppg_base,
            "top1_box": self.top1_box,
            "head_init": self.head_init,
            "psm_normalise": self.psm_normalise,
        }

    def validate(self) -> SelectConfig:
        """InputError naming the first bad option; returns self unchanged."""
        if not self.store:
            raise InputError("--store is required (a proposal store made by `sapnet propose`)")
        if not self.images:
            raise InputError("--images is required (the folder holding the store's images)")
        if not self.out:
            raise InputError("--out is required (the run directory)")
        check_choices(self)
        normalize_device(self.device)
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "short_side": self.short_side,
            "max_size": self.max_size,
            "fpn_channels": self.fpn_channels,
            "fc_dim": self.fc_dim,
        }
        if self.iters is not None:
            positive["iters"] = self.iters
        if self.lr is not None:
            positive["lr"] = self.lr
        for name, value in positive.items():
            if value <= 0:
                raise InputError(f"{name} must be positive; got {value}")
        for name in ("num_workers", "warmup_iters", "checkpoint_interval", "num_negatives"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0; got {getattr(self, name)}")
        if not 0.0 <= self.flip <= 1.0:
            raise InputError(f"flip must be a probability in [0, 1]; got {self.flip}")
        if self.fpn_channels % 32:
            raise InputError(
                f"fpn_channels must be a multiple of 32 (GroupNorm(32)); got {self.fpn_channels}"
            )
        if list(self.lr_steps) != sorted(self.lr_steps) or any(
            not 0.0 < s <= 1.0 for s in self.lr_steps
        ):
            raise InputError(
                f"lr_steps must be increasing fractions in (0, 1]; got {self.lr_steps}"
            )
        if self.predict_only and not self.checkpoint:
            raise InputError("--predict-only needs --checkpoint PATH (a selector.pt or last.pt)")
        if self.checkpoint and not self.predict_only:
            raise InputError("--checkpoint is only used with --predict-only")
        if self.checkpoint and not Path(self.checkpoint).is_file():
            raise InputError(f"checkpoint file not found: {self.checkpoint}")
        return self


def build_config(
    config_file: str | Path | None = None,
    opts: list[tuple[str, str]] | None = None,
    **cli: Any,
) -> SelectConfig:
    """Merge the defaults, an optional config file, the given settings and ``opts``; validated.

    ``cli`` keys are SelectConfig field names (leave out what is not given). Giving ``epochs`` without
    ``iters`` clears a config file's ``iters`` (``iters`` wins when set).
    """
    epochs_or_iters(cli)
    return resolve_config(SelectConfig, config_file, cli, opts)


def epochs_or_iters(given: dict[str, Any]) -> None:
    """``epochs`` and ``iters`` exclude each other (InputError); giving ``epochs`` sets ``iters`` to None in
    ``given`` so that it also clears a config file's ``iters``."""
    if "epochs" in given and given.get("iters") is not None:
        raise InputError("give --epochs or --iters, not both")
    if "epochs" in given:
        given["iters"] = None
