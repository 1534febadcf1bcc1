"""``train_seg``: train (or evaluate) SOLOv2 on pseudo labels with detectron2, on CPU, one or many GPUs.

Outputs in ``out_dir`` (rank 0 writes): ``model_final.pth`` (+ periodic ``model_XXXXXXX.pth`` and
``last_checkpoint``), ``config.yaml`` (the resolved detectron2 config), ``metrics.json`` (detectron2's JSON
lines: losses, lr, timings every 20 iterations and the final evaluation), ``log.txt``, and with a validation
set ``eval/coco_eval.json`` + ``eval/coco_eval.md`` (mask and box AP, AP50, AP75, APs, APm, APl) next to
detectron2's ``coco_instances_results.json``.

Processes: ``num_gpus x num_machines > 1`` uses detectron2's ``launch`` (it spawns one process per GPU);
under torchrun (``RANK``/``WORLD_SIZE`` set) the process group is initialised from the environment instead
(:func:`stages.common.devices.process_group`, plus detectron2's per-machine group). Multi-process runs need
CUDA; the device follows :mod:`stages.common.devices` (default: cuda when available).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from stages.common.config import save_resolved_config
from stages.common.devices import DistInfo, dist_info, process_group, require_gpus, resolve_device
from stages.common.errors import InputError, TrainingError
from stages.common.io import atomic_write_bytes, check_output_path, ensure_dir
from stages.seg.config import TrainSegConfig
from stages.seg.d2 import compat

compat.apply()

import detectron2.utils.comm as comm  # noqa: E402
from detectron2.config import CfgNode  # noqa: E402
from detectron2.data import build_detection_test_loader, build_detection_train_loader  # noqa: E402
from detectron2.engine import DefaultTrainer, launch  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.events import CommonMetricPrinter, JSONWriter  # noqa: E402

import stages.seg.d2.meta_arch  # noqa: E402,F401  (registers the SOLOv2 meta-architecture)
from stages.seg.d2.checkpoint import (  # noqa: E402
    AtomicCheckpointer,
    check_resume,
    load_mapped,
    verify_checkpoint,
)
from stages.seg.d2.config import (  # noqa: E402
    BACKBONE_DEPTHS,
    get_sapnet_cfg,
    scale_schedule,
    set_max_iter,
    solov2_config_from_cfg,
)
from stages.seg.d2.data import register_datasets  # noqa: E402
from stages.seg.d2.evaluation import EVAL_JSON, build_coco_evaluator, write_eval_files  # noqa: E402
from stages.seg.d2.mapper import SOLOv2DatasetMapper  # noqa: E402
from stages.seg.d2.solver import build_optimizer  # noqa: E402
from stages.seg.d2.weights import resolve_weights  # noqa: E402

logger = logging.getLogger(__name__)
TRAIN_NAME = "sapnet_pseudo_train"
VAL_NAME = "sapnet_val"
_LOGGERS = ("detectron2", "fvcore", "stages")


class Trainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` with the SOLOv2 mapper, COCO segm+bbox evaluation (no fast C++ path),
    full-model gradient clipping and console + ``metrics.json`` writers (+ TensorBoard when installed)."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=SOLOv2DatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=SOLOv2DatasetMapper(cfg, False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_coco_evaluator(dataset_name, output_folder or Path(cfg.OUTPUT_DIR) / "eval")

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    def build_hooks(self):
        # Called by DefaultTrainer.__init__ after it made its checkpointer: swap in the atomic one first, so
        # the PeriodicCheckpointer hook built below saves through it as well.
        self.checkpointer = AtomicCheckpointer(
            self.checkpointer.model,
            self.checkpointer.save_dir,
            **self.checkpointer.checkpointables,
        )
        return super().build_hooks()

    def build_writers(self):
        writers = [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(str(Path(self.cfg.OUTPUT_DIR) / "metrics.json")),
        ]
        try:
            from detectron2.utils.events import TensorboardXWriter

            writers.append(TensorboardXWriter(self.cfg.OUTPUT_DIR))
        except ImportError:  # tensorboard is optional
            pass
        return writers


def build_cfg(
    config: TrainSegConfig,
    num_classes: int,
    has_val: bool,
    weights: str | None = None,
    device: str | None = None,
) -> CfgNode:
    """The frozen detectron2 config: sapnet defaults < ``--config`` YAML < explicit options < ``--opts``.

    ``num_classes``, the dataset names, ``OUTPUT_DIR`` and (when given) ``weights`` are set last.
    ``MODEL.DEVICE`` is ``device``, else ``config.device`` resolved by :mod:`stages.common.devices`.

    Raises:
        InputError: unreadable YAML, unknown keys in ``--opts``, or values the SOLOv2 head rejects.
    """
    cfg = get_sapnet_cfg()
    if config.config_yaml is not None:
        try:
            cfg.merge_from_file(str(config.config_yaml))
        except Exception as exc:  # noqa: BLE001 - yacs raises KeyError/AssertionError/YAMLError
            raise InputError(f"--config {config.config_yaml}: cannot merge ({exc})") from exc
    if config.backbone is not None:
        cfg.MODEL.RESNETS.DEPTH = BACKBONE_DEPTHS[config.backbone]
    if config.ims_per_batch is not None:
        scale_schedule(cfg, config.ims_per_batch)
    if config.iters is not None:
        set_max_iter(cfg, config.iters)
    if config.lr is not None:
        cfg.SOLVER.BASE_LR = float(config.lr)
    if config.min_size is not None:
        cfg.INPUT.MIN_SIZE_TRAIN = (config.min_size,)
        cfg.INPUT.MIN_SIZE_TEST = config.min_size
    if config.max_size is not None:
        cfg.INPUT.MAX_SIZE_TRAIN = config.max_size
        cfg.INPUT.MAX_SIZE_TEST = config.max_size
    cfg.MODEL.DEVICE = device if device is not None else str(resolve_device(config.device))
    if config.aux_masks is not None:
        cfg.MODEL.SOLOV2.USE_AUX_MASKS = bool(config.aux_masks)
    if config.opts:
        try:
            cfg.merge_from_list(list(config.opts))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"--opts {' '.join(config.opts)}: {exc}") from exc
    if int(cfg.MODEL.SOLOV2.NUM_CLASSES) not in (80, num_classes):
        logger.warning(
            "MODEL.SOLOV2.NUM_CLASSES replaced by the %d classes of the training set", num_classes
        )
    cfg.MODEL.SOLOV2.NUM_CLASSES = int(num_classes)
    cfg.DATASETS.TRAIN = (TRAIN_NAME,)
    cfg.DATASETS.TEST = (VAL_NAME,) if has_val else ()
    cfg.OUTPUT_DIR = str(config.out_dir)
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    try:
        solov2_config_from_cfg(cfg)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    cfg.freeze()
    return cfg


@contextmanager
def _log_to_file(out_dir: Path, enabled: bool):
    """Copy the detectron2/fvcore/sapnet logs to ``out_dir/log.txt`` (rank 0) for the duration."""
    if not enabled:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out_dir / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    touched = []
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            touched.append((lg, lg.level))
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for name in _LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        for lg, level in touched:
            lg.setLevel(level)
        handler.close()


def _worker(cfg: CfgNode, config: TrainSegConfig) -> None:
    """Body run by every process: register data, train or evaluate, rank 0 writes the outputs."""
    rank = comm.get_rank()
    out_dir = Path(cfg.OUTPUT_DIR)
    register_datasets(
        config.train_json,
        config.images,
        config.val_json,
        config.val_images,
        TRAIN_NAME,
        VAL_NAME,
        validate=False,
    )
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    with _log_to_file(out_dir, rank == 0):
        if rank == 0:
            atomic_write_bytes(out_dir / "config.yaml", cfg.dump().encode("utf-8"))
            logger.info("detectron2 install: %s", compat.describe_install())
        if config.eval_only:
            model = Trainer.build_model(cfg)
            checkpoint = config.resolved_checkpoint()
            AtomicCheckpointer(model, save_dir=str(out_dir)).load(str(checkpoint))
            results = Trainer.test(cfg, model)
            iterations = None
        else:
            trainer = Trainer(cfg)
            trainer.resume_or_load(resume=config.resume)
            if config.resume and trainer.start_iter >= cfg.SOLVER.MAX_ITER:
                logger.warning(
                    "resumed at iteration %d >= SOLVER.MAX_ITER %d: nothing to train (raise --iters)",
                    trainer.start_iter,
                    cfg.SOLVER.MAX_ITER,
                )
            trainer.train()
            results = getattr(trainer, "_last_eval_results", None)  # set by the final EvalHook
            checkpoint = out_dir / "model_final.pth"
            _ensure_final_model(trainer, checkpoint, rank)
            iterations = int(trainer.iter)  # == max_iter after a complete run
        if rank == 0 and cfg.DATASETS.TEST and results:
            write_eval_files(
                results,
                out_dir / "eval",
                {
                    "dataset": str(config.val_json),
                    "images": str(config.val_images),
                    "checkpoint": str(checkpoint),
                    "iterations": iterations,
                },
            )
    comm.synchronize()


def _create_local_process_group(local_world_size: int) -> None:
    """detectron2's per-machine process group (``comm.create_local_process_group`` where it exists)."""
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(local_world_size)
        return
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    for machine in range(world // local_world_size):
        ranks = list(range(machine * local_world_size, (machine + 1) * local_world_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            comm._LOCAL_PROCESS_GROUP = group


def _torchrun_worker(
    cfg: CfgNode, config: TrainSegConfig, info: DistInfo, device: torch.device
) -> None:
    """This process's part of a torchrun run (a single process when ``WORLD_SIZE`` is 1)."""
    with process_group(device, info) as initialised:
        if initialised:
            _create_local_process_group(info.local_world_size)
            comm.synchronize()
        _worker(cfg, config)


def _ensure_final_model(trainer: Trainer, final: Path, rank: int) -> None:
    """Write ``model_final.pth`` when training is complete but the file is missing or unreadable.

    A run killed while writing its final model has its last periodic checkpoint at ``max_iter``; resuming
    it trains nothing, so detectron2 never writes the final model again. It is written here from the
    resumed weights (rank 0), so a successful exit always leaves a loadable ``model_final.pth``.
    """
    if rank != 0:
        return
    try:
        verify_checkpoint(final, "final model")
    except TrainingError:
        logger.info("training is complete but %s is missing or broken: writing it", final)
        # The same fields as detectron2's PeriodicCheckpointer gives it (0-based last iteration).
        trainer.checkpointer.save("model_final", iteration=int(trainer.max_iter) - 1)


def _checkpoint_iteration(path: Path) -> int | None:
    """Iterations a detectron2 checkpoint has trained (its saved 0-based ``iteration`` + 1), or None."""
    if not path.is_file():
        return None
    try:
        data = load_mapped(path)
        it = data.get("iteration", (data.get("trainer") or {}).get("iteration"))
        return None if it is None else int(it) + 1
    except Exception:  # noqa: BLE001 - any unreadable file means "unknown"
        return None


def _iterations_done(metrics: Path) -> int | None:
    """Iterations trained so far in ``out_dir`` (last logged 0-based iteration + 1), from ``metrics.json``."""
    if not metrics.is_file():
        return None
    last = None
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "total_loss" in record:  # a training line (evaluation lines carry no losses)
            last = int(record["iteration"])
    return None if last is None else last + 1


def _summary(cfg: CfgNode, config: TrainSegConfig, num_classes: int) -> dict[str, Any]:
    out_dir = Path(cfg.OUTPUT_DIR)
    eval_file = out_dir / "eval" / EVAL_JSON
    final = out_dir / "model_final.pth"
    return {
        "out_dir": str(out_dir),
        "mode": "eval-only" if config.eval_only else ("resume" if config.resume else "train"),
        "model_final": str(final) if final.is_file() else None,
        "config": str(out_dir / "config.yaml"),
        "metrics": str(out_dir / "metrics.json"),
        "iterations_done": _iterations_done(out_dir / "metrics.json")
        or _checkpoint_iteration(final),
        "max_iter": int(cfg.SOLVER.MAX_ITER),
        "num_classes": num_classes,
        "device": cfg.MODEL.DEVICE,
        "weights": cfg.MODEL.WEIGHTS,
        "eval": json.loads(eval_file.read_text(encoding="utf-8"))["metrics"]
        if eval_file.is_file()
        else None,
        "eval_files": [str(p) for p in sorted((out_dir / "eval").glob("coco_eval.*"))],
        "detectron2": compat.describe_install(),
    }


def train_seg(config: TrainSegConfig) -> dict[str, Any]:
    """Train SOLOv2 on ``config.train_json`` (or only evaluate a checkpoint) and write the outputs.

    Returns a summary: output paths, ``iterations_done``, ``max_iter``, ``eval`` (``{task: {metric: value}}``
    or None), the detectron2 install description.

    Raises:
        InputError: bad options or input files (checked before any model is built).
        DependencyError: detectron2 missing or unusable; DeviceUnavailableError (a DependencyError) for a
            CUDA device or GPU count this machine lacks.
        TrainingError: non-finite loss, out of memory, a worker process failed.
    """
    config.validate()
    if config.eval_only and not config.resolved_checkpoint().is_file():
        raise InputError(f"--eval-only: checkpoint {config.resolved_checkpoint()} does not exist")
    check_output_path(config.out_dir, "dir", "output folder (--out)")
    # Broken checkpoints are refused here, before anything in --out (config.yaml, logs) is written.
    if config.eval_only:
        verify_checkpoint(config.resolved_checkpoint(), "--eval-only checkpoint")
    elif config.resume:
        check_resume(config.out_dir)
    info = dist_info()
    world = info.world_size if info.torchrun else config.num_gpus * config.num_machines
    device = resolve_device(config.device, info)
    if world > 1 and device.type != "cuda":
        raise InputError(
            f"{world} processes requested but device is {device}: multi-process training needs CUDA"
        )
    if not info.torchrun and config.num_gpus > 1:
        require_gpus(config.num_gpus)
    # detectron2's launch and torchrun set each process's current GPU: a bare "cuda" then means that one.
    d2_device = device.type if world > 1 else str(device)
    datasets = register_datasets(
        config.train_json, config.images, config.val_json, config.val_images, TRAIN_NAME, VAL_NAME
    )
    ensure_dir(config.out_dir, "output folder (--out)")
    if info.rank == 0:
        save_resolved_config(config, config.out_dir / "sapnet-config.yaml")
    weights = None
    if not config.eval_only:
        preliminary = build_cfg(
            config, datasets["num_classes"], datasets["val"] is not None, device=d2_device
        )
        requested = config.weights if config.weights is not None else preliminary.MODEL.WEIGHTS
        # Under torchrun only rank 0 writes a converted file; the others reach the checkpoint loading after
        # the process-group barrier, so the file is there by then.
        weights = resolve_weights(
            requested, config.out_dir, preliminary.INPUT.FORMAT, write=info.is_main
        )
    cfg = build_cfg(
        config, datasets["num_classes"], datasets["val"] is not None, weights, device=d2_device
    )
    if int(cfg.SOLVER.IMS_PER_BATCH) % world:
        raise InputError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes"
        )
    logger.info(
        "train-seg: %s, %d classes, %s, max_iter %d, batch %d, lr %g, device %s, %d process(es)",
        "eval-only" if config.eval_only else "training",
        datasets["num_classes"],
        config.train_json,
        cfg.SOLVER.MAX_ITER,
        cfg.SOLVER.IMS_PER_BATCH,
        cfg.SOLVER.BASE_LR,
        cfg.MODEL.DEVICE,
        world,
    )
    try:
        if info.torchrun:
            _torchrun_worker(cfg, config, info, device)
        else:
            launch(
                _worker,
                config.num_gpus,
                num_machines=config.num_machines,
                machine_rank=config.machine_rank,
                dist_url=config.dist_url,
                args=(cfg, config),
            )
    except FloatingPointError as exc:
        raise TrainingError(
            f"training diverged ({exc}); lower --lr or check the pseudo labels"
        ) from exc
    except torch.OutOfMemoryError as exc:
        raise TrainingError(f"out of memory ({exc}); lower --ims-per-batch or --min-size") from exc
    except torch.multiprocessing.ProcessRaisedException as exc:
        raise TrainingError(f"a training process failed:\n{exc}") from exc
    return _summary(cfg, config, datasets["num_classes"])
