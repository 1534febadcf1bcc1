"""Devices and processes for every stage: one policy, one error, one place.

Device names (``--device``, each entry of ``--devices``):

* ``auto`` (or nothing): ``cuda`` when torch sees a CUDA device, else ``cpu``. This is every stage's default.
* ``cpu``; ``cuda`` (this process's GPU: ``cuda:LOCAL_RANK`` under torchrun, else the current one); ``cuda:N``;
  a bare number ``N`` means ``cuda:N``.
* A malformed name is an :class:`~stages.common.errors.InputError` (exit 2); a well-formed CUDA device that this
  machine does not have (no CUDA at all, or ``cuda:N`` with N >= the device count) is a
  :class:`~stages.common.errors.DeviceUnavailableError` (exit 5), in every stage.

Processes: torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``LOCAL_WORLD_SIZE``); :func:`dist_info`
reads them (one process, rank 0, when they are absent). :func:`process_group` initialises torch.distributed from
them (``env://``; nccl on CUDA, gloo on CPU) when there is more than one process and tears it down afterwards.
``--devices LIST`` (one worker per listed device on this machine, see :func:`spawn_workers`) splits the work on
its own, so it contradicts ``--shard`` and torchrun: :func:`check_parallel_options` refuses those combinations.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from stages.common.errors import DeviceUnavailableError, InputError, SapnetError

AUTO = "auto"
_NAME = re.compile(r"^(cpu|cuda(:\d+)?|\d+|auto)$")
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank ``rank`` of ``world_size`` (``local_rank`` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    torchrun: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when a process group of more than one process is up (collectives are needed)."""
        import torch.distributed as dist

        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def dist_info(env: Mapping[str, str] | None = None) -> DistInfo:
    """The torchrun variables of ``env`` (default ``os.environ``); a single process when ``RANK`` or
    ``WORLD_SIZE`` is missing. InputError for values that are not integers or not consistent."""
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return DistInfo()
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", "0"))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        shown = ", ".join(f"{k}={env[k]!r}" for k in TORCHRUN_VARS if k in env)
        raise InputError(f"torchrun environment variables must be integers, got {shown}") from None
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise InputError(
            f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} "
            f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}"
        )
    return DistInfo(rank, world, local_rank, local_world, torchrun=True)


def normalize_device(name: str | torch.device | None) -> str:
    """Check the syntax of a device name; returns ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (no hardware check).

    ``None`` -> ``auto``; ``"3"`` -> ``"cuda:3"``. InputError for anything else.
    """
    if name is None:
        return AUTO
    text = str(name).strip().lower()
    if not _NAME.match(text):
        raise InputError(
            f"invalid device {str(name)!r}: use auto, cpu, cuda, cuda:N or a GPU number N"
        )
    return f"cuda:{int(text)}" if text.isdigit() else text


