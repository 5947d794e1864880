"""Charts drawn on the server as SVG: no script, no inline style, every label escaped.

Colours come from classes styled in static/admin/admin.css, so the page keeps a strict
Content-Security-Policy (`script-src 'self'`, `style-src 'self'`). SVG in HTML:
https://www.w3.org/TR/SVG2/struct.html
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from smartapp.admin.metrics import MetricsGroup, PeriodComparison

WIDTH = 760
LABEL_W = 230
BAR_W = 380
ROW_H = 26
BAR_H = 16
TOP = 6

#: The stacked segments, in order: (css class, legend label).
SEGMENTS = (
    ("accept", "accepted"),
    ("edit", "edited"),
    ("reject", "rejected"),
    ("flag", "flagged"),
    ("undecided", "no decision"),
)


def _label(text: str, limit: int = 34) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _with_unit(value: float, unit: str) -> str:
    return f"{_num(value)} {unit}" if unit else _num(value)


def _svg(chart_id: str, title: str, rows: int, body: list[str], desc: str) -> Markup:
    height = TOP * 2 + rows * ROW_H
    head = (
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" '
        f'aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc" '
        'xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>'
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>'
    )
    return Markup(head + "".join(body) + "</svg>")


def _row_label(y: float, key: str) -> str:
    return (
        f'<text class="chart-label" x="{LABEL_W - 8}" y="{y + BAR_H - 3}" text-anchor="end">'
        f"<title>{escape(key)}</title>{escape(_label(key))}</text>"
    )


def outcome_bars(groups: Sequence[MetricsGroup], *, chart_id: str, title: str) -> Markup:
    """One stacked bar per group: the share of shown suggestions per latest decision."""
    if not groups:
        return Markup('<p class="empty">No suggestions were shown in this period.</p>')
    body: list[str] = []
    for i, g in enumerate(groups):
        y = TOP + i * ROW_H
        body.append(_row_label(y, g.key))
        x = float(LABEL_W)
        counts = (g.accepted, g.edited, g.rejected, g.flagged, g.undecided)
        for (cls, label), count in zip(SEGMENTS, counts, strict=True):
            if count <= 0 or g.shown <= 0:
                continue
            w = BAR_W * count / g.shown
            body.append(
                f'<rect class="seg seg-{cls}" x="{_num(x)}" y="{y}" width="{_num(w)}" '
                f'height="{BAR_H}"><title>{escape(g.key)}: {count} {label} '
                f"({_pct(count / g.shown)})</title></rect>"
            )
            x += w
        body.append(
            f'<text class="chart-value" x="{LABEL_W + BAR_W + 8}" y="{y + BAR_H - 3}">'
            f"{_pct(g.acceptance_rate)} used · n={g.shown}</text>"
        )
    desc = "; ".join(
        f"{g.key}: {g.shown} shown, {_pct(g.acceptance_rate)} accepted or edited, "
        f"{_pct(g.rate('rejection'))} rejected, {_pct(g.rate('flag'))} flagged"
        for g in groups
    )
    return _svg(chart_id, title, len(groups), body, desc)


def value_bars(
    items: Sequence[tuple[str, float | None]],
    *,
    chart_id: str,
    title: str,
    unit: str,
) -> Markup:
    """Plain horizontal bars (medians, counts), scaled to the largest value."""
    shown = [(k, v) for k, v in items if v is not None]
    if not shown:
        return Markup('<p class="empty">No data in this period.</p>')
    top = max(v for _, v in shown) or 1.0
    body: list[str] = []
    for i, (key, value) in enumerate(shown):
        y = TOP + i * ROW_H
        w = max(1.0, BAR_W * value / top)
        body.append(_row_label(y, key))
        body.append(
            f'<rect class="bar" x="{LABEL_W}" y="{y}" width="{_num(w)}" height="{BAR_H}">'
            f"<title>{escape(key)}: {escape(_with_unit(value, unit))}</title></rect>"
        )
        body.append(
            f'<text class="chart-value" x="{_num(LABEL_W + w + 6)}" y="{y + BAR_H - 3}">'
            f"{escape(_with_unit(value, unit))}</text>"
        )
    desc = "; ".join(f"{k}: {_with_unit(v, unit)}" for k, v in shown)
    return _svg(chart_id, title, len(shown), body, desc)


def before_after_bars(
    comparisons: Sequence[PeriodComparison], *, chart_id: str, title: str
) -> Markup:
    """Acceptance rate before and after a pivot date, two thin bars per key."""
    if not comparisons:
        return Markup('<p class="empty">No suggestions on either side of this date.</p>')
    half = BAR_H / 2
    body: list[str] = []
    for i, c in enumerate(comparisons):
        y = TOP + i * ROW_H
        body.append(_row_label(y, c.key))
        for offset, cls, group, word in (
            (0.0, "before", c.before, "before"),
            (half, "after", c.after, "after"),
        ):
            rate = group.acceptance_rate if group else None
            if rate is None:
                continue
            w = max(1.0, BAR_W * rate)
            body.append(
                f'<rect class="bar bar-{cls}" x="{LABEL_W}" y="{_num(y + offset)}" '
                f'width="{_num(w)}" height="{_num(half - 1)}"><title>{escape(c.key)} {word}: '
                f"{_pct(rate)} of {group.shown if group else 0}</title></rect>"
            )
        change = "" if c.change is None else f"{c.change:+.0%}"
        mark = " *" if c.significant else ""
        body.append(
            f'<text class="chart-value" x="{LABEL_W + BAR_W + 8}" y="{y + BAR_H - 3}">'
            f"{_pct(c.before.acceptance_rate if c.before else None)} → "
            f"{_pct(c.after.acceptance_rate if c.after else None)} {change}{mark}</text>"
        )
    desc = "; ".join(
        f"{c.key}: {_pct(c.before.acceptance_rate if c.before else None)} before, "
        f"{_pct(c.after.acceptance_rate if c.after else None)} after"
        + (" (significant)" if c.significant else "")
        for c in comparisons
    )
    return _svg(chart_id, title, len(comparisons), body, desc)
