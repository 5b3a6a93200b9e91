"""The report a reviewer reads on a pull request: what the change did to every model's test scores.

:func:`write_change_report` compares two pipeline runs (base and head, as
:func:`lesionseg.experiments.runs.read_pipeline_run` reads them from a folder or through DVC) and writes Markdown
for the job summary and the comment: each model's paired change with its 95% interval and verdict, a text chart
of those changes (and ``change.png``), and every ``metrics.json`` number on both sides, folded away. docs/ci.md.
"""

from __future__ import annotations

import math
from pathlib import Path

from lesionseg import atomic
from lesionseg.experiments.compare import DEFAULT_METRIC, ModelComparison, compare_models, format_markdown
from lesionseg.experiments.model_metrics import ModelMetrics
from lesionseg.experiments.runs import TEST, Run

# First line of the report: the workflow finds its earlier comment by it and edits that one.
_REPORT_MARKER = "<!-- lesionseg-ci-report -->"
_CHART_WIDTH = 61  # characters of the text chart's axis; odd, so 0 can sit in the middle


def _metrics_diff(base: dict[str, ModelMetrics], head: dict[str, ModelMetrics]) -> dict[str, list[tuple]]:
    """Model -> ``(metric, base value, head value, change)`` for every number of either side
    (:meth:`ModelMetrics.numbers`: external sets' as ``external.<set>.<metric>``).

    Models and metrics keep the base's order, then the head's new ones; a value missing on one side
    is ``None`` and so is its change (what ``dvc metrics diff`` reports for an added or removed metric).
    """
    table = {}
    for model in [*base, *(m for m in head if m not in base)]:
        old = base[model].numbers() if model in base else {}
        new = head[model].numbers() if model in head else {}
        rows = []
        for key in [*old, *(k for k in new if k not in old)]:
            a, b = _number(old.get(key)), _number(new.get(key))
            rows.append((key, a, b, b - a if a is not None and b is not None else None))
        table[model] = rows
    return table


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _change_chart(results: list[ModelComparison], width: int = _CHART_WIDTH) -> str:
    """Each model's change and 95% interval on one axis centred on 0, as text.

    ``[`` and ``]`` end the interval, ``o`` is the mean change, ``|`` is no change; the axis spans
    the largest interval end of all models either way.
    """
    scale = max([abs(v) for r in results for v in (*r.change.ci95, r.change.delta)] + [1e-12])
    half = width // 2

    def column(value: float) -> int:
        return half + round(value / scale * half)

    name_width = max(len(r.model) for r in results)
    lines = [f"{'':{name_width}}  {f'-{scale:.3f}':<{half}}0{f'+{scale:.3f}':>{half}}"]
    for r in results:
        low, high = (column(v) for v in r.change.ci95)
        cells = [" "] * width
        for i in range(low, high + 1):
            cells[i] = "-"
        cells[half] = "|"
        cells[low], cells[high] = "[", "]"
        cells[column(r.change.delta)] = "o"  # over a bracket when the interval is narrower than a character
        lines.append(f"{r.model:{name_width}}  {''.join(cells)}")
    return "\n".join(lines)


def _value(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if value.is_integer():  # counts (parameters, epochs) in full, not as 6.9955e+06
        return f"{value:+.0f}" if signed else f"{value:.0f}"
    return f"{value:+.5g}" if signed else f"{value:.5g}"


def _format_report(
    base: Run, head: Run, metric: str = DEFAULT_METRIC, notes: list[str] = ()
) -> tuple[str, list[ModelComparison]]:
    """The report's Markdown and the paired results it shows (one per model on both sides, on the test split).

    ``base``, ``head``: pipeline runs with their metrics and test tables
    (:func:`~lesionseg.experiments.runs.read_pipeline_run`)."""
    base_tables, head_tables = base.tables[TEST], head.tables[TEST]
    results = compare_models(base_tables, head_tables, metric, evaluation=TEST)
    only = {
        "base": [m for m in base_tables if m not in head_tables],
        "head": [m for m in head_tables if m not in base_tables],
    }
    lines = [
        _REPORT_MARKER,
        "## lesionseg: what this change does to the test scores",
        "",
        f"Base: `{base.label}`, head: `{head.label}`. Each model is compared image by image on the test "
        f"set: mean per-image `{metric}`, change = head - base, its 95% bootstrap interval (BCa, resampling "
        "images), Wilcoxon signed-rank p. **better** / **worse**: the interval excludes 0; "
        "**no detectable change**: it holds 0 (the test set cannot tell the two apart).",
        *(["", *notes] if notes else []),
        "",
        "### Change per model",
        "",
        format_markdown(results),
        *[f"\n{', '.join(names)}: only in the {side} run, not compared." for side, names in only.items() if names],
        "",
        f"### Chart: change of mean `{metric}` and its 95% interval",
        "",
        "```text",
        _change_chart(results),
        "```",
        "",
        "`o` mean change, `[ ]` 95% interval, `|` no change; left of `|` is worse, right is better.",
        "",
        "### Metrics per model (`dvc metrics diff --md`)",
    ]
    for model, rows in _metrics_diff(base.metrics, head.metrics).items():
        changed = sum(1 for *_, change in rows if change)
        lines += [
            "",
            f"<details><summary>{model}: {changed} of {len(rows)} metrics changed</summary>",
            "",
            "| Metric | base | head | Change |",
            "|---|--:|--:|--:|",
            *(f"| {key} | {_value(a)} | {_value(b)} | {_value(c, signed=True)} |" for key, a, b, c in rows),
            "",
            "</details>",
        ]
    return "\n".join(lines) + "\n", results


def _plot_change(results: list[ModelComparison], path: Path, metric: str = DEFAULT_METRIC) -> None:
    """The chart of :func:`_change_chart` as an image: change and 95% interval per model."""
    from lesionseg.report.figures import plt, save_figure  # matplotlib only when the chart is drawn

    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(results) + 1.5))
    y = range(len(results))
    changes = [r.change for r in results]
    deltas = [c.delta for c in changes]
    errors = [[c.delta - c.ci95[0] for c in changes], [c.ci95[1] - c.delta for c in changes]]
    ax.errorbar(deltas, y, xerr=errors, fmt="o", capsize=4)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set(yticks=list(y), yticklabels=[r.model for r in results], xlabel=f"change of mean {metric} (head - base)")
    ax.invert_yaxis()
    ax.set_title("Paired change per model, 95% bootstrap interval")
    save_figure(fig, path)


def write_change_report(
    base: Run, head: Run, out_dir: Path, metric: str = DEFAULT_METRIC, notes: list[str] = ()
) -> str:
    """Write ``report.md`` and ``change.png`` into ``out_dir`` (created); returns the Markdown."""
    markdown, results = _format_report(base, head, metric, notes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot_change(results, out_dir / "change.png", metric)
    atomic.write_text(out_dir / "report.md", markdown)
    return markdown
