"""Find, download and verify SAM, MobileSAM and SAM 2.1 checkpoint files.

Resolution order of :func:`resolve_checkpoint` (first hit wins):

1. an explicit path (``--checkpoint`` / ``checkpoint=``);
2. the model family's environment variable: ``SAPNET_SAM_CHECKPOINT`` for SAM / MobileSAM (``vit_*``),
   ``SAPNET_SAM2_CHECKPOINT`` for SAM 2.1 (``hiera_*``), so a SAM file set for one backend is never fed to the
   other;
3. the official file name in the cache folder (``SAPNET_CACHE_DIR``, else ``~/.cache/sapnet/checkpoints``);
4. a download of the official file into that cache folder (atomic: temporary file + ``os.replace``).

Checksums. The hex in the official SAM file names (``sam_vit_h_4b8939.pth``) is the start of the file's **MD5**,
not of its SHA-256 (the published SHA-256 of that file begins ``a7bf3b02``), so a torch.hub-style "name prefix =
SHA-256 prefix" check would reject the genuine files. Each :class:`CheckpointSpec` therefore carries the full
published SHA-256 and the MD5 prefix from the name; both are checked on download and the SHA-256 again when a
cached official file is used. Files given explicitly (path or environment variable) may be fine-tuned weights: they
are not compared with the official digests, only their SHA-256 is recorded (the proposal store's fingerprint).

SAM 2.1. Meta publishes the four files (``dl.fbaipublicfiles.com/segment_anything_2/092824/``) without checksums
and their names carry none. The SHA-256 digests below are those of the same files in Meta's Hugging Face
repositories (``facebook/sam2.1-hiera-{tiny,small,base-plus,large}``, whose Git-LFS object ids are the files'
SHA-256), and several independent projects pin the same digests and sizes for the ``dl.fbaipublicfiles.com`` URLs.
They could not be checked against a download here (no network access to the weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stages.common.errors import DependencyError, InputError
from stages.common.io import remember_sha256, sha256_file

ENV_CHECKPOINT = "SAPNET_SAM_CHECKPOINT"
ENV_SAM2_CHECKPOINT = "SAPNET_SAM2_CHECKPOINT"
ENV_CACHE_DIR = "SAPNET_CACHE_DIR"
DEFAULT_TIMEOUT_S = (
    60.0  # per blocking socket operation (connect / each read), not for the whole file
)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CheckpointSpec:
    """An official checkpoint file.

    Attributes:
        filename: file name in the cache folder (the official one).
        url: where it is published.
        sha256: full published SHA-256 hex digest, or None when unknown (then it is only recorded).
        md5_prefix: leading hex digits of the MD5 that the official file name embeds, or None.
        size: size in bytes as published (informational, shown in messages).
        env_var: the environment variable that names a file for this model family (step 2).
    """

    filename: str
    url: str
    sha256: str | None = None
    md5_prefix: str | None = None
    size: int | None = None
    env_var: str = ENV_CHECKPOINT


_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"

CHECKPOINTS: dict[str, CheckpointSpec] = {
    "vit_h": CheckpointSpec(
        "sam_vit_h_4b8939.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        "4b8939",
        2_564_550_879,
    ),
    "vit_l": CheckpointSpec(
        "sam_vit_l_0b3195.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        "0b3195",
    ),
    "vit_b": CheckpointSpec(
        "sam_vit_b_01ec64.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "01ec64",
    ),
    "vit_t": CheckpointSpec(
        "mobile_sam.pt",
        "https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/master/weights/mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        None,
        40_728_226,
    ),
    # SAM 2.1 (released 2024-09-29); digests: see the module docstring.
    "hiera_t": CheckpointSpec(
        "sam2.1_hiera_tiny.pt",
        f"{_SAM2_URL}/sam2.1_hiera_tiny.pt",
        "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
        None,
        156_008_466,
        ENV_SAM2_CHECKPOINT,
    ),
    "hiera_s": CheckpointSpec(
        "sam2.1_hiera_small.pt",
        f"{_SAM2_URL}/sam2.1_hiera_small.pt",
        "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
        None,
        184_416_285,
        ENV_SAM2_CHECKPOINT,
    ),
    "hiera_b+": CheckpointSpec(
        "sam2.1_hiera_base_plus.pt",
        f"{_SAM2_URL}/sam2.1_hiera_base_plus.pt",
        "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
        None,
        323_606_802,
        ENV_SAM2_CHECKPOINT,
    ),
    "hiera_l": CheckpointSpec(
        "sam2.1_hiera_large.pt",
        f"{_SAM2_URL}/sam2.1_hiera_large.pt",
        "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
        None,
        898_083_611,
        ENV_SAM2_CHECKPOINT,
    ),
}


def cache_dir() -> Path:
    """The checkpoint cache folder: ``$SAPNET_CACHE_DIR`` or ``~/.cache/sapnet/checkpoints``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sapnet" / "checkpoints"


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint file ready to load: where it is, its SHA-256 and how it was found."""

    path: Path
    sha256: str
    source: str  # "explicit" | "env" | "cache" | "download"


def _manual_hint(spec: CheckpointSpec, target: Path) -> str:
    return (
        f"Download {spec.url} yourself and save it as {target} "
        f"(or anywhere, then pass --checkpoint PATH or set {spec.env_var}=PATH; "
        f"{ENV_CACHE_DIR} changes the cache folder)."
    )


def _existing_file(path: Path, what: str) -> Path:
    path = path.expanduser()
    if not path.is_file():
        raise InputError(f"SAM checkpoint {path} ({what}) does not exist or is not a file")
    return path


def resolve_checkpoint(
    model: str,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    env_var: str | None = None,
) -> ResolvedCheckpoint:
    """Find (or download) the checkpoint for ``model`` following the module's resolution order.

    Args:
        model: a key of :data:`CHECKPOINTS` (``vit_h`` ... ``vit_t``, ``hiera_t`` ... ``hiera_l``); other names
            need an explicit file (path or environment variable).
        checkpoint: explicit file path; wins over everything else.
        download: allow step 4 (download); when False a missing file raises DependencyError.
        url: override of the official URL (mirrors, tests).
        timeout: seconds per blocking socket operation of the download.
        env_var: the environment variable of step 2; default: the one of ``model``'s family
            (``CHECKPOINTS[model].env_var``), ``SAPNET_SAM_CHECKPOINT`` for names not in the table.

    Raises:
        InputError: an explicit / environment path that is not a file.
        DependencyError: no file found and the download is impossible, fails or has a wrong checksum.
    """
    if checkpoint is not None and str(checkpoint) != "":
        path = _existing_file(Path(checkpoint), "--checkpoint")
        return ResolvedCheckpoint(path, sha256_file(path), "explicit")
    spec = CHECKPOINTS.get(model)
    if env_var is None:
        env_var = spec.env_var if spec is not None else ENV_CHECKPOINT
    env = os.environ.get(env_var)
    if env:
        path = _existing_file(Path(env), f"from ${env_var}")
        return ResolvedCheckpoint(path, sha256_file(path), "env")
    if spec is None:
        raise DependencyError(
            f"model {model!r} has no official checkpoint to download; pass --checkpoint PATH or set "
            f"{env_var}=PATH (official models: {sorted(CHECKPOINTS)})"
        )
    if url is not None:
        spec = dataclasses.replace(spec, url=url)
    target = cache_dir() / spec.filename
    if target.is_file():
        digest = sha256_file(target)
        if spec.sha256 is not None and digest != spec.sha256:
            raise DependencyError(
                f"cached SAM checkpoint {target} has SHA-256 {digest}, expected {spec.sha256} "
                f"(corrupt or partial file): delete it to download again. "
                + _manual_hint(spec, target)
            )
        return ResolvedCheckpoint(target, digest, "cache")
    if not download:
        raise DependencyError(
            f"SAM checkpoint for {model} not found. " + _manual_hint(spec, target)
        )
    digest = download_checkpoint(spec, target, timeout=timeout)
    return ResolvedCheckpoint(target, digest, "download")


def download_checkpoint(spec: CheckpointSpec, target: Path, *, timeout: float) -> str:
    """Download ``spec.url`` to ``target`` atomically and verify it; return its SHA-256.

    The bytes go to a temporary file in ``target``'s folder, are hashed while they stream, and only a verified
    file is renamed onto ``target`` (``os.replace``), so an interrupted or corrupt download never leaves a file
    under the official name. Raises DependencyError with manual instructions on any failure.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{spec.filename}.", suffix=".part", dir=target.parent
        )
    except OSError as e:
        raise DependencyError(
            f"cannot write to checkpoint cache folder {target.parent}: {e}. "
            + _manual_hint(spec, target)
        ) from e
    tmp = Path(tmp_name)
    sha, md5 = hashlib.sha256(), hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(spec.url, timeout=timeout) as response:
                    for block in iter(lambda: response.read(_CHUNK), b""):
                        out.write(block)
                        sha.update(block)
                        md5.update(block)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise DependencyError(
                    f"could not download SAM checkpoint from {spec.url}: {reason}. "
                    + _manual_hint(spec, target)
                ) from e
        digest = sha.hexdigest()
        if spec.sha256 is not None and digest != spec.sha256:
            raise DependencyError(
                f"checksum mismatch for {spec.url}: SHA-256 {digest}, expected {spec.sha256}; "
                "nothing was saved. " + _manual_hint(spec, target)
            )
        if spec.md5_prefix is not None and not md5.hexdigest().startswith(spec.md5_prefix):
            raise DependencyError(
                f"checksum mismatch for {spec.url}: MD5 {md5.hexdigest()} does not start with "
                f"{spec.md5_prefix} (from the file name); nothing was saved. "
                + _manual_hint(spec, target)
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    remember_sha256(target, digest)
    return digest
