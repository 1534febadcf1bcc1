"""Selector inference over a whole store (docs/method.md §8, §9): PSM and PRM picks, BMS, final proposal.

Per object, no flip, in ``torch.inference_mode()``:

- ``psm_scores (M,)`` = the GT-class selection scores of stage 0 and ``psm_top1`` their argmax;
- with PRM: the bag ``[M proposals, 20 PPG boxes]`` (or the M proposals without PPG), ``prm_scores`` = the
  stage-1 selection scores (softmax over classes x softmax over the bag, GT class) of the M proposals,
  ``prm_top1`` in ``[0, M1)``, ``bag_score`` = the PRM bag score of the GT class (sigmoid x softmax);
- without PRM (``--no-prm``): the PSM decides: ``prm_top1 = psm_top1``, ``prm_scores = psm_scores``,
  ``bag_score`` = the PSM bag score of the GT class (``beta``);
- ``bms_box`` = BMS of the selected box (by default the code's score-weighted top-1 box ``box * s /
  (s + 1e-8)``, ``top1_box``; clamped to the image) with the first 3 proposals as candidates (the selected
  box itself without BMS), mapped back to original-image edge coordinates;
- ``final_index = proposal_index_for_box(bms_box, proposals)``.

Objects whose proposals failed in `sapnet propose` get -1 indices, a zero box and zero scores.

Distributed: every rank predicts its shard of the images (the epoch-0 order without shuffling), rank 0
gathers the per-object results (``gather_object``) and returns the full arrays; other ranks return None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from stages.select.bms import box_mining, proposal_index_for_box
from stages.select.data import (
    EpochBatchSampler,
    SelectDataset,
    StoreArrays,
    batch_to_device,
    collate,
)
from stages.select.forward import (
    MethodOptions,
    object_sizes,
    prm_bag,
    prm_embeddings,
    run_psm,
    top1_box_for_bms,
)
from stages.select.mil import prm_bag_scores, selection_scores, top1
from stages.select.model import SelectorNet


@dataclass
class Predictions:
    """Per-object predictions in store object order (P objects, M proposals)."""

    psm_top1: np.ndarray  # (P,) int64
    prm_top1: np.ndarray  # (P,) int64
    bms_box: np.ndarray  # (P, 4) float32, original-image xyxy
    final_index: np.ndarray  # (P,) int64
    psm_scores: np.ndarray  # (P, M) float32
    prm_scores: np.ndarray  # (P, M) float32
    bag_score: np.ndarray  # (P,) float32

    @classmethod
    def empty(cls, num_objects: int, m: int) -> Predictions:
        return cls(
            psm_top1=np.full(num_objects, -1, np.int64),
            prm_top1=np.full(num_objects, -1, np.int64),
            bms_box=np.zeros((num_objects, 4), np.float32),
            final_index=np.full(num_objects, -1, np.int64),
            psm_scores=np.zeros((num_objects, m), np.float32),
            prm_scores=np.zeros((num_objects, m), np.float32),
            bag_score=np.zeros(num_objects, np.float32),
        )

    def fill(self, objects: np.ndarray, values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            getattr(self, name)[objects] = value


@torch.inference_mode()
def predict_batch(
    net: SelectorNet, batch: dict[str, Any], opts: MethodOptions
) -> dict[str, torch.Tensor]:
    """Predictions for the objects of one collated batch (tensors on the batch's device, resized coords
    except ``bms_box``, which is mapped back to original-image coordinates)."""
    feats = net.features(batch["images"])
    psm = run_psm(net, feats, batch["boxes"], batch["points"], batch["labels"], batch["size"], opts)
    n, m = psm.boxes.shape[:2]
    rows = torch.arange(n, device=psm.boxes.device)
    heights, widths = object_sizes(batch["size"], psm.image_ids)
    if opts.use_prm:
        bag = prm_bag(psm, opts)
        embed, _ = prm_embeddings(net, feats, psm, bag)
        cls1, ins1 = net.prm_head(embed)
        sel1 = selection_scores(cls1, ins1, psm.labels)
        prm_top = top1(sel1)
        selected = top1_box_for_bms(
            bag[rows, prm_top], sel1[rows, prm_top], heights, widths, opts.top1_box
        )
        bag_score = prm_bag_scores(cls1, ins1)[0][rows, psm.labels]
        prm_scores = sel1[:, :m]
    else:
        prm_top, selected, bag_score, prm_scores = psm.top, psm.bms_in, psm.beta, psm.scores
    box = (
        box_mining(selected, psm.boxes[:, :3], opts.bms_t1, opts.bms_t2)
        if opts.use_bms
        else selected
    )
    final = proposal_index_for_box(box, psm.boxes)
    scale = torch.tensor(batch["scale"], dtype=box.dtype, device=box.device).repeat(1, 2)[
        psm.image_ids
    ]
    return {
        "psm_top1": psm.top,
        "prm_top1": prm_top,
        "bms_box": box / scale,
        "final_index": final,
        "psm_scores": psm.scores,
        "prm_scores": prm_scores,
        "bag_score": bag_score,
    }


def predict_store(
    net: SelectorNet,
    arrays: StoreArrays,
    dataset: SelectDataset,
    images: np.ndarray,
    opts: MethodOptions,
    device: torch.device,
    batch_size: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> Predictions | None:
    """Predict every usable object of ``images``; rank 0 returns all objects' results, others None."""
    net.eval().to(device)
    sampler = EpochBatchSampler(images, batch_size, 0, 0, rank, world_size, shuffle=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
    if progress and rank == 0:
        from stages.common.progress import progress as progress_bar

        loader = progress_bar(loader, total=len(sampler), desc="select: predict", unit="batch")
    parts: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    for batch in loader:
        out = predict_batch(net, batch_to_device(batch, device), opts)
        objects = torch.cat(batch["objects"]).numpy()
        parts.append(
            (
                objects,
                {
                    k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
                    for k, v in out.items()
                },
            )
        )
    if world_size > 1 and dist.is_initialized():
        gathered: list[Any] | None = [None] * world_size if rank == 0 else None
        dist.gather_object(parts, gathered, dst=0)
        if rank != 0:
            return None
        parts = [p for chunk in gathered for p in chunk]
    result = Predictions.empty(len(arrays.labels), arrays.boxes.shape[1])
    for objects, values in parts:
        result.fill(objects, values)
    return result
