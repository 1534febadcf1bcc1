"""`sapnet bench-synthetic`: the controlled synthetic ablation of the selector (paper Table 4 rows).

The options are the fields of :class:`stages.synthetic.ablation.BenchSyntheticConfig` (see
:mod:`sapnet_cli.options`); :func:`stages.synthetic.ablation.bench_synthetic` runs it (as does
``benchmarks/synthetic_ablation.py``).
"""

from __future__ import annotations

import typer

from sapnet_cli.options import config_command
from stages.synthetic.ablation import BenchSyntheticConfig


def _run(cfg: BenchSyntheticConfig) -> None:
    from stages.synthetic.ablation import bench_synthetic as run

    report = run(cfg, log=lambda s: typer.echo(s, err=True))
    typer.echo(report["table"])
    typer.echo(f"{report['seconds']:.0f} s; report written to {cfg.out}")


bench_synthetic = config_command(
    BenchSyntheticConfig,
    _run,
    doc="Plant group/local failure modes in synthetic bags and score each Table 4 row of the selector.",
)
