"""`SelectConfig`: every setting of `sapnet select` (the SAPNet proposal selector), with METHOD.md defaults.

Sources, lowest priority first: the dataclass defaults (METHOD.md sections 2, 3, 4, 5, 9), a YAML/JSON config
file (``--config``), then the command-line options that were given. :func:`build_config` merges them and
:meth:`SelectConfig.validate` checks the result (InputError naming the option).

Ablation switches (paper Table 4; see ``ABLATIONS``)::

    mil1      --no-pdg --no-prm --no-pnpg --no-bms    PSM only
    +PDG      --no-prm --no-pnpg --no-bms             PSM with point-distance guidance
    +mil2     --no-pnpg --no-bms                      + PRM over the M SAM proposals only (no PPG, no NPG)
    +PNPG     --no-bms                                + PPG positives (M + 20 bag) and NPG negatives
    +BMS      (defaults)                              + box mining on the PRM pick (the full selector)

``--no-pnpg`` switches off both halves of PNPG; the config file may switch them separately with
``use_ppg`` / ``use_npg`` (paper Table 6).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common.config import apply_overrides, load_config_file
from stages.common.devices import normalize_device
from stages.common.errors import InputError

BACKBONES = ("resnet50", "resnet18")
PDG_MODES = ("logits", "paper")
PPG_BASES = ("code", "psm")
TOP1_BOXES = ("weighted", "exact")
HEAD_INITS = ("normal", "xavier")
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
    """Settings of one `sapnet select` run.

    Paths: ``store`` (proposal store from `sapnet propose`), ``images`` (folder with the store's images),
    ``out`` (run directory), ``config`` (the config file that was read, if any), ``checkpoint`` (weights for
    ``predict_only``).

    Model: ``backbone`` resnet50 | resnet18; ``weights`` "imagenet" (torchvision weights, downloaded or from
    the torch cache), "none" (random init) or a path to a state dict of the backbone (or of the whole
    selector); ``fpn_channels`` 256 and ``fc_dim`` 1024 (METHOD 2, 3.1).

    Schedule (METHOD 9): ``epochs`` 12 or ``iters`` (when set, it wins); ``batch_size`` images per process;
    ``lr`` None = 0.015 x total batch / 32; ``momentum`` 0.9, ``weight_decay`` 1e-4, ``grad_clip`` 35 (L2),
    ``warmup_iters`` 500 from ``warmup_ratio`` 0.001, x0.1 steps at ``lr_steps`` = fractions 8/12 and 11/12
    of the run (epochs 8 and 11 of 12), ``flip`` 0.5.

    Method switches: ``use_pdg``, ``use_prm``, ``use_ppg``, ``use_npg``, ``use_bms``; ``pdg_mode`` "logits"
    (code: class logits x S^d in the PSM loss) or "paper" (S^d multiplied into S_cls * S_ins, also for the
    PSM pick); ``pdg_power`` d = 1/64, ``pdg_distance_power`` 0.5; ``num_negatives`` 500 background negatives per
    image; BMS ``bms_t1`` 0.6, ``bms_t2`` 0.3.

    Official-code behaviour (defaults) and the cleaner variants (docs/method.md, "Official behaviour"):
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

    store: str = ""
    images: str = ""
    out: str = ""
    config: str | None = None
    backbone: str = "resnet50"
    weights: str = "imagenet"
    fpn_channels: int = 256
    fc_dim: int = 1024
    epochs: int = 12
    iters: int | None = None
    batch_size: int = 4
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 35.0
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    lr_steps: tuple[float, ...] = (8 / 12, 11 / 12)
    lr_gamma: float = 0.1
    flip: float = 0.5
    short_side: int = 800
    max_size: int = 1333
    use_pdg: bool = True
    use_prm: bool = True
    use_ppg: bool = True
    use_npg: bool = True
    use_bms: bool = True
    pdg_mode: str = "logits"
    pdg_power: float = 1.0 / 64.0
    pdg_distance_power: float = 0.5
    ppg_base: str = "code"
    top1_box: str = "weighted"
    head_init: str = "normal"
    psm_normalise: str = "valid-bags"
    num_negatives: int = 500
    bms_t1: float = 0.6
    bms_t2: float = 0.3
    device: str = "auto"
    seed: int = 0
    num_workers: int = 2
    resume: bool = False
    predict_only: bool = False
    checkpoint: str | None = None
    checkpoint_interval: int = 0
    progress: bool = True

    def base_lr(self, world_size: int = 1) -> float:
        """The lr actually used: ``lr`` if given, else 0.015 scaled linearly by the total batch / 32."""
        if self.lr is not None:
            return float(self.lr)
        return REFERENCE_LR * self.batch_size * world_size / REFERENCE_BATCH

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
        """InputError naming the first bad option; returns self."""
        if not self.store:
            raise InputError("--store is required (a proposal store made by `sapnet propose`)")
        if not self.images:
            raise InputError("--images is required (the folder holding the store's images)")
        if not self.out:
            raise InputError("--out is required (the run directory)")
        choices = {
            "backbone": BACKBONES,
            "pdg_mode": PDG_MODES,
            "ppg_base": PPG_BASES,
            "top1_box": TOP1_BOXES,
            "head_init": HEAD_INITS,
            "psm_normalise": PSM_NORMALISE,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
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
        if not self.use_prm:  # PNPG only feeds the PRM stage: --no-prm implies --no-pnpg
            self.use_ppg = self.use_npg = False
        return self


def _normalise_file_keys(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Config-file keys may use dashes; ``use_pnpg`` sets both ``use_ppg`` and ``use_npg``."""
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    if "use_pnpg" in out:
        both = out.pop("use_pnpg")
        if not isinstance(both, bool):
            raise InputError(f"use_pnpg in {source} must be true or false; got {both!r}")
        out.setdefault("use_ppg", both)
        out.setdefault("use_npg", both)
    if "lr_steps" in out and isinstance(out["lr_steps"], list):
        out["lr_steps"] = tuple(out["lr_steps"])
    return out


def _check_types(overrides: dict[str, Any], source: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(SelectConfig)}
    for name, value in overrides.items():
        if name not in fields:
            continue  # apply_overrides names unknown options
        default = fields[name].default
        if value is None or default is None or isinstance(default, str | tuple):
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise InputError(f"{name} in {source} must be true or false; got {value!r}")
        elif isinstance(default, int | float) and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise InputError(f"{name} in {source} must be a number; got {value!r}")


def build_config(config_file: str | Path | None = None, **cli: Any) -> SelectConfig:
    """Merge the defaults, an optional config file and the CLI options that are not None; validated.

    ``cli`` keys are SelectConfig field names; a value of None means "not given on the command line".
    Giving ``iters`` on either level clears a lower-level ``epochs`` choice (``iters`` wins when set).
    """
    cfg = SelectConfig()
    if config_file is not None:
        data = _normalise_file_keys(load_config_file(config_file), str(config_file))
        data.pop("config", None)
        _check_types(data, str(config_file))
        cfg = apply_overrides(cfg, data, source=f"config file {config_file}")
        cfg.config = str(config_file)
    given = {k: v for k, v in cli.items() if v is not None}
    if "epochs" in given and "iters" not in given:
        given["iters"] = None
    _check_types(given, "the command line")
    cfg = apply_overrides(cfg, given, source="the command line")
    if isinstance(cfg.lr_steps, list):
        cfg.lr_steps = tuple(cfg.lr_steps)
    return cfg.validate()
