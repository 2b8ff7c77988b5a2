"""Charts as inline SVG, drawn here in Python (pure: numbers in, markup out).

Server-side drawing keeps the dashboard free of plotting libraries and of anything fetched at
run time, and makes a chart testable as text: a line chart is one ``<polyline>`` per series
whose ``points`` are the data scaled into the plot, a scatter one ``<circle>`` per point with
a ``<title>`` tooltip. Each ``<svg>`` carries ``data-points`` (how many data points it draws).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Final

WIDTH: Final = 520
HEIGHT: Final = 240
_PAD_L: Final = 62
_PAD_R: Final = 14
_PAD_T: Final = 26
_PAD_B: Final = 36
COLORS: Final = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


class _Scale:
    """Maps data ``[lo, hi]`` onto pixels ``[a, b]``; log10 when ``log``."""

    def __init__(self, values: Sequence[float], a: float, b: float, log: bool = False) -> None:
        self.log = log
        vs = [math.log10(v) for v in values] if log else list(values)
        lo, hi = (min(vs), max(vs)) if vs else (0.0, 1.0)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        margin = 0.03 * (hi - lo)  # so points on the extremes are not cut by the frame
        self.data = (lo, hi)
        self.lo, self.hi, self.a, self.b = lo - margin, hi + margin, a, b

    def __call__(self, v: float) -> float:
        x = math.log10(v) if self.log else v
        return self.a + (x - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def ticks(self, n: int = 4) -> list[float]:
        lo, hi = self.data
        raw = [lo + i * (hi - lo) / n for i in range(n + 1)]
        return [10 ** t for t in raw] if self.log else raw


def _frame(title: str, x_label: str, y_label: str, xs: _Scale, ys: _Scale, body: list[str],
           points: int, kind: str, legend: Sequence[tuple[str, str]] = ()) -> str:
    x0, x1, y0, y1 = _PAD_L, WIDTH - _PAD_R, HEIGHT - _PAD_B, _PAD_T
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {kind}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
             f'data-points="{points}" data-title="{escape(title)}" role="img">',
             f'<title>{escape(title)}</title>',
             f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" class="plot"/>',
             f'<text x="{x0}" y="16" class="title">{escape(title)}</text>']
    for t in xs.ticks():
        px = xs(t)
        parts.append(f'<line x1="{px:.1f}" y1="{y0}" x2="{px:.1f}" y2="{y0 + 4}" '
                     'class="tick"/>')
        parts.append(f'<text x="{px:.1f}" y="{y0 + 16}" class="tl" '
                     f'text-anchor="middle">{_fmt(t)}</text>')
    for t in ys.ticks():
        py = ys(t)
        parts.append(f'<line x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}" class="grid"/>')
        parts.append(f'<text x="{x0 - 6}" y="{py + 4:.1f}" class="tl" '
                     f'text-anchor="end">{_fmt(t)}</text>')
    parts.append(f'<text x="{(x0 + x1) / 2:.0f}" y="{HEIGHT - 4}" class="axis" '
                 f'text-anchor="middle">{escape(x_label)}'
                 f'{" (log)" if xs.log else ""}</text>')
    parts.append(f'<text x="12" y="{(y0 + y1) / 2:.0f}" class="axis" text-anchor="middle" '
                 f'transform="rotate(-90 12 {(y0 + y1) / 2:.0f})">{escape(y_label)}</text>')
    parts += body
    for i, (label, color) in enumerate(legend[:8]):
        ly = y1 + 12 + 13 * i
        parts.append(f'<rect x="{x1 - 118}" y="{ly - 8}" width="9" height="9" fill="{color}"/>'
                     f'<text x="{x1 - 105}" y="{ly}" class="legend">{escape(label[:18])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *,
               x_label: str = "training_iteration", y_label: str = "") -> str:
    """One polyline per ``(label, [(x, y), ...])``; a lone point is drawn as a dot."""
    all_x = [x for _, pts in series for x, _ in pts]
    all_y = [y for _, pts in series for _, y in pts]
    xs = _Scale(all_x, _PAD_L, WIDTH - _PAD_R)
    ys = _Scale(all_y, HEIGHT - _PAD_B, _PAD_T)
    body: list[str] = []
    legend: list[tuple[str, str]] = []
    for i, (label, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{xs(x):.1f},{ys(y):.1f}" for x, y in pts)
        body.append(f'<polyline class="curve" data-label="{escape(label)}" fill="none" '
                    f'stroke="{color}" stroke-width="1.6" points="{coords}"/>')
        if len(pts) == 1:
            (x, y), = pts
            body.append(f'<circle cx="{xs(x):.1f}" cy="{ys(y):.1f}" r="2.5" fill="{color}"/>')
        if len(series) > 1:
            legend.append((label, color))
    return _frame(title, x_label, y_label or title, xs, ys, body, len(all_x), "line", legend)


def scatter_chart(title: str, points: Sequence[tuple[float, float, str]], *, x_label: str,
                  y_label: str, best: str | None = None) -> str:
    """One circle per ``(x, y, label)``; a log x axis when x spans over two decades of
    positive values (a log-uniform parameter); ``best`` (a label) drawn larger, in red."""
    x_vals = [p[0] for p in points]
    log = bool(x_vals) and min(x_vals) > 0 and max(x_vals) / min(x_vals) > 100
    xs = _Scale(x_vals, _PAD_L, WIDTH - _PAD_R, log=log)
    ys = _Scale([p[1] for p in points], HEIGHT - _PAD_B, _PAD_T)
    body = []
    for x, y, label in points:
        top = label == best
        body.append(f'<circle class="dot" cx="{xs(x):.1f}" cy="{ys(y):.1f}" '
                    f'r="{5 if top else 3.5}" fill="{COLORS[3] if top else COLORS[0]}" '
                    f'fill-opacity="0.8"><title>{escape(label)}: {escape(x_label)}={_fmt(x)}, '
                    f'{escape(y_label)}={_fmt(y)}</title></circle>')
    return _frame(title, x_label, y_label, xs, ys, body, len(points), "scatter")
