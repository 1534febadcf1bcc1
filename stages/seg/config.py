"""Typed configuration of ``sapnet train-seg`` (no detectron2 import, so the CLI can build it cheaply).

``None`` means "keep the value of the detectron2 config" (sapnet's defaults, then ``config_yaml``); ``opts`` are
applied last and win over everything. See :func:`stages.seg.d2.train.train_seg`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stages.common.devices import normalize_device
from stages.common.errors import InputError

BACKBONES = ("R50", "R101")


@dataclass
class TrainSegConfig:
    """Everything ``train_seg`` needs.

    Data:
        train_json: pseudo-label COCO JSON (RLE ``segmentation``, optional ``aux_segmentations``/``aux_weights``).
        images: directory the train JSON's ``file_name`` entries are relative to.
        out_dir: output directory (``model_final.pth``, ``config.yaml``, ``metrics.json``, ``eval/``).
        val_json, val_images: ground-truth COCO JSON to evaluate on (``val_images`` defaults to ``images``).
    Model / schedule (``None`` = keep the config value):
        config_yaml: a detectron2 YAML merged over sapnet's defaults; opts: ``KEY VALUE`` pairs merged last.
        backbone: "R50" or "R101"; weights: detectron2 ``.pkl``/``.pth`` or a torchvision ResNet state dict.
        iters: ``SOLVER.MAX_ITER`` (LR steps follow at 8/12 and 11/12); ims_per_batch: total batch size
        (linear LR/iteration scaling from 16); lr: ``SOLVER.BASE_LR`` after scaling; min_size, max_size:
        shorter/longer side for training and test.
        aux_masks: SAPNet MPS auxiliary Dice targets (``MODEL.SOLOV2.USE_AUX_MASKS``).
    Execution:
        num_gpus (per machine), num_machines, machine_rank, dist_url: detectron2 ``launch``; ignored under
        torchrun (``RANK``/``WORLD_SIZE`` set). device: auto | cpu | cuda | cuda:N (None = auto: cuda when
        available; see :mod:`stages.common.devices`).
        resume: continue from ``out_dir/last_checkpoint``. eval_only: evaluate ``checkpoint`` (default
        ``out_dir/model_final.pth``) on the val set without training.
    """

    train_json: Path
    images: Path
    out_dir: Path
    val_json: Path | None = None
    val_images: Path | None = None
    config_yaml: Path | None = None
    opts: list[str] = field(default_factory=list)
    backbone: str | None = None
    weights: str | None = None
    iters: int | None = None
    ims_per_batch: int | None = None
    lr: float | None = None
    min_size: int | None = None
    max_size: int | None = None
    num_gpus: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    device: str | None = None
    resume: bool = False
    eval_only: bool = False
    checkpoint: Path | None = None
    aux_masks: bool | None = None

    def __post_init__(self) -> None:
        for name in ("train_json", "images", "out_dir", "val_json", "val_images", "config_yaml"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        if self.checkpoint is not None:
            self.checkpoint = Path(self.checkpoint)
        if self.val_json is not None and self.val_images is None:
            self.val_images = self.images
        self.opts = [str(o) for o in self.opts]

    def validate(self) -> None:
        """Check values and that the input paths exist; raises :class:`InputError` naming the option."""
        if self.backbone is not None and self.backbone not in BACKBONES:
            raise InputError(f"--backbone must be one of {BACKBONES}, got {self.backbone!r}")
        normalize_device(self.device)
        for name in ("iters", "ims_per_batch", "min_size", "max_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if self.num_gpus < 1 or self.num_machines < 1:
            raise InputError("--num-gpus and --num-machines must be >= 1")
        if not 0 <= self.machine_rank < self.num_machines:
            raise InputError(
                f"--machine-rank must be in [0, {self.num_machines}), got {self.machine_rank}"
            )
        if self.num_machines > 1 and self.dist_url == "auto":
            raise InputError("--num-machines > 1 needs --dist-url tcp://HOST:PORT of machine 0")
        if len(self.opts) % 2:
            raise InputError(
                f"--opts needs KEY VALUE pairs, got an odd number of items: {self.opts}"
            )
        if self.eval_only and self.val_json is None:
            raise InputError("--eval-only needs --val (a ground-truth COCO JSON to evaluate on)")
        required = {"--train": self.train_json, "--images": self.images}
        optional = {
            "--val": self.val_json,
            "--val-images": self.val_images,
            "--config": self.config_yaml,
            "--checkpoint": self.checkpoint,
        }
        if self.weights is not None and "://" not in self.weights:
            optional["--weights"] = Path(self.weights)
        for option, path in {**required, **optional}.items():
            if path is not None and not Path(path).exists():
                raise InputError(f"{option}: {path} does not exist")

    def resolved_checkpoint(self) -> Path:
        """The checkpoint ``--eval-only`` evaluates: ``checkpoint`` or ``out_dir/model_final.pth``."""
        return self.checkpoint if self.checkpoint is not None else self.out_dir / "model_final.pth"
