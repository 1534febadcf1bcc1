"""A 2-process gloo DDP run on CPU (torch.multiprocessing, the torchrun environment variables)."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from stages.common.selections import load_selections


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data_root: str, out: str) -> None:
    from pathlib import Path

    import stages.select.run as run_mod
    from stages.synthetic.generate import SyntheticConfig, SyntheticData
    from tests.select.synth import TINY_DATA, tiny_config

    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
        }
    )
    torch.set_num_threads(1)
    real = run_mod.train_selector

    def keep_weights(*args, **kwargs):  # every rank leaves its own copy of the trained weights
        result = real(*args, **kwargs)
        torch.save(result.net.state_dict(), Path(out) / f"rank{rank}.pt")
        return result

    run_mod.train_selector = keep_weights
    root = Path(data_root)
    data = SyntheticData(
        root, root / "images", root / "annotations.json", root / "store.zarr",
        np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), SyntheticConfig(**TINY_DATA),
    )  # fmt: skip
    Path(out).mkdir(parents=True, exist_ok=True)
    result = run_mod.run_select(tiny_config(data, Path(out), iters=3, batch_size=1, lr=0.01))
    with open(Path(out) / f"result{rank}.json", "w") as fh:
        json.dump({"selections": str(result.selections), "iterations": result.iterations}, fh)


def test_two_process_gloo_run(synth, tmp_path):
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, _free_port(), str(synth.root), str(out)), nprocs=2, join=True)
    r0 = json.loads((out / "result0.json").read_text())
    r1 = json.loads((out / "result1.json").read_text())
    assert r0["iterations"] == r1["iterations"] == 3
    assert (
        r0["selections"].endswith("selections.npz") and r1["selections"] == "None"
    )  # rank 0 writes
    # DDP kept the replicas identical although each rank saw other images
    w0 = torch.load(out / "rank0.pt", weights_only=True)
    w1 = torch.load(out / "rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["iteration"] == 3
    # sharded prediction gathered on rank 0 covers every object
    sel = load_selections(out)
    assert len(sel) == len(synth.ann_id) and (sel.final_index >= 0).all()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
