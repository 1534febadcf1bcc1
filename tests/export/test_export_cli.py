"""`sapnet export-pseudo` / `sapnet evaluate` through the CLI entry point: outputs and exit codes."""

from __future__ import annotations

import json

import pytest
from export_tinydata import write_selections

from sapnet_cli.app import main


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return int(exc.value.code or 0)


def test_cli_export_with_report_then_evaluate(tiny, tmp_path, capsys):
    out = tmp_path / "pseudo.json"
    code = _run(
        [
            "export-pseudo", "--store", tiny.store_path, "--selections", tiny.sel_dir,
            "--out", out, "--selector", "sapnet,top1", "--gt", tiny.gt_path,
            "--report", tmp_path / "rep", "--no-aux-masks",
        ]
    )  # fmt: skip
    assert code == 0
    assert out.is_file() and (tmp_path / "pseudo.top1.json").is_file()
    assert "aux_segmentations" not in json.loads(out.read_text())["annotations"][0]
    printed = capsys.readouterr().out
    assert "| metric | sapnet | top1 |" in printed
    assert _run(["evaluate", "--pred", out, "--gt", tiny.gt_path]) == 0
    assert "| mask mIoU (all) | 100.0 |" in capsys.readouterr().out


def test_cli_exit_codes(tiny, tmp_path):
    out = tmp_path / "p.json"
    base = ["export-pseudo", "--store", tiny.store_path, "--out", out]
    # InputError (2): oracle without --gt, unknown selector
    assert _run([*base, "--selector", "oracle"]) == 2
    assert _run([*base, "--selector", "top1,best"]) == 2
    # StoreError (3): missing store, selections from another store
    assert (
        _run(["export-pseudo", "--store", tmp_path / "no.zarr", "--out", out, "--selector", "top1"])
        == 3
    )
    other = write_selections(tiny.store_path, tmp_path / "sel", [0] * 4, source_sha256="x")
    assert _run([*base, "--selections", other]) == 3
    # InputError (2): evaluate with a broken predictions file
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert _run(["evaluate", "--pred", bad, "--gt", tiny.gt_path]) == 2
    # usage error (click): missing required option
    assert _run(["evaluate", "--gt", tiny.gt_path]) == 2
    assert not out.exists()
