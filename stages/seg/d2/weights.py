"""Initial weights for ``sapnet train-seg``: detectron2 checkpoints as they are, torchvision ResNets converted.

``--weights`` may be

* a detectron2 checkpoint (``.pth`` with a ``model`` dict of detectron2 names) or model-zoo / Caffe2 ``.pkl``:
  used as ``MODEL.WEIGHTS`` directly (detectron2's checkpointer matches names);
* a torchvision ImageNet ResNet-50/101 state dict (``conv1.weight``, ``layer1.0.conv1.weight``, ...):
  renamed to detectron2's ``backbone.bottom_up.*`` names (:func:`convert_torchvision_resnet`), written next
  to the outputs and used as ``MODEL.WEIGHTS``;
* empty / None: random initialisation (a warning is logged).

sapnet's default config uses torchvision's conventions (RGB, mean/std, stride in the 3x3 conv). Caffe2/MSRA
``.pkl`` backbones expect BGR input without std scaling and the stride in the 1x1 conv:
:func:`resolve_weights` logs the options to set for them.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from stages.common.errors import InputError

logger = logging.getLogger(__name__)

CONVERTED_NAME = "weights_torchvision_converted.pth"
_CAFFE2_OPTS = (
    "INPUT.FORMAT BGR MODEL.PIXEL_MEAN [103.53,116.28,123.675] MODEL.PIXEL_STD [1.0,1.0,1.0] "
    "MODEL.RESNETS.STRIDE_IN_1X1 True"
)
_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(.+)$")
_INNER = {
    "conv1": "conv1",
    "conv2": "conv2",
    "conv3": "conv3",
    "bn1": "conv1.norm",
    "bn2": "conv2.norm",
    "bn3": "conv3.norm",
    "downsample.0": "shortcut",
    "downsample.1": "shortcut.norm",
}


def torchvision_to_detectron2_name(name: str, prefix: str = "backbone.bottom_up.") -> str | None:
    """Map one torchvision ResNet parameter name to detectron2's, or None for names that have no counterpart.

    ``conv1.weight`` -> ``stem.conv1.weight``; ``bn1.x`` -> ``stem.conv1.norm.x``;
    ``layer{i}.{b}.conv{k}.weight`` -> ``res{i+1}.{b}.conv{k}.weight``; ``layer{i}.{b}.bn{k}.x`` ->
    ``res{i+1}.{b}.conv{k}.norm.x``; ``downsample.0``/``.1`` -> ``shortcut``/``shortcut.norm``;
    ``fc.*`` and ``*.num_batches_tracked`` -> None.
    """
    if name.startswith("fc.") or name.endswith("num_batches_tracked"):
        return None
    if name.startswith("conv1."):
        return prefix + "stem." + name
    if name.startswith("bn1."):
        return prefix + "stem.conv1.norm." + name[len("bn1.") :]
    match = _BLOCK.match(name)
    if match is None:
        return None
    stage, block, rest = match.groups()
    for src, dst in _INNER.items():
        if rest.startswith(src + "."):
            return f"{prefix}res{int(stage) + 1}.{block}.{dst}.{rest[len(src) + 1 :]}"
    return None


def convert_torchvision_resnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ResNet state dict to detectron2's FPN-backbone names (dropping ``fc``)."""
    out = {}
    for name, value in state.items():
        new = torchvision_to_detectron2_name(name)
        if new is not None:
            out[new] = value
    return out


def _unwrap_state(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if obj and all(isinstance(k, str) for k in obj):
        if all(k.startswith("module.") for k in obj):
            obj = {k[len("module.") :]: v for k, v in obj.items()}
        return obj
    return None


def is_torchvision_resnet(state: dict[str, Any]) -> bool:
    """True for a torchvision ResNet state dict (top-level ``conv1``/``bn1``/``layer1..4`` names)."""
    return (
        "conv1.weight" in state
        and "layer1.0.conv1.weight" in state
        and "layer4.0.conv1.weight" in state
    )


def _is_caffe2_pkl(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh, encoding="latin1")
    except Exception:  # noqa: BLE001 - any unreadable pickle is reported by detectron2 later
        return False
    return isinstance(data, dict) and not ("model" in data and "__author__" in data)


def resolve_weights(
    weights: str | None, out_dir: Path, input_format: str, write: bool = True
) -> str:
    """Return the ``MODEL.WEIGHTS`` value for ``--weights`` (converting torchvision ResNets into ``out_dir``).

    ``write=False`` returns the converted file's path without writing it (non-zero ranks: rank 0 writes).

    Raises:
        InputError: the file cannot be read as a checkpoint.
    """
    if not weights:
        logger.warning(
            "no --weights given: the backbone and heads start from RANDOM initialisation; pass a torchvision "
            "ImageNet ResNet state dict or a detectron2 .pkl/.pth for meaningful results"
        )
        return ""
    if "://" in weights:  # detectron2:// or https:// URL: let detectron2 resolve it
        return weights
    path = Path(weights)
    if path.suffix == ".pkl":
        if _is_caffe2_pkl(path) and input_format.upper() == "RGB":
            logger.warning(
                "%s looks like a Caffe2/MSRA model (BGR, no std scaling, stride in 1x1): add --opts %s",
                path,
                _CAFFE2_OPTS,
            )
        return str(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise InputError(
            f"--weights {path}: cannot be loaded as a torch checkpoint ({exc})"
        ) from exc
    state = _unwrap_state(loaded)
    if state is not None and is_torchvision_resnet(state):
        target = out_dir / CONVERTED_NAME
        if not write:
            return str(target)
        converted = convert_torchvision_resnet(state)
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        torch.save(
            {"model": converted, "__author__": f"torchvision ({path.name}, converted by sapnet)"},
            partial,
        )
        os.replace(partial, target)  # atomic: concurrent launchers never read a half-written file
        logger.info(
            "converted torchvision ResNet %s (%d tensors) to %s", path, len(converted), target
        )
        return str(target)
    return str(path)
