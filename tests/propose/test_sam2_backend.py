"""SAM 2.1 backend through the real ``sam2`` builder and predictor, random weights, CPU.

Most tests use ``hiera_t`` at a 256 px input (``tests/propose/sam2_tiny.py``); the full 1024 px ``hiera_t`` is
only built, never run, to keep the file fast.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

from stages.common.errors import DependencyError, InputError  # noqa: E402
from stages.common.masks import masks_to_boxes  # noqa: E402
from stages.propose.backends import ProposalBackend, get_backend  # noqa: E402
from stages.propose.backends import checkpoints as ck  # noqa: E402
from stages.propose.backends.sam2 import (  # noqa: E402
    MODELS,
    Sam2Backend,
    build_model,
    build_sam2_backend,
    feature_sizes,
    load_sam2,
)
from tests.propose.sam2_tiny import TINY, TINY_VARIANT, save_random_hiera_t  # noqa: E402

H, W = 48, 64
POINTS = np.array([[5, 6], [40, 30], [63, 47], [0, 0], [20.4, 33.7]], dtype=np.float32)


@pytest.fixture(autouse=True)
def _tiny_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, TINY, TINY_VARIANT)
    monkeypatch.delenv(ck.ENV_SAM2_CHECKPOINT, raising=False)
    monkeypatch.delenv(ck.ENV_CHECKPOINT, raising=False)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_hiera_t(tmp_path_factory.mktemp("sam2") / "hiera_t_random.pt")


@pytest.fixture(scope="module")
def tiny_model(tiny_ckpt: Path) -> torch.nn.Module:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(MODELS, TINY, TINY_VARIANT)
        return load_sam2(TINY, tiny_ckpt)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _backend(model: torch.nn.Module, **kw) -> Sam2Backend:
    return Sam2Backend(copy.deepcopy(model), model=TINY, checkpoint_sha256="x", **kw)


def _run(backend, image: np.ndarray, points: np.ndarray = POINTS):
    batches = list(backend.propose(image, points))
    masks = np.concatenate([b.masks for b in batches])
    scores = np.concatenate([b.scores for b in batches])
    return batches, masks, scores


@pytest.fixture(scope="module")
def reference(tiny_model: torch.nn.Module, image: np.ndarray):
    """``(batches, masks, scores, encoder inputs)`` of the backend (batch_points=2) for POINTS on ``image``."""
    backend = _backend(tiny_model, batch_points=2)
    calls: list[tuple[int, ...]] = []
    forward_image = backend.sam2.forward_image
    backend.sam2.forward_image = lambda x: calls.append(tuple(x.shape)) or forward_image(x)
    return (*_run(backend, image), calls)


def test_checkpoint_round_trip_through_the_real_loading_path(
    tiny_ckpt: Path, image: np.ndarray, reference
) -> None:
    """get_backend("sam2") (file -> sam2's builder -> strict load) reproduces the in-memory model's
    proposals; with num_proposals=3 exactly the first three of them."""
    _, ref_masks, ref_scores, _ = reference
    loaded = get_backend(
        "sam2", model=TINY, checkpoint=str(tiny_ckpt), num_proposals=3, batch_points=2
    )
    assert isinstance(loaded, ProposalBackend) and len(loaded.proposal_order) == 3
    fp = loaded.fingerprint()
    assert fp["checkpoint_sha256"] == ck.sha256_file(tiny_ckpt)
    assert (fp["backend"], fp["model"], fp["num_proposals"], fp["precision"]) == (
        "sam2",
        TINY,
        3,
        "fp32",
    )
    assert fp["image_size"] == 256
    _, masks3, scores3 = _run(loaded, image)
    assert np.array_equal(masks3, ref_masks[:, :3]) and np.array_equal(scores3, ref_scores[:, :3])


def test_shapes_dtypes_batches_and_one_encode(reference) -> None:
    batches, masks, scores, encodes = reference
    assert encodes == [(1, 3, 256, 256)]  # one encoder run for the image, shared by every batch
    assert [b.start for b in batches] == [0, 2, 4]
    assert [b.masks.shape for b in batches] == [(2, 6, H, W), (2, 6, H, W), (1, 6, H, W)]
    assert masks.dtype == bool and scores.dtype == np.float32 and scores.shape == (5, 6)
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()  # sigmoid IoU
    assert masks.any() and not masks.all()  # random weights still give non-trivial masks


def test_order_contract_against_the_plain_predictor(
    tiny_model: torch.nn.Module, image: np.ndarray, reference
) -> None:
    """Proposals 0-2 = SAM2ImagePredictor.predict(point); 3-5 = predict(point, box around the largest)."""
    _, masks, scores, _ = reference
    ref = SAM2ImagePredictor(copy.deepcopy(tiny_model))
    ref._bb_feat_sizes = feature_sizes(ref.model)
    ref.set_image(image)
    for k, (x, y) in enumerate(POINTS):
        m1, s1, _ = ref.predict(np.array([[x, y]]), np.array([1]), multimask_output=True)
        m1 = m1 > 0.5  # the public API returns float 0/1 masks
        assert (masks[k, :3] != m1).mean() < 1e-3
        np.testing.assert_allclose(scores[k, :3], s1, rtol=1e-4, atol=1e-5)
        largest = masks[k, int(np.argmax(masks[k, :3].reshape(3, -1).sum(1)))]
        box = masks_to_boxes(largest[None])[0] - np.array([0, 0, 1, 1], np.float32)  # inclusive
        m2, s2, _ = ref.predict(np.array([[x, y]]), np.array([1]), box=box, multimask_output=True)
        assert (masks[k, 3:] != (m2 > 0.5)).mean() < 1e-3
        np.testing.assert_allclose(scores[k, 3:], s2, rtol=1e-4, atol=1e-5)


def test_batching_invariance(tiny_model: torch.nn.Module, image: np.ndarray, reference) -> None:
    """Decoding 1 or all 5 points per call gives the same proposals as 2 per call (the reference)."""
    backend = _backend(tiny_model, batch_points=1)
    _, m2, s2, _ = reference
    backend.encode(image)
    singles = [backend.decode(POINTS[i : i + 1]) for i in range(len(POINTS))]
    m1 = torch.cat([m for m, _ in singles]).numpy()
    s1 = torch.cat([s for _, s in singles]).numpy()
    m5, s5 = (t.numpy() for t in backend.decode(POINTS))
    for m, sc in ((m1, s1), (m5, s5)):
        assert (m != m2).mean() < 1e-4
        np.testing.assert_allclose(sc, s2, rtol=1e-4, atol=1e-5)


def test_feature_sizes_follow_the_input_size(tiny_model: torch.nn.Module) -> None:
    # The official predictor hard-codes the 1024 px values: (256, 256), (128, 128), (64, 64).
    assert feature_sizes(build_model("hiera_t")) == [(256, 256), (128, 128), (64, 64)]
    assert feature_sizes(tiny_model) == [(64, 64), (32, 32), (16, 16)]


def test_default_model_and_precision_on_cpu_and_family_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --model / --precision, CPU gets hiera_t in fp32; the file comes from $SAPNET_SAM2_CHECKPOINT,
    and $SAPNET_SAM_CHECKPOINT (a SAM file for the sam backend) is not used by sam2."""
    sam_file = tmp_path / "sam_vit_b.pth"
    sam_file.write_bytes(b"not a SAM 2 file")
    monkeypatch.setenv(ck.ENV_CHECKPOINT, str(sam_file))
    path = save_random_hiera_t(tmp_path / "hiera_t.pt", seed=3)
    monkeypatch.setenv(ck.ENV_SAM2_CHECKPOINT, str(path))
    backend = build_sam2_backend(device="cpu")
    fp = backend.fingerprint()
    assert (fp["model"], fp["precision"], fp["image_size"]) == ("hiera_t", "fp32", 1024)
    assert fp["checkpoint_sha256"] == ck.sha256_file(path)


def test_option_and_input_errors(tiny_model: torch.nn.Module, image: np.ndarray) -> None:
    with pytest.raises(InputError, match="3 or 6"):
        _backend(tiny_model, num_proposals=4)
    with pytest.raises(InputError, match="CUDA"):
        _backend(tiny_model, precision="bf16")
    with pytest.raises(InputError, match="device"):
        _backend(tiny_model, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DependencyError, match="CUDA is not available"):
            build_sam2_backend(device="cuda", checkpoint="unused")
    with pytest.raises(InputError, match="unknown SAM 2 model"):
        build_sam2_backend(model="vit_h", checkpoint="unused")
    with pytest.raises(DependencyError, match=f"no official checkpoint.*{ck.ENV_SAM2_CHECKPOINT}"):
        build_sam2_backend(model=TINY)
    backend = _backend(tiny_model)
    with pytest.raises(InputError, match="point 1"):
        list(backend.propose(image, np.array([[1, 1], [W, 3]], np.float32)))
    with pytest.raises(InputError, match="uint8"):
        list(backend.propose(image.astype(np.float32), POINTS))
    assert list(backend.propose(image, np.zeros((0, 2), np.float32))) == []


def test_wrong_checkpoint_file_is_a_dependency_error(tiny_ckpt: Path, tmp_path: Path) -> None:
    state = torch.load(tiny_ckpt, weights_only=True)["model"]
    state.pop(next(iter(state)))
    bad = tmp_path / "bad_sam2.pt"
    torch.save({"model": state}, bad)
    with pytest.raises(DependencyError, match="bad_sam2.pt"):
        build_sam2_backend(model=TINY, checkpoint=str(bad))
    sam1 = tmp_path / "sam1_state.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1)}, sam1)
    with pytest.raises(DependencyError, match="sam1_state.pth.*not a hiera_t_256"):
        build_sam2_backend(model=TINY, checkpoint=str(sam1))


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)  # makes the import fail
    with pytest.raises(DependencyError, match=r"sapnet\[sam2\]"):
        build_sam2_backend(model="hiera_t", checkpoint="unused")
    with pytest.raises(DependencyError, match="SAM2_BUILD_CUDA=0"):
        build_model("hiera_t")


