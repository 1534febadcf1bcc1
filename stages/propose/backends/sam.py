"""SAM and MobileSAM proposal backends (``sam``, ``mobile-sam``).

Per image the encoder runs once (``SamPredictor.set_image``); the K points are then decoded in chunks of
``batch_points`` with ``predict_torch`` using ``B x 1 x 2`` point tensors (one object per point, label 1).

Proposal order (M = 6; M = 3 keeps only the first stage):

* 0-2: SAM's three multimask outputs for the point prompt, in SAM's output order (decoder tokens 1-3).
* 3-5: SAM's three multimask outputs for a second prompt, the same point plus a box around the **largest** (pixel
  count; ties -> lowest index) of masks 0-2. No ground truth is used. Largest rather than highest-scoring because
  the second stage stands in for SAPNet's P2BNet whole-object box prompt, and SAM's largest multimask output is the
  whole-object hypothesis. The box uses SAM's own convention (inclusive pixel indices, as its automatic mask
  generator builds boxes); if all three masks are empty it degenerates to the point's pixel.

Scores are SAM's predicted IoU. Masks come back as bool at the original resolution; the contexts
(``torch.inference_mode``, autocast) are entered per chunk and left before each ``yield``, so no global state leaks
into the caller. Precision: ``fp32`` everywhere, ``bf16``/``fp16`` (CUDA autocast) only on CUDA: asking for them on
CPU raises InputError rather than silently changing the numerics recorded in the fingerprint. ``attention="sdpa"``
swaps the ViT encoder's attention for ``F.scaled_dot_product_attention`` with the decomposed relative-position
term passed as an additive mask (same maths; fused kernels on CUDA); ``"original"`` keeps segment-anything's code.

Tests and benchmarks add a tiny random-initialised SAM (``vit_test``, ``benchmarks/tiny_sam.py``) through
:func:`register_model`; it is not a product model.
"""

from __future__ import annotations

import logging
import types
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import image_encoder as sam_image_encoder

from stages.common.devices import resolve_device
from stages.common.errors import DependencyError, InputError
from stages.propose.backends.checkpoints import resolve_checkpoint
from stages.propose.backends.prompted import (
    BOX_RULE,
    PromptedBackend,
    check_prompt_options,
)

MODELS = ("vit_h", "vit_l", "vit_b", "vit_t")
"""The SAM variants sapnet knows (``--model``); :func:`register_model` adds others (tests, plug-ins)."""
ATTENTIONS = ("sdpa", "original")
log = logging.getLogger(__name__)


def _mobile_sam_registry() -> dict[str, Callable[..., torch.nn.Module]]:
    try:
        with warnings.catch_warnings():  # timm deprecation + "Overwriting tiny_vit_* in registry"
            warnings.simplefilter("ignore")
            import mobile_sam
    except ImportError as e:
        raise DependencyError(
            f"MobileSAM (model vit_t) needs the optional packages mobilesam-mirror and timm ({e}); "
            "install them with: pip install 'sapnet[mobile]'"
        ) from e
    return mobile_sam.sam_model_registry


_EXTRA_MODELS: dict[str, Callable[[], torch.nn.Module]] = {}


def register_model(name: str, build: Callable[[], torch.nn.Module]) -> None:
    """Make ``name`` a SAM variant built by ``build()`` (random weights; the checkpoint is loaded after)."""
    _EXTRA_MODELS[name] = build


def known_models() -> tuple[str, ...]:
    """:data:`MODELS` plus the registered ones."""
    return (*MODELS, *_EXTRA_MODELS)


def build_model(model: str) -> torch.nn.Module:
    """The architecture of ``model`` (see :func:`known_models`) with random weights, in eval mode, on CPU."""
    if model in _EXTRA_MODELS:
        return _EXTRA_MODELS[model]().eval()
    if model == "vit_t":
        return _mobile_sam_registry()["vit_t"](checkpoint=None).eval()
    if model in ("vit_h", "vit_l", "vit_b"):
        return sam_model_registry[model](checkpoint=None).eval()
    raise InputError(f"unknown SAM model {model!r}; choose one of {list(known_models())}")


