"""Checkpoint resolution, download and verification, without any network access.

Downloads use ``file://`` URLs, a monkeypatched ``urlopen`` or the closed local port ``127.0.0.1:9``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from stages.common.errors import DependencyError, InputError
from stages.propose.backends import checkpoints as ck

PAYLOAD = b"not really a checkpoint\n" * 1000
OFFICIAL = dict(ck.CHECKPOINTS)  # before the fixture below swaps vit_b


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Empty cache folder, no checkpoint env var, and a fake vit_b spec matching PAYLOAD."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(ck.ENV_CACHE_DIR, str(cache))
    monkeypatch.delenv(ck.ENV_CHECKPOINT, raising=False)
    monkeypatch.setitem(ck.CHECKPOINTS, "vit_b", _spec(tmp_path))
    return cache


def _spec(
    tmp_path: Path, sha256: str | None = None, md5_prefix: str | None = None
) -> ck.CheckpointSpec:
    src = tmp_path / "served.pth"
    src.write_bytes(PAYLOAD)
    return ck.CheckpointSpec(
        filename="sam_vit_b_test.pth",
        url=src.as_uri(),
        sha256=sha256 or hashlib.sha256(PAYLOAD).hexdigest(),
        md5_prefix=md5_prefix or hashlib.md5(PAYLOAD).hexdigest()[:6],
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_sha256_file_known_digest(tmp_path: Path) -> None:
    f = tmp_path / "abc.bin"
    f.write_bytes(b"abc")
    assert ck.sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_explicit_path_beats_env_and_env_beats_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated: Path
) -> None:
    explicit, env = tmp_path / "explicit.pth", tmp_path / "env.pth"
    explicit.write_bytes(b"explicit")
    env.write_bytes(b"env")
    _isolated.mkdir()
    (_isolated / "sam_vit_b_test.pth").write_bytes(PAYLOAD)
    monkeypatch.setenv(ck.ENV_CHECKPOINT, str(env))

    got = ck.resolve_checkpoint("vit_b", explicit)
    assert (got.path, got.source) == (explicit, "explicit")
    assert got.sha256 == hashlib.sha256(b"explicit").hexdigest()

    got = ck.resolve_checkpoint("vit_b")
    assert (got.path, got.source) == (env, "env")

    monkeypatch.delenv(ck.ENV_CHECKPOINT)
    got = ck.resolve_checkpoint("vit_b")
    assert (got.path, got.source) == (_isolated / "sam_vit_b_test.pth", "cache")


def test_missing_explicit_or_env_file_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InputError, match="nope.pth"):
        ck.resolve_checkpoint("vit_b", tmp_path / "nope.pth")
    monkeypatch.setenv(ck.ENV_CHECKPOINT, str(tmp_path / "gone.pth"))
    with pytest.raises(InputError, match="SAPNET_SAM_CHECKPOINT"):
        ck.resolve_checkpoint("vit_b")


def test_download_is_verified_then_cached(_isolated: Path) -> None:
    got = ck.resolve_checkpoint("vit_b")
    assert got.source == "download"
    assert got.path == _isolated / "sam_vit_b_test.pth"
    assert got.path.read_bytes() == PAYLOAD
    assert got.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert _leftovers(_isolated) == ["sam_vit_b_test.pth"]  # no temporary file left
    assert ck.resolve_checkpoint("vit_b").source == "cache"


@pytest.mark.parametrize("bad", ["sha256", "md5"])
def test_checksum_mismatch_saves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated: Path, bad: str
) -> None:
    spec = (
        _spec(tmp_path, sha256="0" * 64)
        if bad == "sha256"
        else _spec(tmp_path, md5_prefix="ffffff")
    )
    monkeypatch.setitem(ck.CHECKPOINTS, "vit_b", spec)
    with pytest.raises(DependencyError, match="checksum mismatch"):
        ck.resolve_checkpoint("vit_b")
    assert _leftovers(_isolated) == []


def test_corrupt_cached_file_is_refused(_isolated: Path) -> None:
    _isolated.mkdir()
    (_isolated / "sam_vit_b_test.pth").write_bytes(PAYLOAD[:-1])
    with pytest.raises(DependencyError, match="delete it"):
        ck.resolve_checkpoint("vit_b")


def test_offline_error_says_what_to_download_and_where(_isolated: Path) -> None:
    with pytest.raises(DependencyError) as err:
        ck.resolve_checkpoint("vit_b", url="http://127.0.0.1:9/sam_vit_b_test.pth", timeout=5)
    msg = str(err.value)
    assert "http://127.0.0.1:9/sam_vit_b_test.pth" in msg
    assert str(_isolated / "sam_vit_b_test.pth") in msg
    assert ck.ENV_CHECKPOINT in msg and "--checkpoint" in msg
    assert _leftovers(_isolated) == []


def test_interrupted_download_leaves_no_partial_file(
    monkeypatch: pytest.MonkeyPatch, _isolated: Path
) -> None:
    class Broken(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            if self.tell() >= 1000:
                raise ConnectionResetError("peer went away")
            return super().read(min(n, 500))

    monkeypatch.setattr(ck.urllib.request, "urlopen", lambda url, timeout: Broken(PAYLOAD))
    with pytest.raises(DependencyError, match="peer went away"):
        ck.resolve_checkpoint("vit_b")
    assert _leftovers(_isolated) == []


def test_no_download_and_unknown_model(_isolated: Path) -> None:
    with pytest.raises(DependencyError, match="not found"):
        ck.resolve_checkpoint("vit_b", download=False)
    with pytest.raises(DependencyError, match="no official checkpoint"):
        ck.resolve_checkpoint("vit_test")


def test_official_table_is_consistent() -> None:
    # The hex in SAM's file names is an MD5 prefix; the SHA-256 of sam_vit_h_4b8939.pth starts a7bf3b02.
    assert sorted(OFFICIAL) == [
        "hiera_b+", "hiera_l", "hiera_s", "hiera_t", "vit_b", "vit_h", "vit_l", "vit_t"
    ]  # fmt: skip
    for spec in OFFICIAL.values():
        assert spec.url.endswith("/" + spec.filename)
        assert len(spec.sha256 or "") == 64
        if spec.md5_prefix:
            assert spec.filename.endswith(f"_{spec.md5_prefix}.pth")
    assert OFFICIAL["vit_h"].sha256.startswith("a7bf3b02")
    assert OFFICIAL["vit_t"].url.startswith(
        "https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/"
    )
    # SAM 2.1: Meta's 2024-09-28 release folder, the names of the official download script, own env var
    sam2 = {k: v for k, v in OFFICIAL.items() if k.startswith("hiera_")}
    assert {v.filename for v in sam2.values()} == {
        f"sam2.1_hiera_{n}.pt" for n in ("tiny", "small", "base_plus", "large")
    }
    for spec in sam2.values():
        assert spec.url.startswith("https://dl.fbaipublicfiles.com/segment_anything_2/092824/")
        assert spec.env_var == ck.ENV_SAM2_CHECKPOINT and spec.md5_prefix is None
        assert spec.size and spec.size > 100e6
    assert {v.env_var for k, v in OFFICIAL.items() if k.startswith("vit_")} == {ck.ENV_CHECKPOINT}


def test_each_family_reads_its_own_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated: Path
) -> None:
    sam_file, sam2_file = tmp_path / "sam.pth", tmp_path / "sam2.pt"
    sam_file.write_bytes(b"sam")
    sam2_file.write_bytes(b"sam2")
    monkeypatch.setenv(ck.ENV_CHECKPOINT, str(sam_file))
    monkeypatch.setenv(ck.ENV_SAM2_CHECKPOINT, str(sam2_file))
    assert ck.resolve_checkpoint("vit_h").path == sam_file
    assert ck.resolve_checkpoint("hiera_l").path == sam2_file
    assert ck.resolve_checkpoint("my_variant", env_var=ck.ENV_SAM2_CHECKPOINT).path == sam2_file
    monkeypatch.delenv(ck.ENV_SAM2_CHECKPOINT)
    with pytest.raises(DependencyError) as err:  # not the SAM file: offline, say where SAM 2 goes
        ck.resolve_checkpoint("hiera_l", download=False)
    assert "sam2.1_hiera_large.pt" in str(err.value) and ck.ENV_SAM2_CHECKPOINT in str(err.value)
