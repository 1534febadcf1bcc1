"""The controlled synthetic benchmark of the selector's components (paper Table 4 rows, without MPS).

    .venv/bin/python benchmarks/synthetic_ablation.py                   # 3 seeds, < 10 min on 2 CPU cores
    .venv/bin/python benchmarks/synthetic_ablation.py --quick           # the reduced run of the test suite
    .venv/bin/python benchmarks/synthetic_ablation.py --seeds 5 --rows mil1 mil1+BMS +BMS
    .venv/bin/python benchmarks/synthetic_ablation.py --variants official clean   # side by side

A seeded synthetic dataset plants the paper's failure modes in every proposal bag (large parts and halves
of the object: "local"; the union with an adjacent same-class object: "group"; shifted copies: "offset";
see ``stages/synthetic/bags.py``). Every row of Table 4 (mil1, +PDG, +mil2, +PNPG, +BMS) trains a small
selector on the same data with the same seed, and its final selections are scored against the planted
truth: selection accuracy, mean mask IoU, group-, local- and offset-error rates (mean +- std over seeds).
Prints the Markdown table and writes the JSON report to ``--out``. Same as `sapnet bench-synthetic`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from stages.common.config import resolve_config
    from stages.synthetic.ablation import ALL_ROWS, VARIANTS, BenchSyntheticConfig, bench_synthetic

    # Defaults and help live in BenchSyntheticConfig (the same as `sapnet bench-synthetic --help`).
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    omit = argparse.SUPPRESS
    parser.add_argument("--out", type=Path, default=omit)
    parser.add_argument("--seeds", type=int, default=omit)
    parser.add_argument("--quick", action="store_true", default=omit)
    parser.add_argument("--images", type=int, default=omit)
    parser.add_argument("--iters", type=int, default=omit)
    parser.add_argument("--rows", nargs="+", choices=list(ALL_ROWS), default=omit)
    parser.add_argument("--work", type=Path, default=omit)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=omit)
    parser.add_argument("--config", type=Path, default=None)
    args = vars(parser.parse_args(argv))
    config = args.pop("config")
    cfg = resolve_config(BenchSyntheticConfig, config, args)
    report = bench_synthetic(cfg, log=lambda line: print(line, flush=True))
    print(report["table"])
    print(f"{report['seconds']:.0f} s; report written to {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
