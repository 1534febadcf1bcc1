"""SGD with full-model gradient-norm clipping, as SOLOv2's reference recipes train (max_norm 35).

detectron2's ``SOLVER.CLIP_GRADIENTS`` (type "norm") clips each parameter's gradient separately; mmdetection,
WXinlong/SOLO and SAPNet clip the L2 norm of all gradients together (``clip_grad_norm_(model.parameters(),
35)``). ``SOLVER.FULL_MODEL_CLIP_NORM`` (> 0) selects the latter; detectron2's per-parameter clipping still works
on top when a user enables it.
"""

from __future__ import annotations

import torch
from torch import nn

from stages.seg.d2 import compat

compat.apply()

from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping  # noqa: E402


class FullModelClipSGD(torch.optim.SGD):
    """``torch.optim.SGD`` whose ``step`` first clips the global L2 norm of all gradients to ``max_norm``.

    ``max_norm <= 0`` disables clipping. The total norm before clipping of the last step is kept in
    ``last_grad_norm`` (a float, for logging).
    """

    def __init__(self, params, *, max_norm: float, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.max_norm = float(max_norm)
        self.last_grad_norm = float("nan")

    def step(self, closure=None):
        if self.max_norm > 0:
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            if params:
                self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm))
        return super().step(closure)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """detectron2's default SGD parameter groups and hyper-parameters, with full-model clipping."""
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    optimizer_cls = maybe_add_gradient_clipping(cfg, FullModelClipSGD)
    return optimizer_cls(
        params,
        max_norm=cfg.SOLVER.FULL_MODEL_CLIP_NORM,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
