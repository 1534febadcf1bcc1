"""SAM 2.1 proposal backend (``sam2``), over Meta's ``sam2`` package (optional extra ``sapnet[sam2]``).

The model is built by the package's own builder (``sam2.build_sam.build_sam2``) from the SAM 2.1 configs it ships
(``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``) and driven through its ``SAM2ImagePredictor``: the image is
encoded once per image (``set_image``), then the K points are decoded in chunks of ``batch_points`` with one
``B x 1 x 2`` point prompt per object (label 1), the batched torch path that the package's own automatic mask
generator uses (``_transforms.transform_coords`` + ``_predict``).

Proposal order: the same contract as the ``sam`` backend (M = 6; M = 3 keeps the first stage):

* 0-2: the three multimask outputs for the point prompt, in SAM 2's output order;
* 3-5: the three multimask outputs for the point plus a box around the **largest** of masks 0-2 (SAM's inclusive
  pixel-index box convention, :func:`~stages.propose.backends.prompted.prompt_boxes_from_masks`).

Coordinates: points are pixel-index ``[x, y]``; SAM 2 divides them by the image width/height and scales them to
its square input (``image_size``, 1024), the image itself being resized to that square without keeping its aspect
ratio. Scores are SAM 2's predicted IoU (sigmoid, in [0, 1]). Masks are thresholded logits (``> 0``) at the
original resolution; the package's optional hole/sprinkle filling is off, as in ``SAM2ImagePredictor``'s default.

Defaults (official examples: SAM 2.1 Hiera-L under bf16 autocast on CUDA): without ``model`` the backend runs
``hiera_l`` on CUDA and ``hiera_t`` on CPU; without ``precision`` it runs ``bf16`` on CUDA and ``fp32`` on CPU. Both
are recorded in the fingerprint, so a store knows which one made it (pass them explicitly to resume a store on
another kind of device).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stages.common.devices import resolve_device
from stages.common.errors import DependencyError, InputError
from stages.propose.backends.checkpoints import ENV_SAM2_CHECKPOINT, resolve_checkpoint
from stages.propose.backends.prompted import BOX_RULE, PromptedBackend, check_prompt_options

log = logging.getLogger(__name__)
INSTALL_HINT = (
    "install it with: SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'sapnet[sam2]' "
    "(or `make install`)"
)


@dataclass(frozen=True)
class Sam2Variant:
    """One buildable SAM 2 model.

    Attributes:
        config: config name inside the ``sam2`` package (what ``build_sam2`` composes with hydra).
        overrides: extra hydra overrides (``++model.image_size=256``), applied after the config.
    """

    config: str
    overrides: tuple[str, ...] = ()


#: ``--model`` name -> SAM 2.1 config shipped by the ``sam2`` package (checkpoints: ``checkpoints.CHECKPOINTS``).
MODELS: dict[str, Sam2Variant] = {
    "hiera_t": Sam2Variant("configs/sam2.1/sam2.1_hiera_t.yaml"),
    "hiera_s": Sam2Variant("configs/sam2.1/sam2.1_hiera_s.yaml"),
    "hiera_b+": Sam2Variant("configs/sam2.1/sam2.1_hiera_b+.yaml"),
    "hiera_l": Sam2Variant("configs/sam2.1/sam2.1_hiera_l.yaml"),
}
DEFAULT_MODEL = {"cuda": "hiera_l", "cpu": "hiera_t"}
DEFAULT_PRECISION = {"cuda": "bf16", "cpu": "fp32"}


def _sam2_api() -> tuple[Any, Any]:
    """``(build_sam2, SAM2ImagePredictor)``; DependencyError naming the extra when ``sam2`` is missing."""
    try:
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor
    except ImportError as e:
        raise DependencyError(
            f"the sam2 backend needs the optional package sam2 ({e}); {INSTALL_HINT}"
        ) from e
    return build_sam2, SAM2ImagePredictor


def build_model(model: str) -> torch.nn.Module:
    """The architecture of ``model`` (a key of :data:`MODELS`) with random weights, eval mode, on CPU.

    Built by ``sam2.build_sam.build_sam2`` with its defaults (its ``apply_postprocessing`` overrides only change
    single-mask outputs, which this backend never asks for).
    """
    if model not in MODELS:
        raise InputError(f"unknown SAM 2 model {model!r}; choose one of {list(MODELS)}")
    build_sam2, _ = _sam2_api()
    variant = MODELS[model]
    try:
        sam2_model = build_sam2(
            variant.config, None, device="cpu", hydra_overrides_extra=list(variant.overrides)
        )
    except Exception as e:  # hydra: missing config / global state owned by someone else
        raise DependencyError(
            f"cannot build SAM 2 model {model} from the sam2 package config {variant.config}: "
            f"{type(e).__name__}: {e}"
        ) from e
    return sam2_model.eval()


def load_sam2(model: str, checkpoint: Any) -> torch.nn.Module:
    """Build ``model`` and load a checkpoint file into it, strictly, on CPU.

    Official SAM 2.1 files hold ``{"model": state_dict}``; a bare state dict is accepted too. Loaded with
    ``weights_only=True`` (no pickled code runs). A file that does not match raises DependencyError naming it.
    """
    sam2_model = build_model(model)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        sam2_model.load_state_dict(state, strict=True)
    except Exception as e:  # unpickling errors, wrong keys/shapes: all mean "wrong file"
        raise DependencyError(
            f"SAM 2 checkpoint {checkpoint} is not a {model} state dict: {type(e).__name__}: {e}"
        ) from e
    return sam2_model.eval()


def feature_sizes(sam2_model: torch.nn.Module) -> list[tuple[int, int]]:
    """Spatial sizes of the three backbone levels the predictor reshapes: strides 4, 8, 16 of ``image_size``.

    ``SAM2ImagePredictor`` hard-codes them for 1024 px (256, 128, 64); deriving them keeps configs with another
    ``image_size`` (e.g. the reduced test models) working and equals the official values at 1024.
    """
    size, stride = int(sam2_model.image_size), int(sam2_model.backbone_stride)
    return [(size * f // stride,) * 2 for f in (4, 2, 1)]


class Sam2Backend(PromptedBackend):
    """A :class:`~stages.propose.backends.base.ProposalBackend` over a SAM 2 model.

    Args:
        sam2_model: a built ``SAM2Base`` with its weights loaded; moved to ``device``.
        model: its variant name (recorded in the fingerprint).
        checkpoint_sha256: SHA-256 of the weights file (or a label such as ``"random-init"``).
        num_proposals: 3 (point prompt only) or 6 (plus the point+box prompt).
        device: ``cpu`` | ``cuda`` | ``cuda:N``.
        batch_points: points decoded per decoder call.
        precision: ``fp32`` | ``bf16`` | ``fp16`` (the last two: CUDA autocast only).
    """

    name = "sam2"
    label = "SAM 2"

    def __init__(
        self,
        sam2_model: torch.nn.Module,
        *,
        model: str = "hiera_l",
        checkpoint_sha256: str = "unknown",
        num_proposals: int = 6,
        device: str | torch.device = "cpu",
        batch_points: int = 64,
        precision: str = "fp32",
    ) -> None:
        _check_options(num_proposals, batch_points, precision)
        self._setup(num_proposals, batch_points, precision, device)
        _, predictor_cls = _sam2_api()
        self.model_name, self.checkpoint_sha256 = model, checkpoint_sha256
        self.sam2 = sam2_model.to(self.device).eval()
        self.predictor = predictor_cls(self.sam2)
        self.predictor._bb_feat_sizes = feature_sizes(self.sam2)
        self.proposal_order = self._proposal_order(
            [f"point prompt, SAM 2 multimask output {i}" for i in range(3)]
        )

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the proposals this backend makes (batch size excluded: it does not change them)."""
        return {
            "backend": self.name,
            "model": self.model_name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "image_size": int(self.sam2.image_size),
            "num_proposals": self.num_proposals,
            "prompts": self._prompts(),
            "box_rule": BOX_RULE,
            "precision": self.precision,
        }

    def encode(self, image: np.ndarray) -> None:
        """Run the image encoder once for ``image`` ((H, W, 3) uint8 RGB)."""
        if not image.flags.writeable:  # torchvision's to_tensor warns on read-only arrays
            image = image.copy()
        with self._context(), _quiet_sam2_root_logs():
            self.predictor.set_image(image)

    def _image_hw(self) -> tuple[int, int]:
        return self.predictor._orig_hw[0]

    def _point_coords(self, points: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self.predictor._transforms.transform_coords(points, normalize=True, orig_hw=hw)

    def _box_coords(self, boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self.predictor._transforms.transform_boxes(boxes, normalize=True, orig_hw=hw)

    def _predict(
        self, coords: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, scores, _ = self.predictor._predict(
            coords, labels, boxes=boxes, multimask_output=True
        )
        return masks, scores

    def _reset(self) -> None:
        self.predictor.reset_predictor()  # drop the image features


class _DropSam2Records(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}sam2{os.sep}" not in record.pathname


@contextlib.contextmanager
def _quiet_sam2_root_logs() -> Iterator[None]:
    """Drop the INFO lines ``SAM2ImagePredictor.set_image`` logs on the *root* logger for every image
    ("Computing image embeddings ..."), for this call only; other records pass."""
    root, quiet = logging.getLogger(), _DropSam2Records()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _check_options(num_proposals: int, batch_points: int, precision: str) -> None:
    check_prompt_options("the SAM 2 backend makes", num_proposals, batch_points, precision)


def build_sam2_backend(
    num_proposals: int = 6,
    device: str = "cpu",
    model: str | None = None,
    checkpoint: str | None = None,
    batch_points: int = 64,
    precision: str | None = None,
    **_ignored: Any,
) -> Sam2Backend:
    """The ``sam2`` backend: resolve/download the SAM 2.1 checkpoint of ``model`` and wrap it in a Sam2Backend.

    ``model`` / ``precision`` None pick the device's default (module docstring). Checkpoint resolution:
    ``checkpoint``, then ``$SAPNET_SAM2_CHECKPOINT``, then the cache, then the verified official download.
    """
    dev = resolve_device(device)
    kind = "cuda" if dev.type == "cuda" else "cpu"
    if model is None:
        model = DEFAULT_MODEL[kind]
        log.info("sam2 backend: no model given, using %s on %s", model, kind)
    precision = precision or DEFAULT_PRECISION[kind]
    _check_options(num_proposals, batch_points, precision)
    if model not in MODELS:
        raise InputError(f"unknown SAM 2 model {model!r}; choose one of {list(MODELS)}")
    _sam2_api()  # fail on the missing package before any download
    resolved = resolve_checkpoint(model, checkpoint, env_var=ENV_SAM2_CHECKPOINT)
    return Sam2Backend(
        load_sam2(model, resolved.path),
        model=model,
        checkpoint_sha256=resolved.sha256,
        num_proposals=num_proposals,
        device=dev,
        batch_points=batch_points,
        precision=precision,
    )
