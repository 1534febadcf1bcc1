"""The synthetic Table 4 ablation: scoring against the planted truth, and the reduced run with margins.

The reduced run (``QUICK_DATA`` / ``QUICK_TRAIN``: 16 images, 60 iterations of a narrow random-init
resnet18, about a minute on 2 cores) trains mil1 and +PNPG once and predicts mil1+BMS and +BMS with those
selectors. What it asserts held on seeds 0-3 with room to spare (see the report of the synthetic brief):
single MIL mostly picks local parts, PNPG and BMS each remove a large share of them, and the full model
beats mil1 clearly. PDG is not asserted: in its code form it cannot move the picks here (see
``stages/synthetic/ablation.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.common.errors import InputError
from stages.select.config import SelectConfig
from stages.synthetic.ablation import (
    ABLATION_ROWS,
    QUICK_DATA,
    QUICK_ROWS,
    QUICK_TRAIN,
    VARIANTS,
    format_table,
    format_variants,
    run_ablation,
    run_benchmark,
    score_picks,
    training_key,
)
from stages.synthetic.generate import SyntheticConfig


def test_score_picks_by_hand():
    kinds = np.array(
        [
            ["correct", "local", "group", "offset"],
            ["local", "correct", "offset", "offset"],
            ["offset", "group", "correct", "local"],
            ["correct", "offset", "local", "local"],
        ]
    )
    correct = np.array([0, 1, 2, 0])
    iou = np.array(
        [[1.0, 0.6, 0.5, 0.2], [0.7, 1.0, 0.1, 0.3], [0.0, 0.5, 1.0, 0.8], [1.0, 0.3, 0.4, 0.6]]
    )
    s = score_picks(np.array([0, 0, 1, -1]), kinds, correct, iou)
    assert s["accuracy"] == pytest.approx(0.25)
    assert s["mean_iou"] == pytest.approx((1.0 + 0.7 + 0.5 + 0.0) / 4)
    assert s["local_rate"] == pytest.approx(0.25)
    assert s["group_rate"] == pytest.approx(0.25)
    assert s["offset_rate"] == 0.0  # the -1 (no selection) is wrong but no error kind
    assert score_picks(np.zeros(0, int), kinds[:0], correct[:0], iou[:0])["accuracy"] == 0.0


def test_rows_follow_table_4_and_bms_reuses_the_pnpg_training():
    assert list(ABLATION_ROWS) == ["mil1", "+PDG", "+mil2", "+PNPG", "+BMS"]
    on = [sum(flags.values()) for flags in ABLATION_ROWS.values()]
    assert on == [0, 1, 2, 4, 5]  # cumulative switches (PNPG = PPG + NPG)
    base = {"iters": 5, "seed": 0, "ppg_base": "psm"}
    assert training_key({**base, **ABLATION_ROWS["+BMS"]}) == training_key(
        {**base, **ABLATION_ROWS["+PNPG"]}
    )
    assert training_key({**base, **ABLATION_ROWS["+PDG"]}) != training_key(
        {**base, **ABLATION_ROWS["mil1"]}
    )
    code = {**base, "ppg_base": "code"}  # stage-0 BMS moves the PPG base: a different training
    assert training_key({**code, **ABLATION_ROWS["+BMS"]}) != training_key(
        {**code, **ABLATION_ROWS["+PNPG"]}
    )


def test_format_table():
    row = {"accuracy": 0.5, "mean_iou": 0.75, "group_rate": 0.0, "local_rate": 0.25}
    row |= {"offset_rate": 0.25, **{f"{k}_std": 0.1 for k in list(row) + ["offset_rate"]}}
    table = format_table([{"row": "mil1", **row, "per_seed": [{}, {}]}]).splitlines()
    assert table[0].startswith("| configuration | accuracy | mean mask IoU")
    assert (
        table[2]
        == "| mil1 | 50.0 +- 10.0 | 75.0 +- 10.0 | 0.0 +- 10.0 | 25.0 +- 10.0 | 25.0 +- 10.0 |"
    )
    single = format_table([{"row": "+BMS", **row, "per_seed": [{}]}]).splitlines()[2]
    assert single == "| +BMS | 50.0 | 75.0 | 0.0 | 25.0 | 25.0 |"


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="unknown ablation row"):
        run_ablation(tmp_path, SyntheticConfig(), {}, rows=["mil3"])
    with pytest.raises(InputError, match="seeds"):
        run_benchmark(None, seeds=0)
    with pytest.raises(InputError, match="iters"):
        run_benchmark(None, iters=0)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the margins were measured single-threaded (float sums differ)
    try:
        # the margins hold for the clean variant (exact top-1 box, PPG base box_psm, Xavier shared FCs):
        # with the official Normal(0, 0.01) head a 60-iteration CPU run learns too little (bench-synthetic
        # --variant official --variant clean), and its +BMS trains apart from +PNPG (stage-0 BMS moves
        # the PPG base)
        results = run_ablation(
            tmp_path_factory.mktemp("ablation"), SyntheticConfig(**QUICK_DATA),
            {**QUICK_TRAIN, **VARIANTS["clean"]}, QUICK_ROWS, seeds=[0],
        )  # fmt: skip
    finally:
        torch.set_num_threads(before)
    print("\n" + format_table(results))
    return {r["row"]: r for r in results}


def test_reduced_ablation_margins(quick):
    mil1, mil1_bms, pnpg, full = (quick[r] for r in ("mil1", "mil1+BMS", "+PNPG", "+BMS"))
    # the data holds the local issue: single MIL picks parts of the object for most objects
    assert mil1["local_rate"] >= 0.4
    # the full model beats single MIL clearly and makes far fewer local errors
    assert full["accuracy"] >= mil1["accuracy"] + 0.2
    assert full["local_rate"] <= mil1["local_rate"] - 0.2
    assert full["mean_iou"] > mil1["mean_iou"]
    # BMS repairs local picks of either selector (it merges a large part with the object's box)
    assert full["local_rate"] <= pnpg["local_rate"] - 0.1
    assert full["accuracy"] >= pnpg["accuracy"] + 0.1
    assert mil1_bms["local_rate"] < mil1["local_rate"]
    assert mil1_bms["accuracy"] > mil1["accuracy"]
    # +BMS predicts with the +PNPG selector: the stage-0 picks are the same
    assert full["psm_accuracy"] == pnpg["psm_accuracy"]


def test_cli_and_script_entry_points(tmp_path):
    import typer
    from typer.testing import CliRunner

    from benchmarks.synthetic_ablation import main
    from sapnet_cli.commands.bench_synthetic import bench_synthetic

    app = typer.Typer()
    app.command()(bench_synthetic)
    helped = CliRunner().invoke(app, ["--help"])
    assert helped.exit_code == 0
    for option in ("--out", "--seeds", "--quick", "--images", "--iters", "--row", "--work"):
        assert option in helped.output
    failed = CliRunner().invoke(app, ["--seeds", "0", "--out", str(tmp_path / "r.json")])
    assert isinstance(failed.exception, InputError)
    with pytest.raises(InputError, match="images"):
        main(["--images", "0", "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


def test_format_variants_side_by_side():
    def result(acc: float) -> dict:
        metrics = {"accuracy": acc, "mean_iou": 0.5, "group_rate": 0.25, "local_rate": 0.125}
        return {"row": "+BMS", **metrics, **{f"{k}_std": 0.0 for k in metrics}, "per_seed": [{}]}

    table = format_variants({"official": [result(0.75)], "clean": [result(0.5)]}).splitlines()
    assert table[0].startswith("| configuration | acc (official) | acc (clean) | mIoU (official)")
    assert table[2].startswith("| +BMS | 75.0 | 50.0 | 50.0 | 50.0 | 25.0 | 25.0 | 12.5 | 12.5 |")


def test_variants_are_the_clean_options():
    assert VARIANTS["official"] == {}
    clean = SelectConfig(store="s", images="i", out="o", **VARIANTS["clean"]).validate()
    assert (clean.top1_box, clean.ppg_base, clean.head_init, clean.psm_normalise) == (
        "exact", "psm", "xavier", "all-bags",
    )  # fmt: skip
