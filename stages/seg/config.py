"""Typed configuration of ``sapnet train-seg`` (no detectron2 import, so the CLI can build it cheaply).

Two levels: this dataclass holds sapnet's settings (merged like every stage's: defaults < ``--config`` <
options < ``--opts``); the detectron2 config it drives is built by :func:`stages.seg.d2.train.build_cfg`
from sapnet's detectron2 defaults, then ``config_yaml``, then the fields that are not None here (``None``
means "keep the detectron2 value"), then ``opts`` (detectron2 ``KEY VALUE`` pairs), which win over everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stages.common.config import option
from stages.common.devices import normalize_device
from stages.common.errors import InputError

BACKBONES = ("R50", "R101")
# The reference schedule and input size (SOLOv2 1x, mmdetection solov2_r50_fpn_1x / AdelaiDet), written once:
# :func:`stages.seg.d2.config.get_sapnet_cfg` builds the detectron2 defaults from these.
DEFAULT_BACKBONE = "R50"
BACKBONE_DEPTHS = {"R50": 50, "R101": 101}
REFERENCE_BATCH = 16
REFERENCE_LR = 0.01
REFERENCE_MAX_ITER = 90000
"""1x schedule at 16 images per batch (= 12 COCO epochs)."""
STEP_FRACTIONS = (8 / 12, 11 / 12)
"""LR steps (x0.1) at epochs 8 and 11 of 12."""
MIN_SIZE = 800
MAX_SIZE = 1333


@dataclass
class TrainSegConfig:
    """Everything ``train_seg`` needs (each field's help text is its ``--help`` line).

    Data:
        train_json: pseudo-label COCO JSON (RLE ``segmentation``, optional ``aux_segmentations``/``aux_weights``).
        images: directory the train JSON's ``file_name`` entries are relative to.
        out_dir: output directory (``model_final.pth``, ``config.yaml``, ``metrics.json``, ``eval/``).
        val_json, val_images: ground-truth COCO JSON to evaluate on (``val_images`` defaults to ``images``).
    Model / schedule (``None`` = keep the detectron2 config's value):
        config_yaml: a detectron2 YAML merged over sapnet's defaults; opts: detectron2 ``KEY VALUE`` pairs
        merged last (``--opts`` pairs whose key is not a sapnet setting, e.g. ``SOLVER.BASE_LR``).
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

    train_json: Path = option(
        help="Pseudo-label COCO JSON from `sapnet export-pseudo` (RLE masks, optional aux masks).",
        flag="--train",
        metavar="PATH",
    )
    images: Path = option(
        help="Folder holding the training images' file_name paths.", metavar="DIR"
    )
    out_dir: Path = option(
        help="Output folder: model_final.pth, config.yaml (detectron2), sapnet-config.yaml, "
        "metrics.json, log.txt, eval/coco_eval.{json,md}.",
        flag="--out",
        metavar="DIR",
    )
    val_json: Path | None = option(
        None,
        "Ground-truth COCO JSON to evaluate on (mask and box AP) after training.",
        flag="--val",
        metavar="PATH",
    )
    val_images: Path | None = option(
        None, "Folder of the --val images (default: --images).", metavar="DIR"
    )
    config_yaml: Path | None = option(
        None,
        "detectron2 YAML merged over sapnet's detectron2 defaults (MODEL.SOLOV2.* keys as in "
        "AdelaiDet). detectron2 keys can also be given with --opts, e.g. --opts SOLVER.CHECKPOINT_PERIOD "
        "1000 TEST.EVAL_PERIOD 5000.",
        flag="--d2-config",
        metavar="PATH",
    )
    opts: list[str] = field(default_factory=list)
    backbone: str | None = option(
        None, f"ResNet-FPN backbone (default: {DEFAULT_BACKBONE}).", choices=BACKBONES
    )
    weights: str | None = option(
        None,
        "Initial weights: detectron2 .pkl/.pth, or a torchvision ImageNet ResNet state dict "
        "(converted). None: random initialisation (a warning is logged).",
    )
    iters: int | None = option(
        None,
        f"Training iterations (default {REFERENCE_MAX_ITER} at batch {REFERENCE_BATCH} = 1x); LR steps "
        "at 8/12 and 11/12 of them.",
    )
    ims_per_batch: int | None = option(
        None,
        f"Images per iteration over all GPUs (default {REFERENCE_BATCH}); LR and iterations are scaled "
        "linearly.",
    )
    lr: float | None = option(
        None, f"Base learning rate (default {REFERENCE_LR} x ims-per-batch / {REFERENCE_BATCH})."
    )
    min_size: int | None = option(
        None, f"Shorter image side for training and test (default {MIN_SIZE})."
    )
    max_size: int | None = option(
        None, f"Longer image side limit for training and test (default {MAX_SIZE})."
    )
    num_gpus: int = option(1, "GPUs per machine (detectron2 launch, one process each).")
    num_machines: int = option(1, "Machines taking part.")
    machine_rank: int = option(0, "Rank of this machine (0-based).")
    dist_url: str = option(
        "auto",
        "Rendezvous URL for several machines, e.g. tcp://HOST:PORT ('auto' = a free local port). "
        "Under torchrun, RANK/WORLD_SIZE/LOCAL_RANK are used instead of these four options.",
    )
    device: str | None = option(
        None, "auto (cuda when available, else cpu; default) | cpu | cuda | cuda:N."
    )
    resume: bool = option(
        False,
        "Continue from --out/last_checkpoint (iterations, optimizer, schedule).",
        flag="--resume",
    )
    eval_only: bool = option(
        False, "Only evaluate --checkpoint on --val; no training.", flag="--eval-only"
    )
    checkpoint: Path | None = option(
        None, "Checkpoint for --eval-only (default: --out/model_final.pth).", metavar="PATH"
    )
    aux_masks: bool | None = option(
        None,
        "Use the pseudo labels' aux_segmentations as extra Dice targets (SAPNet MPS; default on).",
    )

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
            raise InputError(
                f"backbone (--backbone) must be one of {BACKBONES}, got {self.backbone!r}"
            )
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
            "--d2-config": self.config_yaml,
            "--checkpoint": self.checkpoint,
        }
        if self.weights is not None and "://" not in self.weights:
            optional["--weights"] = Path(self.weights)
        for name, path in {**required, **optional}.items():
            if path is not None and not Path(path).exists():
                raise InputError(f"{name}: {path} does not exist")

    def resolved_checkpoint(self) -> Path:
        """The checkpoint ``--eval-only`` evaluates: ``checkpoint`` or ``out_dir/model_final.pth``."""
        return self.checkpoint if self.checkpoint is not None else self.out_dir / "model_final.pth"
