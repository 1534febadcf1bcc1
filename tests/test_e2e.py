"""The whole chain through the CLI on the 4-image COCO fixture: points -> propose -> select ->
export-pseudo (with the report) -> train-seg (with COCO evaluation). Tiny schedules: this checks that the
stages' files fit together, not the quality (see `make reproduce` and the benchmarks for numbers)."""

from __future__ import annotations

import json

import pytest

from sapnet_cli.app import main
from stages.common.selections import load_selections
from stages.propose.store import ProposalStore
from tests.conftest import FAKE_BACKEND


def _run(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0, args


def _chain(
    coco4, backend: str, select_iters: int, seg_iters: int, propose_args: tuple[str, ...] = ()
) -> dict:
    root, images, gt = coco4["root"], str(coco4["images"]), str(coco4["gt"])
    points, store = root / "points.json", root / "store.zarr"
    _run(["points", "--annotations", gt, "--out", str(points), "--no-progress"])
    _run(
        ["propose", "--annotations", str(points), "--images", images, "--store", str(store)]
        + ["--backend", backend, "--chunk-points", "16", "--no-progress", *propose_args]
    )
    run_dir = root / "select"
    _run(
        ["select", "--store", str(store), "--images", images, "--out", str(run_dir)]
        + ["--backbone", "resnet18", "--weights", "none", "--iters", str(select_iters)]
        + ["--batch-size", "2", "--short-side", "128", "--max-size", "192", "--device", "cpu"]
        + ["--num-workers", "0"]
    )
    pseudo, report = root / "pseudo.json", root / "report"
    _run(
        ["export-pseudo", "--store", str(store), "--selections", str(run_dir), "--out", str(pseudo)]
        + ["--selector", "sapnet,top1", "--gt", gt, "--report", str(report)]
    )
    seg = root / "seg"
    _run(
        ["train-seg", "--train", str(pseudo), "--images", images, "--out", str(seg)]
        + ["--val", gt, "--val-images", images, "--iters", str(seg_iters), "--ims-per-batch", "1"]
        + ["--min-size", "128", "--max-size", "192", "--device", "cpu"]
    )
    return {"store": store, "select": run_dir, "pseudo": pseudo, "report": report, "seg": seg}


def test_whole_pipeline_through_the_cli(coco4):
    out = _chain(coco4, FAKE_BACKEND, select_iters=2, seg_iters=2)
    store = ProposalStore.open(out["store"])
    sel = load_selections(out["select"])
    assert len(sel) == len(store.objects) == 44
    doc = json.loads(out["pseudo"].read_text())
    assert len(doc["annotations"]) == 44
    assert all("aux_segmentations" in a and len(a["aux_weights"]) == 3 for a in doc["annotations"])
    assert {a["id"] for a in doc["annotations"]} == set(store.objects.ann_id.tolist())
    report = json.loads((out["report"] / "report.json").read_text())
    assert "sapnet" in json.dumps(report) and "top1" in json.dumps(report)
    assert (out["seg"] / "model_final.pth").is_file()
    assert (out["seg"] / "eval" / "coco_eval.json").is_file()


def test_whole_chain_on_a_sam2_store(coco4, monkeypatch):
    """propose with SAM 2.1 (hiera_t random weights from a file, run at 256 px to stay fast), then the
    rest of the chain on that store."""
    pytest.importorskip("sam2")
    from tests.propose.sam2_tiny import register_tiny, save_random_hiera_t
    from tests.propose.store_checks import check_sam_family_store

    ckpt = save_random_hiera_t(coco4["root"] / "hiera_t_random.pt")
    model = register_tiny(monkeypatch)
    args = ("--model", model, "--checkpoint", str(ckpt), "--batch-points", "16")
    out = _chain(coco4, "sam2", select_iters=2, seg_iters=2, propose_args=args)
    store = check_sam_family_store(out["store"], "sam2", num_points=44)
    assert store.fingerprint["backend"]["model"] == model
    assert len(load_selections(out["select"])) == 44
    doc = json.loads(out["pseudo"].read_text())
    assert {a["id"] for a in doc["annotations"]} == set(store.objects.ann_id.tolist())
    assert (out["seg"] / "model_final.pth").is_file()


@pytest.mark.slow
def test_whole_pipeline_with_the_classical_backend(coco4):
    out = _chain(coco4, "classical", select_iters=20, seg_iters=20)
    assert ProposalStore.open(out["store"]).is_complete()
    assert (out["seg"] / "eval" / "coco_eval.md").is_file()