def parse_devices(spec: str | Sequence[str]) -> list[str]:
    """``--devices``: ``"0,1"`` -> ``["cuda:0", "cuda:1"]``, ``"cpu,cpu"`` -> two CPU workers.

    Entries are checked as by :func:`normalize_device`; ``auto`` is not allowed (a list names devices), and an
    empty list is an InputError.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [normalize_device(d) for d in (str(i).strip() for i in items) if d]
    if not names:
        raise InputError(f"--devices {spec!r} names no device; e.g. 0,1 or cpu,cpu")
    if AUTO in names:
        raise InputError(f"--devices {spec!r}: list devices explicitly (auto is for --device)")
    return names


def cuda_device_count() -> int:
    """GPUs torch can use here (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(
    name: str | torch.device | None = None, info: DistInfo | None = None
) -> torch.device:
    """The device this process computes on, by the policy of the module docstring.

    Raises:
        InputError: a malformed name.
        DeviceUnavailableError: CUDA asked for but not usable here, or a GPU index this machine lacks.
    """
    text = normalize_device(name)
    info = dist_info() if info is None else info
    if text == AUTO:
        text = "cuda" if cuda_device_count() > 0 else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    count = cuda_device_count()
    if count == 0:
        raise DeviceUnavailableError(
            f"device {text!r} was requested but CUDA is not available to torch {torch.__version__} "
            f"(CUDA build {torch.version.cuda}); use --device cpu, or check the GPU driver"
        )
    if text == "cuda":
        index = info.local_rank if info.world_size > 1 else torch.cuda.current_device()
    else:
        index = int(text.split(":")[1])
    if index >= count:
        raise DeviceUnavailableError(
            f"device 'cuda:{index}' was requested but only {count} CUDA device(s) exist "
            f"(cuda:0..cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def resolve_devices(names: Sequence[str]) -> list[torch.device]:
    """Every ``--devices`` entry resolved (checked before any worker starts)."""
    single = DistInfo()
    return [resolve_device(n, single) for n in names]


def require_gpus(count: int) -> None:
    """DeviceUnavailableError unless at least ``count`` CUDA devices exist (e.g. ``train-seg --num-gpus``)."""
    have = cuda_device_count()
    if have < count:
        raise DeviceUnavailableError(
            f"{count} GPU process(es) were requested but this machine has {have} CUDA device(s)"
        )


def check_parallel_options(
    devices: str | Sequence[str] | None, shard: str | None, info: DistInfo | None = None
) -> None:
    """InputError for contradictory ways of splitting one run: ``--devices`` with ``--shard`` or torchrun."""
    if not devices:
        return
    shown = devices if isinstance(devices, str) else ",".join(devices)
    if shard is not None:
        raise InputError(
            f"--devices {shown} and --shard {shard} contradict each other: --devices splits the "
            "whole run among its own workers; use --devices on one machine, or one --shard per process"
        )
    info = dist_info() if info is None else info
    if info.torchrun and info.world_size > 1:
        raise InputError(
            f"--devices cannot be used under torchrun (WORLD_SIZE={info.world_size}): torchrun already "
            "starts one process per GPU; use --device cuda"
        )


def shard_of(shard: str | None, info: DistInfo | None = None) -> tuple[int, int]:
    """``--shard "I/N"`` -> ``(I, N)``; without it, ``(RANK, WORLD_SIZE)`` under torchrun, else ``(0, 1)``."""
    if shard is None:
        info = dist_info() if info is None else info
        return info.rank, info.world_size
    try:
        i_str, n_str = shard.split("/")
        i, n = int(i_str), int(n_str)
    except ValueError:
        raise InputError(f"--shard must look like I/N (e.g. 0/4), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {shard}: need 0 <= I < N")
    return i, n


@contextlib.contextmanager
def process_group(
    device: torch.device, info: DistInfo, timeout: _dt.timedelta = _dt.timedelta(minutes=60)
) -> Iterator[bool]:
    """Initialise torch.distributed from the torchrun environment for the body; yields whether it did.

    Nothing happens for a single process or when a group is already up (the caller's, e.g. a test's). nccl on
    CUDA (after ``torch.cuda.set_device``), gloo on CPU. The group is destroyed on the way out.
    """
    import torch.distributed as dist

    if info.world_size <= 1 or dist.is_initialized():
        yield False
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    try:
        yield True
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------
# Worker processes of ``--devices``: errors keep their type and exit code; workers die with their parent.

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` (its parent) ends, even by ``kill -9``.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (SIGKILL, because a shell's background job ignores SIGINT, the
    signal torch's spawn asks for). Elsewhere, and as a fallback, a daemon thread polls the parent pid. If the
    parent is already gone (it died before this ran), exit at once.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:
        os._exit(1)
    if not armed:

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="sapnet-parent-watch", daemon=True).start()


def _error_record(err: SapnetError) -> dict[str, Any]:
    return {"error": type(err).__name__, "exit_code": err.exit_code, "message": str(err)}


def _rebuild_error(record: dict[str, Any]) -> SapnetError:
    """The worker's SapnetError again, with its class (or at least its exit code) and message."""
    from stages.common import errors

    cls = getattr(errors, record["error"], None)
    if isinstance(cls, type) and issubclass(cls, SapnetError):
        return cls(record["message"])
    err = SapnetError(record["message"])
    err.exit_code = int(record["exit_code"])
    return err


def _worker_main(
    index: int, fn: Callable[..., Any], args: tuple, parent_pid: int, queue: Any
) -> None:
    die_with_parent(parent_pid)
    try:
        result = fn(index, *args)
    except SapnetError as err:  # an expected failure: report it as such (no traceback), then fail
        queue.put((index, _error_record(err)))
        sys.exit(err.exit_code)
    queue.put((index, {"result": result}))


def spawn_workers(fn: Callable[..., Any], args: tuple, nprocs: int) -> list[Any]:
    """Run ``fn(i, *args)`` for ``i < nprocs`` in spawned processes; returns their results in order.

    A worker's :class:`SapnetError` is raised here again with its type, exit code and message (the first one
    to fail wins; the other workers are stopped). Any other worker exception becomes a RuntimeError with the
    worker's traceback (an unexpected error). Workers end when this process ends, even by ``kill -9``.
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    workers = mp.start_processes(
        _worker_main,
        args=(fn, args, os.getpid(), queue),
        nprocs=nprocs,
        join=False,
        start_method="spawn",
    )
    records: dict[int, dict[str, Any]] = {}

    def drain() -> None:
        while not queue.empty():
            i, record = queue.get()
            records[i] = record

    failure: Exception | None = None
    while True:
        drain()
        try:
            if workers.join(timeout=0.2):
                break
        except (
            Exception
        ) as exc:  # ProcessRaisedException / ProcessExitedException; the others are stopped
            failure = exc
            break
    drain()
    errors = [r for _, r in sorted(records.items()) if "error" in r]
    if errors:
        raise _rebuild_error(errors[0])
    if failure is not None:
        raise RuntimeError(f"a worker process failed: {failure}") from failure
    return [records[i]["result"] for i in range(nprocs)]
