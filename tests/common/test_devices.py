"""The device and process policy (stages.common.devices), on CPU: faked torchrun environments, faked GPUs, and
CUDA requested where there is none."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sapnet_cli.app import main
from stages.common import devices as dev
from stages.common.errors import DependencyError, DeviceUnavailableError, InputError

TORCHRUN_2x4 = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this machine has cuda:0 and cuda:1 (only the resolution is tested, nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in dev.TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


def test_dist_info_reads_torchrun_variables():
    assert dev.dist_info({}) == dev.DistInfo()
    assert (
        dev.dist_info({"LOCAL_RANK": "3"}) == dev.DistInfo()
    )  # RANK/WORLD_SIZE missing: one process
    info = dev.dist_info(TORCHRUN_2x4)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (5, 8, 1, 4)
    assert info.torchrun and not info.is_main and not info.active
    only = dev.dist_info({"RANK": "0", "WORLD_SIZE": "2"})
    assert (only.local_rank, only.local_world_size, only.is_main) == (0, 2, True)
    with pytest.raises(InputError, match="integers"):
        dev.dist_info({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(InputError, match="inconsistent"):
        dev.dist_info({"RANK": "2", "WORLD_SIZE": "2"})


def test_device_names_are_normalised_or_refused():
    assert dev.normalize_device(None) == "auto"
    assert dev.normalize_device(" CUDA:1 ") == "cuda:1"
    assert dev.normalize_device("3") == "cuda:3"
    assert dev.normalize_device(torch.device("cpu")) == "cpu"
    for bad in ("gpu", "cuda:", "cuda:x", "tpu:0", "", "-1", "cuda:0,cuda:1"):
        with pytest.raises(InputError, match="invalid device"):
            dev.normalize_device(bad)


def test_devices_lists():
    assert dev.parse_devices("0,1") == ["cuda:0", "cuda:1"]
    assert dev.parse_devices(" cpu , cpu ") == ["cpu", "cpu"]
    assert dev.parse_devices(["cuda:2", "3"]) == ["cuda:2", "cuda:3"]
    for bad, msg in ((",", "names no device"), ("auto,cpu", "explicitly"), ("0,x", "invalid")):
        with pytest.raises(InputError, match=msg):
            dev.parse_devices(bad)


def test_default_is_cuda_when_available(no_cuda, clean_env):
    assert dev.resolve_device(None) == torch.device("cpu")
    assert dev.resolve_device("auto") == torch.device("cpu")


def test_default_picks_the_gpu_when_there_is_one(two_gpus, clean_env):
    assert dev.resolve_device(None) == torch.device("cuda", 0)
    assert dev.resolve_device("cpu") == torch.device("cpu")
    assert dev.resolve_device("1") == torch.device("cuda", 1)


def test_bare_cuda_under_torchrun_is_the_local_rank(two_gpus):
    info = dev.dist_info(
        {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    )
    assert dev.resolve_device("cuda", info) == torch.device("cuda", 1)
    assert dev.resolve_device("auto", info) == torch.device("cuda", 1)
    assert dev.resolve_device("cuda:0", info) == torch.device("cuda", 0)  # explicit wins
    assert dev.resolve_device("cpu", info) == torch.device("cpu")


def test_missing_gpus_are_one_error_with_exit_code_5(no_cuda):
    for name in ("cuda", "cuda:0", "0"):
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available") as err:
            dev.resolve_device(name, dev.DistInfo())
        assert err.value.exit_code == 5 and isinstance(err.value, DependencyError)
    with pytest.raises(DeviceUnavailableError):
        dev.resolve_devices(["cpu", "cuda:1"])
    with pytest.raises(DeviceUnavailableError, match="2 GPU process"):
        dev.require_gpus(2)


def test_gpu_index_beyond_the_count(two_gpus):
    with pytest.raises(DeviceUnavailableError, match="only 2 CUDA device"):
        dev.resolve_device("cuda:7", dev.DistInfo())
    with pytest.raises(DeviceUnavailableError, match="cuda:2"):
        dev.resolve_devices(["0", "1", "2"])
    dev.require_gpus(2)


def test_contradictory_parallel_options():
    dev.check_parallel_options(None, "1/2")
    dev.check_parallel_options(["cpu", "cpu"], None, dev.DistInfo())
    with pytest.raises(InputError, match="--devices cpu,cpu and --shard 1/2 contradict"):
        dev.check_parallel_options(["cpu", "cpu"], "1/2")
    with pytest.raises(InputError, match="torchrun"):
        dev.check_parallel_options(["cuda:0"], None, dev.dist_info(TORCHRUN_2x4))


def test_shards_from_option_or_torchrun():
    assert dev.shard_of("1/4") == (1, 4)
    assert dev.shard_of(None, dev.dist_info({"RANK": "2", "WORLD_SIZE": "3"})) == (2, 3)
    assert dev.shard_of(None, dev.DistInfo()) == (0, 1)
    assert dev.shard_of("0/2", dev.dist_info(TORCHRUN_2x4)) == (0, 2)  # the option wins
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(InputError):
            dev.shard_of(bad)


def test_single_process_needs_no_group():
    with dev.process_group(torch.device("cpu"), dev.DistInfo()) as started:
        assert started is False
    with dev.process_group(
        torch.device("cpu"), dev.dist_info({"RANK": "0", "WORLD_SIZE": "1"})
    ) as s:
        assert s is False


# --- every stage, through the CLI: same exit code and message for CUDA requested without CUDA ---------


def _exit(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code), capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_every_stage_refuses_cuda_without_cuda_with_exit_5(tmp_path, capsys, clean_env):
    train = tmp_path / "train.json"
    train.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    calls = {
        "propose": ["propose", "--annotations", str(train), "--images", str(tmp_path), "--store",
                    str(tmp_path / "s.zarr"), "--backend", "classical", "--device", "cuda"],
        "select": ["select", "--store", str(tmp_path / "s.zarr"), "--images", str(tmp_path), "--out",
                   str(tmp_path / "sel"), "--device", "cuda:0"],
        "train-seg": ["train-seg", "--train", str(train), "--images", str(tmp_path), "--out",
                      str(tmp_path / "seg"), "--device", "cuda"],
    }  # fmt: skip
    for stage, argv in calls.items():
        code, err = _exit(argv, capsys)
        assert code == 5, (stage, err)
        assert "was requested but CUDA is not available" in err, (stage, err)
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "sel").exists()


def test_bad_device_name_is_exit_2_in_every_stage(tmp_path, capsys, clean_env):
    train = tmp_path / "train.json"
    train.write_text("{}")
    for argv in (
        ["propose", "--annotations", str(train), "--images", str(tmp_path), "--store",
         str(tmp_path / "s.zarr"), "--device", "gpu0"],
        ["select", "--store", str(tmp_path / "s.zarr"), "--images", str(tmp_path), "--out",
         str(tmp_path / "sel"), "--device", "gpu0"],
        ["train-seg", "--train", str(train), "--images", str(tmp_path), "--out",
         str(tmp_path / "seg"), "--device", "gpu0"],
    ):  # fmt: skip
        code, err = _exit(argv, capsys)
        assert code == 2 and "invalid device 'gpu0'" in err, (argv[0], err)


# --- --devices workers -----------------------------------------------------------------------------------


def _fail_on_one(index: int, bad: int) -> int:
    if index == bad:
        raise InputError(f"worker {index}: image file x.jpg cannot be decoded")
    return index * 10


def _crash(index: int) -> int:
    raise ValueError("a bug")


def test_workers_return_results_and_keep_error_types():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    assert dev.spawn_workers(_fail_on_one, (-1,), 2) == [0, 10]
    with pytest.raises(InputError, match="worker 1: image file x.jpg cannot be decoded"):
        dev.spawn_workers(_fail_on_one, (1,), 2)
    with pytest.raises(RuntimeError, match="a worker process failed"):
        dev.spawn_workers(_crash, (), 1)


@pytest.mark.cuda
def test_real_gpus_resolve(clean_env):
    n = torch.cuda.device_count()
    assert dev.resolve_device(None) == torch.device("cuda", torch.cuda.current_device())
    assert dev.resolve_device(str(n - 1)) == torch.device("cuda", n - 1)
    with pytest.raises(DeviceUnavailableError, match=f"only {n} CUDA device"):
        dev.resolve_device(f"cuda:{n}")
    dev.require_gpus(n)