def test_offline_without_a_file_says_what_to_download_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv(ck.ENV_CACHE_DIR, str(cache))
    spec = ck.CHECKPOINTS["hiera_t"]
    monkeypatch.setitem(
        ck.CHECKPOINTS, "hiera_t", ck.dataclasses.replace(spec, url="http://127.0.0.1:9/x.pt")
    )
    with pytest.raises(DependencyError) as err:
        build_sam2_backend(model="hiera_t")
    msg = str(err.value)
    assert "http://127.0.0.1:9/x.pt" in msg and str(cache / "sam2.1_hiera_tiny.pt") in msg
    assert ck.ENV_SAM2_CHECKPOINT in msg and "--checkpoint" in msg
    assert not cache.exists() or list(cache.iterdir()) == []


def test_bench_propose_rows_for_sam2_and_model_ratios(tmp_path: Path) -> None:
    """benchmarks/bench_propose.py times a SAM 2 model next to a SAM one and writes their ratios."""
    import importlib.util as iu
    import json

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_propose.py"
    spec = iu.spec_from_file_location("bench_propose", path)
    bench = iu.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "propose.json"
    args = ["--model", f"vit_test,{TINY}", "--sections", "sam", "--points", "2", "--repeat", "1"]
    assert bench.main([*args, "--width", "64", "--height", "48", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    got = {(r["section"], r["case"], r["metric"]) for r in rows}
    assert (f"sam {TINY}", "sapnet fp32+batched", "encode") in got
    assert (f"sam {TINY}", "original fp32", "decode (1 call/point)") in got
    assert ("models", f"{TINY} vs vit_test", "encode speed-up") in got
    ratios = {r["case"]: r["value"] for r in rows if r["metric"] == "encode speed-up"}
    assert ratios[f"{TINY} vs vit_test"] > 0 and ratios["vit_test vs vit_test"] == 1.0


def test_sam2_root_log_lines_are_dropped_only_during_encode(caplog) -> None:
    import logging

    import sam2.sam2_image_predictor as predictor_module

    from stages.propose.backends.sam2 import _quiet_sam2_root_logs

    def sam2_record() -> logging.LogRecord:
        path = predictor_module.__file__
        return logging.LogRecord("root", logging.INFO, path, 1, "from sam2", None, None)

    with caplog.at_level(logging.INFO):
        with _quiet_sam2_root_logs():
            logging.getLogger().handle(sam2_record())
            logging.getLogger().info("ours")
        logging.getLogger().handle(sam2_record())
    assert [r.getMessage() for r in caplog.records] == ["ours", "from sam2"]
