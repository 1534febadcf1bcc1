"""`sapnet train-seg`: train SOLOv2 (detectron2) on pseudo masks, evaluate on a ground-truth COCO JSON.

The options are the fields of :class:`stages.seg.config.TrainSegConfig` (see :mod:`sapnet_cli.options`);
``--opts`` pairs whose key is not a sapnet setting are detectron2 keys (``--opts SOLVER.BASE_LR 0.02``),
applied last to the detectron2 config. This module only parses options, calls
:func:`stages.seg.d2.train.train_seg` and reports; detectron2 is imported when the command runs, so
`sapnet --help` works without it.
"""

from __future__ import annotations

import typer

from sapnet_cli.options import config_command
from stages.seg.config import TrainSegConfig


def _run(cfg: TrainSegConfig) -> None:
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


train_seg = config_command(
    TrainSegConfig,
    _run,
    doc="Train the SOLOv2 instance segmenter on pseudo masks (detectron2), then evaluate on --val.\n\n"
    "Works on CPU (small runs), one or many GPUs (--num-gpus, --num-machines) and under torchrun.",
    passthrough_opts="opts",
)