def load_sam(model: str, checkpoint: str | Any) -> torch.nn.Module:
    """Build ``model`` and load a checkpoint file (a plain state dict) into it, strictly, on CPU.

    ``torch.load(map_location="cpu", weights_only=True)`` so CUDA-saved files load anywhere and no pickled code
    runs. A file that is not a matching state dict raises DependencyError naming the file.
    """
    sam = build_model(model)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        sam.load_state_dict(state, strict=True)
    except Exception as e:  # unpickling errors, wrong keys/shapes: all mean "wrong file"
        raise DependencyError(
            f"SAM checkpoint {checkpoint} is not a {model} state dict: {type(e).__name__}: {e}"
        ) from e
    return sam.eval()


def _sdpa_attention_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """segment-anything ``image_encoder.Attention.forward`` through ``F.scaled_dot_product_attention``.

    ``x``: ``(B, H, W, dim)``. The decomposed relative-position term (MViTv2) that the original adds to the
    attention logits is built as a ``(B, heads, HW, HW)`` additive mask; SDPA's default scale equals
    ``self.scale`` (head_dim ** -0.5).
    """
    b, h, w, _ = x.shape
    q, k, v = (
        self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    )  # each (B, heads, HW, C)
    bias = None
    if self.use_rel_pos:
        rh = sam_image_encoder.get_rel_pos(h, h, self.rel_pos_h)  # (H, H, C)
        rw = sam_image_encoder.get_rel_pos(w, w, self.rel_pos_w)  # (W, W, C)
        r_q = q.reshape(b, self.num_heads, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh.to(r_q.dtype))
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw.to(r_q.dtype))
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def use_sdpa_attention(sam: torch.nn.Module) -> int:
    """Route every segment-anything ViT attention block of ``sam`` through SDPA; returns how many.

    MobileSAM's TinyViT has other attention modules and is left unchanged (returns 0).
    """
    n = 0
    for module in sam.modules():
        if isinstance(module, sam_image_encoder.Attention):
            module.forward = types.MethodType(_sdpa_attention_forward, module)
            n += 1
    return n


