"""A tiny SAM with random weights (``vit_test``) for the tests and benchmarks: meaningless masks, real code paths.

Not a product model: :func:`register_vit_test` makes ``--model vit_test`` known to the SAM backend for the
process that calls it (``stages.propose.backends.sam.register_model``).
"""

from __future__ import annotations

import torch

from stages.propose.backends.sam import register_model

NAME = "vit_test"


def build_sam_vit_test() -> torch.nn.Module:
    """Tiny SAM with random weights, for tests and benchmarks only (meaningless masks).

    Same module types as SAM (ImageEncoderViT with windowed + global rel-pos attention, PromptEncoder, MaskDecoder,
    TwoWayTransformer) at toy sizes: 256 px input, 16 x 16 embedding, transformer width 32, low-res masks 64 x 64.
    """
    from functools import partial

    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    img, dim = 256, 32
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img,
            patch_size=16,
            embed_dim=64,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(img // 16, img // 16),
            input_image_size=(img, img),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def register_vit_test() -> None:
    """Make ``vit_test`` a known SAM variant (built by :func:`build_sam_vit_test`)."""
    register_model(NAME, build_sam_vit_test)
