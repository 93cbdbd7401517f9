"""A small SVG line-and-bar chart drawn on the server (no JavaScript, no library).

Active readers as a line, daily signups as bars, over consecutive days.  Text in
the SVG is escaped; the chart carries a title and description for screen readers
(the page also gives the same figures as a table).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from html import escape

WIDTH, HEIGHT = 900, 270
LEFT, RIGHT, TOP, BOTTOM = 56, 48, 16, 50


def _nice_max(value: int) -> int:
    """A round axis maximum at or above ``value`` (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def readers_chart(days: Sequence[date], active: Sequence[int], signups: Sequence[int]) -> str:
    """The SVG markup (safe to embed as is)."""
    n = len(days)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top_active, top_signups = _nice_max(max(active, default=0)), _nice_max(max(signups, default=0))
    step = plot_w / max(n, 1)

    def y(value: int, top: int) -> float:
        return TOP + plot_h - (value / top) * plot_h

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'role="img" aria-labelledby="chart-title chart-desc">',
        '<title id="chart-title">Active readers and signups, last 90 days</title>',
        f'<desc id="chart-desc">Active readers went from {active[0] if active else 0:,} to '
        f"{active[-1] if active else 0:,}; {sum(signups):,} signups in {n} days.</desc>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#b9b2a6" stroke-width="1"/>',
    ]
    for i, value in enumerate(signups):
        if value:
            h = (value / top_signups) * plot_h
            parts.append(
                f'<rect x="{LEFT + i * step + step * 0.15:.1f}" y="{TOP + plot_h - h:.1f}" '
                f'width="{step * 0.7:.1f}" height="{h:.1f}" fill="#d9b3ad"/>'
            )
    if active:
        points = " ".join(
            f"{LEFT + i * step + step / 2:.1f},{y(v, top_active):.1f}" for i, v in enumerate(active)
        )
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="#8a1c1c" stroke-width="2.5"/>'
        )
    font = 'font-family="Arial, sans-serif" font-size="12" fill="#595959"'
    for frac in (0, 0.5, 1):
        yy = TOP + plot_h - frac * plot_h
        parts.append(
            f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end" {font}>'
            f"{int(top_active * frac):,}</text>"
            f'<text x="{WIDTH - RIGHT + 6}" y="{yy + 4:.1f}" {font}>'
            f"{int(top_signups * frac):,}</text>"
        )
    for i in range(0, n, max(n // 6, 1)):
        parts.append(
            f'<text x="{LEFT + i * step + step / 2:.1f}" y="{HEIGHT - 30}" text-anchor="middle" '
            f"{font}>{escape(days[i].strftime('%d %b'))}</text>"
        )
    parts.append(
        f'<text x="{LEFT}" y="{HEIGHT - 6}" {font}>line: active readers (left axis) · '
        "bars: signups per day (right axis)</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)
