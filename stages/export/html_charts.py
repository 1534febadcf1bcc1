"""Tiny inline SVG charts for the HTML report (no plotting library, no script): grouped bars and histograms."""

from __future__ import annotations

import html

import numpy as np

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f")
WIDTH, HEIGHT, PAD = 300, 140, 24


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def bar_chart(groups: dict[str, list[float | None]], series: list[str], scale: float = 1.0) -> str:
    """Grouped bars: one group per key of ``groups`` (e.g. object size), one bar per series (selector).

    Values are multiplied by ``scale`` (fractions -> percent); None draws no bar. Bars carry a ``<title>``
    tooltip and ``data-value``. The y axis runs from 0 to the largest value (at least 1 unit).
    """
    vals = [v * scale for vs in groups.values() for v in vs if v is not None]
    top = max([1.0, *vals])
    n_groups, n_series = max(1, len(groups)), max(1, len(series))
    gw = (WIDTH - PAD) / n_groups
    bw = gw * 0.8 / n_series
    plot_h = HEIGHT - 2 * PAD
    out = [f'<svg class="bars" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">']
    out.append(
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH}" y2="{HEIGHT - PAD}" stroke="#999"/>'
    )
    out.append(f'<text x="2" y="{PAD}" font-size="9">{_fmt(top)}</text>')
    for g, (label, values) in enumerate(groups.items()):
        x0 = PAD + g * gw + gw * 0.1
        for s, v in enumerate(values):
            if v is None:
                continue
            h = plot_h * (v * scale) / top
            x, y = x0 + s * bw, HEIGHT - PAD - h
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw * 0.9:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[s % len(PALETTE)]}" data-value="{v * scale:.1f}">'
                f"<title>{html.escape(series[s])} {html.escape(label)}: {_fmt(v * scale)}</title></rect>"
            )
        out.append(
            f'<text x="{x0 + gw * 0.4:.1f}" y="{HEIGHT - PAD + 12}" font-size="10" '
            f'text-anchor="middle">{html.escape(label)}</text>'
        )
    for s, name in enumerate(series):
        out.append(
            f'<rect x="{PAD + s * 55}" y="2" width="8" height="8" fill="{PALETTE[s % len(PALETTE)]}"/>'
            f'<text x="{PAD + s * 55 + 11}" y="10" font-size="9">{html.escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def histogram_counts(
    values: np.ndarray, lo: float | None = None, hi: float | None = None, bins: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """``(counts (bins,), edges (bins + 1,))`` over ``[lo, hi]`` (default: the data's range; a constant
    input gets a unit-wide range so that it still lands in one bin)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    lo = float(values.min()) if lo is None and len(values) else (0.0 if lo is None else lo)
    hi = float(values.max()) if hi is None and len(values) else (1.0 if hi is None else hi)
    if hi <= lo:
        hi = lo + 1.0
    return np.histogram(values, bins=bins, range=(lo, hi))


def histogram(
    values: np.ndarray, lo: float | None = None, hi: float | None = None, bins: int = 10
) -> str:
    """A histogram of ``values`` as SVG bars, with the range's ends written under the axis."""
    counts, edges = histogram_counts(values, lo, hi, bins)
    top = max(1, int(counts.max()) if len(counts) else 1)
    bw = (WIDTH - PAD) / bins
    plot_h = HEIGHT - 2 * PAD
    out = [f'<svg class="hist" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">']
    out.append(
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH}" y2="{HEIGHT - PAD}" stroke="#999"/>'
    )
    out.append(f'<text x="2" y="{PAD}" font-size="9">{top}</text>')
    for b, c in enumerate(counts.tolist()):
        h = plot_h * c / top
        out.append(
            f'<rect x="{PAD + b * bw:.1f}" y="{HEIGHT - PAD - h:.1f}" width="{bw * 0.92:.1f}" '
            f'height="{h:.1f}" fill="{PALETTE[0]}" data-value="{c}"><title>[{edges[b]:.3g}, '
            f"{edges[b + 1]:.3g}): {c}</title></rect>"
        )
    out.append(f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="9">{edges[0]:.3g}</text>')
    out.append(
        f'<text x="{WIDTH}" y="{HEIGHT - 8}" font-size="9" text-anchor="end">{edges[-1]:.3g}</text>'
    )
    out.append("</svg>")
    return "".join(out)
