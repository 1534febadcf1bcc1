"""`sapnet train-seg`: train SOLOv2 (detectron2) on pseudo masks, evaluate on a ground-truth COCO JSON.

Only parses options, calls :func:`stages.seg.d2.train.train_seg` and reports; detectron2 is imported when the
command runs, so `sapnet --help` works without it.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from stages.seg.config import TrainSegConfig

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$")


def merge_opts(opts: list[str], rest: list[str]) -> list[str]:
    """Rebuild detectron2 ``KEY VALUE`` overrides from ``--opts`` values and the tokens that followed them.

    Click gives ``--opts`` one value each time and leaves the following tokens as positional arguments:
    ``--opts A 1 B 2`` -> opts ``[A]``, rest ``[1, B, 2]``; ``--opts A 1 --opts B 2`` -> ``[A, B]``, ``[1, 2]``.
    ``KEY=VALUE`` tokens are split. Raises ``typer.BadParameter`` when the grouping is ambiguous.
    """
    if len(opts) <= 1:
        tokens = [*opts, *rest]
    elif not rest:
        tokens = list(opts)
    elif len(rest) == len(opts):
        tokens = [t for pair in zip(opts, rest, strict=True) for t in pair]
    else:
        raise typer.BadParameter(
            "give the overrides after one --opts (--opts KEY VALUE KEY VALUE ...) or one pair per --opts",
            param_hint="--opts",
        )
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        key, eq, value = token.partition("=")
        if eq and _KEY.match(key):
            out += [key, value]
            i += 1
            continue
        if i + 1 >= len(tokens):
            raise typer.BadParameter(
                f"'{token}' has no value (KEY VALUE pairs)", param_hint="--opts"
            )
        out += [token, tokens[i + 1]]
        i += 2
    return out


def train_seg(
    train: Path = typer.Option(
        ...,
        "--train",
        help="Pseudo-label COCO JSON from `sapnet export-pseudo` (RLE masks, optional aux masks).",
    ),
    images: Path = typer.Option(
        ..., "--images", help="Folder holding the training images' file_name paths."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output folder: model_final.pth, config.yaml, metrics.json, log.txt, eval/coco_eval.{json,md}.",
    ),
    val: Path | None = typer.Option(
        None,
        "--val",
        help="Ground-truth COCO JSON to evaluate on (mask and box AP) after training.",
    ),
    val_images: Path | None = typer.Option(
        None, "--val-images", help="Folder of the --val images (default: --images)."
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="detectron2 YAML merged over sapnet's defaults (MODEL.SOLOV2.* keys as in AdelaiDet).",
    ),
    opts: list[str] = typer.Option(
        [],
        "--opts",
        help="detectron2 config overrides, applied last: --opts KEY VALUE [KEY VALUE ...] (or KEY=VALUE; "
        "write negative numbers as KEY=-1), e.g. --opts SOLVER.CHECKPOINT_PERIOD 1000 TEST.EVAL_PERIOD 5000.",
    ),
    opts_values: list[str] | None = typer.Argument(
        None,
        metavar="[KEY VALUE]...",
        help="The KEY VALUE tokens that follow --opts.",
        show_default=False,
    ),
    backbone: str | None = typer.Option(
        None, "--backbone", help="R50 | R101 ResNet-FPN backbone (default: R50)."
    ),
    weights: str | None = typer.Option(
        None,
        "--weights",
        help="Initial weights: detectron2 .pkl/.pth, or a torchvision ImageNet ResNet state dict (converted). "
        "None: random initialisation (a warning is logged).",
    ),
    iters: int | None = typer.Option(
        None,
        "--iters",
        help="Training iterations (default 90000 at batch 16 = 1x); LR steps at 8/12 and 11/12 of them.",
    ),
    ims_per_batch: int | None = typer.Option(
        None,
        "--ims-per-batch",
        help="Images per iteration over all GPUs (default 16); LR and iterations are scaled linearly.",
    ),
    lr: float | None = typer.Option(
        None, "--lr", help="Base learning rate (default 0.01 x ims-per-batch / 16)."
    ),
    min_size: int | None = typer.Option(
        None, "--min-size", help="Shorter image side for training and test (default 800)."
    ),
    max_size: int | None = typer.Option(
        None, "--max-size", help="Longer image side limit for training and test (default 1333)."
    ),
    num_gpus: int = typer.Option(
        1, "--num-gpus", help="GPUs per machine (detectron2 launch, one process each)."
    ),
    num_machines: int = typer.Option(1, "--num-machines", help="Machines taking part."),
    machine_rank: int = typer.Option(0, "--machine-rank", help="Rank of this machine (0-based)."),
    dist_url: str = typer.Option(
        "auto",
        "--dist-url",
        help="Rendezvous URL for several machines, e.g. tcp://HOST:PORT ('auto' = a free local port). "
        "Under torchrun, RANK/WORLD_SIZE/LOCAL_RANK are used instead of these four options.",
    ),
    device: str | None = typer.Option(
        None,
        "--device",
        help="auto (cuda when available, else cpu; default) | cpu | cuda | cuda:N.",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from --out/last_checkpoint (iterations, optimizer, schedule).",
    ),
    eval_only: bool = typer.Option(
        False, "--eval-only", help="Only evaluate --checkpoint on --val; no training."
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="Checkpoint for --eval-only (default: --out/model_final.pth).",
    ),
    aux_masks: bool | None = typer.Option(
        None,
        "--aux-masks/--no-aux-masks",
        help="Use the pseudo labels' aux_segmentations as extra Dice targets (SAPNet MPS; default on).",
    ),
) -> None:
    """Train the SOLOv2 instance segmenter on pseudo masks (detectron2), then evaluate on --val.

    Works on CPU (small runs), one or many GPUs (--num-gpus, --num-machines) and under torchrun.
    """
    cfg = TrainSegConfig(
        train_json=train,
        images=images,
        out_dir=out,
        val_json=val,
        val_images=val_images,
        config_yaml=config,
        opts=merge_opts(list(opts), list(opts_values or [])),
        backbone=backbone,
        weights=weights,
        iters=iters,
        ims_per_batch=ims_per_batch,
        lr=lr,
        min_size=min_size,
        max_size=max_size,
        num_gpus=num_gpus,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        device=device,
        resume=resume,
        eval_only=eval_only,
        checkpoint=checkpoint,
        aux_masks=aux_masks,
    )
    cfg.validate()
    from stages.seg.d2.train import train_seg as run_train_seg

    summary = run_train_seg(cfg)
    d2 = summary["detectron2"]
    typer.echo(
        f"train-seg ({summary['mode']}): {summary['out_dir']}  iterations {summary['iterations_done']}"
        f"/{summary['max_iter']}  device {summary['device']}  detectron2 {d2['version']} ({d2['route']})"
    )
    if summary["model_final"]:
        typer.echo(f"  model: {summary['model_final']}")
    for task, metrics in (summary["eval"] or {}).items():
        values = "  ".join(
            f"{k} {'-' if metrics.get(k) is None else format(metrics[k], '.2f')}"
            for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")
        )
        typer.echo(f"  {task}: {values}")
    for path in summary["eval_files"]:
        typer.echo(f"  report: {path}")
