"""SAM backend on a tiny random-weight SAM (``vit_test``), CPU only; MobileSAM when installed."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from benchmarks.tiny_sam import build_sam_vit_test, register_vit_test
from stages.common.errors import DependencyError, InputError
from stages.common.masks import masks_to_boxes
from stages.propose.backends import ProposalBackend, get_backend
from stages.propose.backends import checkpoints as ck
from stages.propose.backends.prompted import prompt_boxes_from_masks
from stages.propose.backends.sam import (
    SamBackend,
    build_mobile_sam_backend,
    build_model,
    build_sam_backend,
    use_sdpa_attention,
)

register_vit_test()

H, W = 48, 64
POINTS = np.array([[5, 6], [40, 30], [63, 47], [0, 0], [20.4, 33.7]], dtype=np.float32)


@pytest.fixture(scope="module")
def tiny_sam() -> torch.nn.Module:
    torch.manual_seed(0)
    sam = build_sam_vit_test()
    with torch.no_grad():  # SAM zero-initialises rel-pos tables; randomise them so they matter
        for name, p in sam.named_parameters():
            if "rel_pos" in name:
                p.normal_(0.0, 0.5)
    return sam


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_sam: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "vit_test.pth"
    torch.save(tiny_sam.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _run(backend: SamBackend, image: np.ndarray, points: np.ndarray = POINTS):
    batches = list(backend.propose(image, points))
    masks = np.concatenate([b.masks for b in batches])
    scores = np.concatenate([b.scores for b in batches])
    return batches, masks, scores


def _backend(sam: torch.nn.Module, **kw) -> SamBackend:
    kw.setdefault("attention", "original")
    return SamBackend(copy.deepcopy(sam), model="vit_test", checkpoint_sha256="x", **kw)


def test_checkpoint_round_trip_through_the_real_loading_path(
    tiny_sam: torch.nn.Module, tiny_ckpt: Path, image: np.ndarray
) -> None:
    loaded = build_sam_backend(model="vit_test", checkpoint=str(tiny_ckpt), attention="original")
    assert isinstance(loaded, ProposalBackend)
    _, m_loaded, s_loaded = _run(loaded, image)
    _, m_mem, s_mem = _run(_backend(tiny_sam), image)
    assert np.array_equal(m_loaded, m_mem)
    assert np.array_equal(s_loaded, s_mem)
    fp = loaded.fingerprint()
    assert fp["checkpoint_sha256"] == ck.sha256_file(tiny_ckpt)
    assert (fp["backend"], fp["model"], fp["num_proposals"], fp["precision"]) == (
        "sam",
        "vit_test",
        6,
        "fp32",
    )
    via_registry = get_backend("sam", model="vit_test", checkpoint=str(tiny_ckpt), num_proposals=3)
    assert via_registry.num_proposals == 3 and len(via_registry.proposal_order) == 3


def test_shapes_dtypes_and_batches(tiny_sam: torch.nn.Module, image: np.ndarray) -> None:
    batches, masks, scores = _run(_backend(tiny_sam, batch_points=2), image)
    assert [b.start for b in batches] == [0, 2, 4]
    assert [b.masks.shape for b in batches] == [(2, 6, H, W), (2, 6, H, W), (1, 6, H, W)]
    assert masks.dtype == bool and scores.dtype == np.float32 and scores.shape == (5, 6)
    assert np.isfinite(scores).all()
    assert masks.any() and not masks.all()  # random weights still give non-trivial masks


def test_order_contract_against_plain_predictor(
    tiny_sam: torch.nn.Module, image: np.ndarray
) -> None:
    _, masks, scores = _run(_backend(tiny_sam), image)
    ref = SamPredictor(copy.deepcopy(tiny_sam))
    ref.set_image(image)
    for k, (x, y) in enumerate(POINTS):
        m1, s1, _ = ref.predict(np.array([[x, y]]), np.array([1]), multimask_output=True)
        assert np.array_equal(masks[k, :3], m1)
        np.testing.assert_allclose(scores[k, :3], s1, rtol=1e-5, atol=1e-6)
        # second prompt: point + inclusive-pixel box around the largest first-stage mask
        largest = m1[int(np.argmax(m1.reshape(3, -1).sum(1)))]
        box = masks_to_boxes(largest[None])[0] - np.array([0, 0, 1, 1], np.float32)
        m2, s2, _ = ref.predict(np.array([[x, y]]), np.array([1]), box=box, multimask_output=True)
        assert np.array_equal(masks[k, 3:], m2)
        np.testing.assert_allclose(scores[k, 3:], s2, rtol=1e-5, atol=1e-6)
    _, masks3, scores3 = _run(_backend(tiny_sam, num_proposals=3), image)
    assert np.array_equal(masks3, masks[:, :3]) and np.array_equal(scores3, scores[:, :3])


def test_batching_invariance(tiny_sam: torch.nn.Module, image: np.ndarray) -> None:
    _, m1, s1 = _run(_backend(tiny_sam, batch_points=1), image)
    _, m4, s4 = _run(_backend(tiny_sam, batch_points=4), image)
    assert np.array_equal(m1, m4)
    np.testing.assert_allclose(s1, s4, rtol=1e-5, atol=1e-6)


def test_sdpa_attention_matches_original(tiny_sam: torch.nn.Module, image: np.ndarray) -> None:
    orig, fast = _backend(tiny_sam), _backend(tiny_sam, attention="sdpa")
    orig.encode(image)
    fast.encode(image)
    torch.testing.assert_close(
        fast.predictor.features, orig.predictor.features, rtol=1e-4, atol=1e-4
    )
    assert use_sdpa_attention(copy.deepcopy(tiny_sam)) == 2  # one windowed + one global block
    _, m_orig, _ = _run(orig, image)
    _, m_fast, _ = _run(fast, image)
    assert (m_orig != m_fast).mean() < 1e-3


def test_prompt_boxes_hand_computed() -> None:
    masks = torch.zeros(3, 3, 6, 8, dtype=torch.bool)
    masks[0, 0, 1:3, 2:4] = True  # 4 px
    masks[0, 2, 0:4, 1:7] = True  # 24 px: largest -> cols 1..6, rows 0..3
    masks[1, 1, 5, 7] = True  # single pixel (row 5, col 7)
    masks[1, 2, 0, 0] = True  # tie at 1 px: lowest index (1) wins
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [6.6, 2.2]])  # point 2: all masks empty
    boxes = prompt_boxes_from_masks(masks, points)
    expected = torch.tensor([[1, 0, 6, 3], [7, 5, 7, 5], [7, 2, 7, 2]], dtype=torch.float32)
    assert torch.equal(boxes, expected)


def test_option_and_input_errors(tiny_sam: torch.nn.Module, image: np.ndarray, monkeypatch) -> None:
    with pytest.raises(InputError, match="3 or 6"):
        _backend(tiny_sam, num_proposals=4)
    with pytest.raises(InputError, match="CUDA"):
        _backend(tiny_sam, precision="bf16")
    with pytest.raises(InputError, match="device"):
        _backend(tiny_sam, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DependencyError, match="CUDA is not available"):
            _backend(tiny_sam, device="cuda:0")
    with pytest.raises(InputError, match="unknown SAM model"):
        build_sam_backend(model="vit_x", checkpoint="unused")
    monkeypatch.delenv(ck.ENV_CHECKPOINT, raising=False)
    with pytest.raises(DependencyError, match="no official checkpoint"):
        build_sam_backend(model="vit_test")
    backend = _backend(tiny_sam)
    with pytest.raises(InputError, match="point 1"):
        list(backend.propose(image, np.array([[1, 1], [W, 3]], np.float32)))
    with pytest.raises(InputError, match="uint8"):
        list(backend.propose(image.astype(np.float32), POINTS))
    assert list(backend.propose(image, np.zeros((0, 2), np.float32))) == []


def test_wrong_checkpoint_file_is_a_dependency_error(tiny_sam, tmp_path: Path) -> None:
    state = tiny_sam.state_dict()
    state.pop(next(iter(state)))
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(DependencyError, match="bad.pth"):
        build_sam_backend(model="vit_test", checkpoint=str(bad))


def test_mobile_sam_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mobile_sam", None)  # makes `import mobile_sam` fail
    with pytest.raises(DependencyError, match=r"sapnet\[mobile\]"):
        build_mobile_sam_backend(checkpoint="unused")
    with pytest.raises(DependencyError, match=r"sapnet\[mobile\]"):  # the CLI's default --model
        build_mobile_sam_backend(model="vit_h", checkpoint="unused")


@pytest.mark.skipif(
    importlib.util.find_spec("mobile_sam") is None, reason="mobile_sam not installed"
)
def test_mobile_sam_random_weights(tmp_path: Path, image: np.ndarray) -> None:
    torch.manual_seed(1)
    sam = build_model("vit_t")
    path = tmp_path / "mobile_sam_random.pt"
    torch.save(sam.state_dict(), path)
    backend = build_mobile_sam_backend(model="vit_h", checkpoint=str(path), batch_points=2)
    points = POINTS[:3]
    batches, masks, scores = _run(backend, image, points)
    assert [b.start for b in batches] == [0, 2]
    assert masks.shape == (3, 6, H, W) and masks.dtype == bool
    assert np.isfinite(scores).all()
    fp = backend.fingerprint()
    assert (fp["backend"], fp["model"], fp["attention"]) == ("mobile-sam", "vit_t", "original")
    # one encode only (1024 px TinyViT is the slow part); vit_test above checks the order contract


def test_bench_propose_smoke(tmp_path: Path) -> None:
    """benchmarks/bench_propose.py runs end to end on vit_test and writes its rows as JSON."""
    import importlib.util as iu
    import json

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_propose.py"
    spec = iu.spec_from_file_location("bench_propose", path)
    bench = iu.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "propose.json"
    args = ["--model", "vit_test", "--sections", "sam", "--points", "2", "--repeat", "1"]
    assert bench.main([*args, "--width", "64", "--height", "48", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    metrics = {(r["case"], r["metric"]) for r in rows}
    assert ("original fp32", "encode") in metrics and (
        "ratio",
        "per-point decode speed-up",
    ) in metrics
    assert all(r["value"] is None or r["value"] > 0 for r in rows)


def test_sam_store_passes_the_store_checks(
    tiny_ckpt: Path, coco4: dict[str, Path], points4: Path
) -> None:
    """A `sam` store made by run_propose meets tests/propose/store_checks.py (which sam2 stores must meet)."""
    from stages.propose.run import ProposeConfig, run_propose
    from tests.propose.store_checks import check_sam_family_store

    store = coco4["root"] / "sam.zarr"
    cfg = ProposeConfig(
        points4, coco4["images"], store, backend="sam", model="vit_test", checkpoint=tiny_ckpt,
        chunk_points=16, progress=False,
    )  # fmt: skip
    run_propose(cfg)
    check_sam_family_store(store, "sam", num_points=44)


def test_the_tiny_model_is_registered_not_built_in() -> None:
    from stages.propose.backends import sam

    assert "vit_test" not in sam.MODELS and "vit_test" in sam.known_models()
