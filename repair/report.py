"""Figures as inline SVG and the self-contained HTML report of a diagnosis.

Every figure is an SVG string in one dict keyed by name, so the model card and the web app
can embed the same figures. The report needs no network: no scripts, fonts or stylesheets
are loaded from elsewhere.
"""

from __future__ import annotations

from html import escape

from repair.faults import ERROR_TYPES

# Colours that stay distinct for the common kinds of colour blindness (Okabe-Ito palette).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")
_WIDTH, _HEIGHT = 480, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 30, 44


def _svg(body: list[str], title: str, width: int = _WIDTH, height: int = _HEIGHT) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="11">'
            f'<title>{escape(title)}</title>'
            f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>'
            + "".join(body) + "</svg>")


def _nice_max(value: float) -> float:
    """Return a round upper bound for an axis: 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1.0
    scale = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    for factor in (1, 2, 5, 10):
        if value <= factor * scale:
            return factor * scale
    return 10 * scale


def bar_chart(title: str, categories: list[str], series: dict[str, list[float]], y_label: str = "",
              y_max: float | None = None, value_format: str = "{:g}") -> str:
    """Return a grouped bar chart: one group per category, one bar per series, values written on the bars."""
    plot_width = _WIDTH - _LEFT - _RIGHT
    plot_height = _HEIGHT - _TOP - _BOTTOM
    values = [v for row in series.values() for v in row]
    top = y_max if y_max is not None else _nice_max(max(values, default=0))
    body = [f'<line x1="{_LEFT}" y1="{_TOP + plot_height}" x2="{_LEFT + plot_width}" y2="{_TOP + plot_height}" stroke="#333"/>']
    for tick in range(5):
        value = top * tick / 4
        y = _TOP + plot_height - plot_height * tick / 4
        body.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + plot_width}" y2="{y:.1f}" stroke="#ddd"/>')
        body.append(f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{escape(value_format.format(value))}</text>')
    if y_label:
        body.append(f'<text transform="translate(12,{_TOP + plot_height / 2}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>')

    group_width = plot_width / max(1, len(categories))
    bar_width = group_width * 0.8 / max(1, len(series))
    for c, category in enumerate(categories):
        x0 = _LEFT + c * group_width + group_width * 0.1
        for s, (name, row) in enumerate(series.items()):
            value = row[c]
            height = plot_height * min(value, top) / top if top else 0
            x = x0 + s * bar_width
            y = _TOP + plot_height - height
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_width - 2:.1f}" height="{height:.1f}" '
                        f'fill="{PALETTE[s % len(PALETTE)]}"><title>{escape(name)}, {escape(category)}: '
                        f'{escape(value_format.format(value))}</title></rect>')
            body.append(f'<text x="{x + bar_width / 2 - 1:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="10">'
                        f'{escape(value_format.format(value))}</text>')
        body.append(f'<text x="{x0 + group_width * 0.4:.1f}" y="{_TOP + plot_height + 14}" text-anchor="middle">{escape(category)}</text>')
    body += _legend(list(series), _HEIGHT - 10)
    return _svg(body, title)


def _legend(names: list[str], y: float) -> list[str]:
    if len(names) < 2:
        return []
    items = []
    x = _LEFT
    for index, name in enumerate(names):
        items.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{PALETTE[index % len(PALETTE)]}"/>')
        items.append(f'<text x="{x + 14}" y="{y}">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return items


def line_chart(title: str, series: dict[str, list[float]], markers: list[tuple[int, str]] | None = None,
               boundaries: list[int] | None = None, y_label: str = "") -> str:
    """Return a line chart of each series against its index, with vertical lines at ``boundaries``
    and labelled vertical markers at ``markers`` (index, label)."""
    plot_width = _WIDTH - _LEFT - _RIGHT
    plot_height = _HEIGHT - _TOP - _BOTTOM
    values = [v for row in series.values() for v in row] or [0.0]
    low, high = min(min(values), 0.0), max(max(values), 0.0)
    span = (high - low) or 1.0
    length = max((len(row) for row in series.values()), default=1)

    def x_of(index: int) -> float:
        return _LEFT + plot_width * index / max(1, length - 1)

    def y_of(value: float) -> float:
        return _TOP + plot_height * (high - value) / span

    body = [f'<line x1="{_LEFT}" y1="{y_of(0):.1f}" x2="{_LEFT + plot_width}" y2="{y_of(0):.1f}" stroke="#333"/>',
            f'<text x="{_LEFT - 4}" y="{y_of(high) + 4:.1f}" text-anchor="end">{high:.1f}</text>',
            f'<text x="{_LEFT - 4}" y="{y_of(0) + 4:.1f}" text-anchor="end">0</text>',
            f'<text x="{_LEFT - 4}" y="{y_of(low) + 4:.1f}" text-anchor="end">{low:.1f}</text>',
            f'<text x="{_LEFT + plot_width / 2}" y="{_TOP + plot_height + 14}" text-anchor="middle">token of the reference solution</text>']
    if y_label:
        body.append(f'<text transform="translate(12,{_TOP + plot_height / 2}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>')
    for boundary in boundaries or []:
        body.append(f'<line x1="{x_of(boundary):.1f}" y1="{_TOP}" x2="{x_of(boundary):.1f}" y2="{_TOP + plot_height}" '
                    f'stroke="#ccc" stroke-dasharray="2,3"/>')
    for index, (name, row) in enumerate(series.items()):
        points = " ".join(f"{x_of(i):.1f},{y_of(v):.1f}" for i, v in enumerate(row))
        body.append(f'<polyline points="{points}" fill="none" stroke="{PALETTE[index % len(PALETTE)]}" stroke-width="1.2">'
                    f'<title>{escape(name)}</title></polyline>')
    for position, label in markers or []:
        body.append(f'<line x1="{x_of(position):.1f}" y1="{_TOP}" x2="{x_of(position):.1f}" y2="{_TOP + plot_height}" '
                    f'stroke="#D55E00" stroke-width="1.5"/>')
        body.append(f'<text x="{x_of(position) + 3:.1f}" y="{_TOP + 10}" fill="#D55E00">{escape(label)}</text>')
    body += _legend(list(series), _HEIGHT - 10)
    return _svg(body, title)


def build_figures(diagnosis: dict) -> dict[str, str]:
    """Return every figure of a diagnosis as an SVG string, keyed by name."""
    figures: dict[str, str] = {}

    accuracy = diagnosis.get("accuracy") or {}
    if accuracy:
        figures["accuracy"] = bar_chart(
            "Accuracy of generated solutions", ["full precision", "quantized"],
            {f"{extractor} extractor": [100 * accuracy[model][extractor] for model in ("fp", "q")]
             for extractor in ("strict", "flexible")},
            y_label="% correct", value_format="{:.1f}")

    generated = diagnosis.get("fault_histogram", {})
    teacher = diagnosis.get("teacher_forced_histogram", {})
    positions = sorted({int(k) for k in generated} | {int(k) for k in teacher}) or [1]
    figures["fault_positions"] = bar_chart(
        "First faulty step", [str(p) for p in positions],
        {"generated solutions": [generated.get(str(p), 0) for p in positions],
         "teacher forcing": [teacher.get(str(p), 0) for p in positions]},
        y_label="problems")

    types = diagnosis.get("error_types", {})
    figures["error_types"] = bar_chart("Error types of the first faulty step", list(ERROR_TYPES),
                                       {"problems": [types.get(name, 0) for name in ERROR_TYPES]}, y_label="problems")

    for index, trace in enumerate(diagnosis.get("margin_traces", [])):
        steps = trace["token_step"]
        boundaries = [i for i in range(1, len(steps)) if steps[i] != steps[i - 1]]
        markers = []
        if trace.get("frontier_step") is not None and trace["frontier_step"] in steps:
            markers.append((steps.index(trace["frontier_step"]), f"teacher-forced frontier, step {trace['frontier_step'] + 1}"))
        figures[f"margins_{index + 1}"] = line_chart(
            f"Token margins along reference trace {trace['problem_id']}",
            {"full precision": trace["fp_margin"], "quantized": trace["q_margin"]},
            markers=markers, boundaries=boundaries, y_label="margin (logits)")
    return figures


def render_report(diagnosis: dict, figures: dict[str, str], max_examples: int = 30) -> str:
    """Return the report as one HTML page with the figures inline."""
    from importlib import resources

    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    # Figures are SVG made here from numbers, so they are marked safe; every other value is escaped.
    environment = Environment(loader=FileSystemLoader(str(resources.files("hub_templates"))), autoescape=True,
                              undefined=StrictUndefined)
    examples = [p for p in diagnosis.get("problems", []) if p.get("fault")][:max_examples]
    return environment.get_template("report.html.j2").render(d=diagnosis, figures=figures, examples=examples)