class SamBackend(PromptedBackend):
    """A :class:`~stages.propose.backends.base.ProposalBackend` over a segment-anything ``Sam`` model.

    Args:
        sam_model: a built ``Sam`` (segment-anything or MobileSAM), weights already loaded; it is moved to
            ``device`` and (``attention="sdpa"``) patched in place.
        model: its variant name (recorded in the fingerprint).
        checkpoint_sha256: SHA-256 of the weights file (or a label such as ``"random-init"``).
        name: backend name, ``sam`` or ``mobile-sam``.
        num_proposals: 3 (point prompt only) or 6 (plus the point+box prompt).
        device: ``cpu`` | ``cuda`` | ``cuda:N``.
        batch_points: points decoded per ``predict_torch`` call.
        precision: ``fp32`` | ``bf16`` | ``fp16`` (the last two CUDA only).
        attention: ``sdpa`` | ``original`` (ViT encoder attention implementation).
    """

    def __init__(
        self,
        sam_model: torch.nn.Module,
        *,
        model: str = "vit_h",
        checkpoint_sha256: str = "unknown",
        name: str = "sam",
        num_proposals: int = 6,
        device: str | torch.device = "cpu",
        batch_points: int = 64,
        precision: str = "fp32",
        attention: str = "sdpa",
    ) -> None:
        _check_options(num_proposals, batch_points, precision, attention)
        self._setup(num_proposals, batch_points, precision, device)
        self.name, self.model_name, self.checkpoint_sha256 = name, model, checkpoint_sha256
        self.attention = attention
        self.sam = sam_model.to(self.device).eval()
        if attention == "sdpa" and use_sdpa_attention(self.sam) == 0:
            self.attention = "original"  # MobileSAM's TinyViT: nothing to swap, say so
        self.predictor = SamPredictor(self.sam)
        self.proposal_order = self._proposal_order(
            [f"point prompt, SAM multimask output {i} (decoder token {i + 1})" for i in range(3)]
        )

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the proposals this backend makes (batch size excluded: it does not change them)."""
        return {
            "backend": self.name,
            "model": self.model_name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "num_proposals": self.num_proposals,
            "prompts": self._prompts(),
            "box_rule": BOX_RULE,
            "precision": self.precision,
            "attention": self.attention,
        }

    def encode(self, image: np.ndarray) -> None:
        """Run the image encoder once for ``image`` ((H, W, 3) uint8 RGB)."""
        with self._context():
            self.predictor.set_image(image, image_format="RGB")

    def _image_hw(self) -> tuple[int, int]:
        return tuple(self.predictor.original_size)

    def _point_coords(self, points: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self.predictor.transform.apply_coords_torch(points, hw)

    def _box_coords(self, boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self.predictor.transform.apply_boxes_torch(boxes, hw)

    def _predict(
        self, coords: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, scores, _ = self.predictor.predict_torch(
            coords, labels, boxes=boxes, multimask_output=True
        )
        return masks, scores

    def _reset(self) -> None:
        self.predictor.reset_image()  # drop the image embedding


def _check_options(num_proposals: int, batch_points: int, precision: str, attention: str) -> None:
    check_prompt_options("SAM backends make", num_proposals, batch_points, precision)
    if attention not in ATTENTIONS:
        raise InputError(f"unknown attention {attention!r}; choose one of {list(ATTENTIONS)}")


def _build(name: str, model: str, checkpoint: Any, **options: Any) -> SamBackend:
    _check_options(
        options["num_proposals"],
        options["batch_points"],
        options["precision"],
        options["attention"],
    )
    if model not in known_models():
        raise InputError(f"unknown SAM model {model!r}; choose one of {list(known_models())}")
    dev = resolve_device(options.pop("device"))
    if model == "vit_t":
        _mobile_sam_registry()  # fail on the missing package before any download
    resolved = resolve_checkpoint(model, checkpoint)
    sam = load_sam(model, resolved.path)
    return SamBackend(
        sam, model=model, checkpoint_sha256=resolved.sha256, name=name, device=dev, **options
    )


def build_sam_backend(
    num_proposals: int = 6,
    device: str = "cpu",
    model: str = "vit_h",
    checkpoint: str | None = None,
    batch_points: int = 64,
    precision: str | None = "fp32",
    attention: str = "sdpa",
    **_ignored: Any,
) -> SamBackend:
    """The ``sam`` backend: resolve/download the checkpoint of ``model`` and wrap it in a SamBackend."""
    return _build(
        "sam",
        model or "vit_h",
        checkpoint,
        num_proposals=num_proposals,
        device=device,
        batch_points=batch_points,
        precision=precision or "fp32",
        attention=attention,
    )


def build_mobile_sam_backend(
    num_proposals: int = 6,
    device: str = "cpu",
    model: str | None = None,
    checkpoint: str | None = None,
    batch_points: int = 64,
    precision: str | None = "fp32",
    attention: str = "sdpa",
    **_ignored: Any,
) -> SamBackend:
    """The ``mobile-sam`` backend: MobileSAM ``vit_t`` always.

    ``model`` is accepted for a uniform CLI (whose ``--model`` defaults to ``vit_h``) and ignored, with a log line
    when it names another variant.
    """
    if model not in (None, "vit_t"):
        log.info("the mobile-sam backend always runs MobileSAM vit_t; model %r ignored", model)
    return _build(
        "mobile-sam",
        "vit_t",
        checkpoint,
        num_proposals=num_proposals,
        device=device,
        batch_points=batch_points,
        precision=precision or "fp32",
        attention=attention,
    )
