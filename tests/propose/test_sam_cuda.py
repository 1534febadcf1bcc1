"""The SAM backend on CUDA agrees with CPU (tiny random-weight SAM; run by `make gpu-check`)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from benchmarks.tiny_sam import build_sam_vit_test
from stages.propose.backends.sam import SamBackend

POINTS = np.array([[5, 6], [40, 30], [100, 70], [0, 0], [20.4, 33.7]], dtype=np.float32)


def _masks_scores(backend: SamBackend, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    batches = list(backend.propose(image, POINTS))
    return np.concatenate([b.masks for b in batches]), np.concatenate([b.scores for b in batches])


@pytest.mark.cuda
def test_sam_backend_cuda_matches_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    sam = build_sam_vit_test()
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    results = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16")):
        backend = SamBackend(
            copy.deepcopy(sam), model="vit_test", checkpoint_sha256="x", device=device,
            precision=precision, attention="sdpa", batch_points=2,
        )  # fmt: skip
        results[device, precision] = _masks_scores(backend, image)
    m_cpu, s_cpu = results["cpu", "fp32"]
    m_gpu, s_gpu = results["cuda", "fp32"]
    assert m_gpu.shape == m_cpu.shape == (5, 6, 96, 128)
    np.testing.assert_allclose(s_gpu, s_cpu, atol=1e-3)
    inter = (m_cpu & m_gpu).sum((2, 3))
    union = np.maximum((m_cpu | m_gpu).sum((2, 3)), 1)
    assert (inter / union).mean() >= 0.98
    m_bf16, s_bf16 = results["cuda", "bf16"]
    assert m_bf16.shape == m_cpu.shape and np.isfinite(s_bf16).all()
