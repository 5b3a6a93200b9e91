"""The paired comparison of per-image scores, and its verdict: the one place the report, ``lesionseg compare``
and ``scripts/ci_report.py`` compare two models, two runs or two experiments.

Two per-image tables (an ``id`` column, one row per image, and score columns) are paired by image id, whatever
their row order (:func:`paired_change`, with :func:`lesionseg.evaluation.stats.paired_difference`'s statistics).
:func:`compare_models` compares the models two sides share (name -> table); :func:`compare_runs` two
:class:`~lesionseg.experiments.runs.Run` on every evaluation both have.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from lesionseg.evaluation.stats import PairedComparison, paired_difference
from lesionseg.experiments.runs import Run

DEFAULT_METRIC = "orig_jaccard"
BETTER, WORSE, NO_CHANGE = "better", "worse", "no detectable change"
_SHOWN_IDS = 5  # image ids an error message lists per side


class ImageMismatchError(ValueError):
    """The two sides of a paired comparison scored different images; names what was compared and some ids."""

    def __init__(self, what: str, only_a: list, only_b: list, n_a: int, n_b: int):
        self.what, self.only_a, self.only_b = what, list(only_a), list(only_b)
        super().__init__(
            f"{what}: the two sides scored different images ({n_a} vs {n_b}; "
            f"only in A: {_some(self.only_a)}, only in B: {_some(self.only_b)})"
        )


def _some(ids: list) -> str:
    return f"{sorted(ids)[:_SHOWN_IDS]}{' ...' if len(ids) > _SHOWN_IDS else ''}"


def paired_change(a: pd.DataFrame, b: pd.DataFrame, metric: str = DEFAULT_METRIC, what: str = "") -> PairedComparison:
    """Per-image ``metric`` of table ``b`` against table ``a``, image by image.

    ``a``, ``b``: per-image tables (``id`` and ``metric`` columns, one row per image, any row order).
    Returns :func:`~lesionseg.evaluation.stats.paired_difference` over the N shared images: ``delta`` is
    the mean over images of ``b - a``, with its 95% bootstrap interval and Wilcoxon p; ``n`` = N.
    Raises :class:`ImageMismatchError` (naming ``what``, e.g. the model and evaluation) when the tables list
    different images, ``ValueError`` when an image is listed twice or ``metric`` is not a column.
    """
    label = what or "per-image tables"
    for side, table in (("A", a), ("B", b)):
        if metric not in table.columns:
            raise ValueError(f"{label}: side {side} has no column {metric!r} (it has {list(table.columns)})")
        if not table["id"].is_unique:
            raise ValueError(f"{label}: side {side} lists an image twice")
    left, right = a.set_index("id")[metric], b.set_index("id")[metric]
    only_a, only_b = left.index.difference(right.index), right.index.difference(left.index)
    if len(only_a) or len(only_b):
        raise ImageMismatchError(label, only_a, only_b, len(left), len(right))
    return paired_difference(left, right.loc[left.index])


def verdict(change: PairedComparison) -> str:
    """``better`` / ``worse`` when the 95% interval of the change (B - A) lies above / below 0, else
    ``no detectable change`` (the images cannot tell the two apart)."""
    if not change.significant:
        return NO_CHANGE
    return BETTER if change.ci95[0] > 0 else WORSE


@dataclass(frozen=True)
class ModelComparison:
    """One model's paired change (B - A) on one evaluation (``test``, ``external <set>``, ...)."""

    evaluation: str
    model: str
    change: PairedComparison

    @property
    def verdict(self) -> str:
        return verdict(self.change)

    def as_dict(self) -> dict:
        """``evaluation``, ``model``, ``n``, ``mean_a``, ``mean_b``, ``delta``, ``ci95``, ``p_value``, ``verdict``."""
        return {"evaluation": self.evaluation, "model": self.model, **self.change.as_dict(), "verdict": self.verdict}


def compare_models(
    a: dict[str, pd.DataFrame],
    b: dict[str, pd.DataFrame],
    metric: str = DEFAULT_METRIC,
    models=None,
    evaluation: str = "test",
) -> list[ModelComparison]:
    """:func:`paired_change` of each model on both sides (or of the given ``models``, in that order;
    otherwise A's order), on one ``evaluation``.

    Raises ``ValueError`` when a given model is missing from a side or no model is on both sides, and
    :class:`ImageMismatchError` when a model's two tables score different images.
    """
    names = list(models) if models else [name for name in a if name in b]
    if not names:
        raise ValueError(f"no model on both sides: {sorted(a)} vs {sorted(b)}")
    for name in names:
        for side, tables in (("A", a), ("B", b)):
            if name not in tables:
                raise ValueError(f"model {name!r} is not in {side} (it has {sorted(tables)})")
    return [
        ModelComparison(evaluation, name, paired_change(a[name], b[name], metric, f"{name} on {evaluation}"))
        for name in names
    ]


def as_one_model(a: Run, b: Run) -> tuple[Run, Run]:
    """Two sides of one table each (two CSV files, e.g. two models of one run) as one model
    ``"<name A> vs <name B>"``, so that they are compared whatever their names."""
    ((evaluation_a, tables_a),), ((evaluation_b, tables_b),) = a.tables.items(), b.tables.items()
    ((name_a, table_a),), ((name_b, table_b),) = tables_a.items(), tables_b.items()
    evaluation = evaluation_a if evaluation_a == evaluation_b else f"{evaluation_a} vs {evaluation_b}"
    label = f"{name_a} vs {name_b}"
    return Run(a.label, {evaluation: {label: table_a}}), Run(b.label, {evaluation: {label: table_b}})


@dataclass
class RunComparison:
    """:func:`compare_runs`' results (evaluation by evaluation, models in A's order) and what it skipped."""

    results: list[ModelComparison]
    notes: list[str]


def compare_runs(a: Run, b: Run, metric: str = DEFAULT_METRIC, models=None) -> RunComparison:
    """The paired change (B - A) of every model (or of ``models``) on every evaluation both runs have.

    An evaluation or a model on one side only is skipped with a note. Raises ``ValueError`` naming both
    runs when they have no evaluation in common or no model is compared at all, and
    :class:`ImageMismatchError` when a model's two tables score different images.
    """
    common = [e for e in a.tables if e in b.tables]
    if not common:
        raise ValueError(
            f"{a.label} and {b.label} have no evaluation in common "
            f"({a.label}: {list(a.tables) or 'none'}; {b.label}: {list(b.tables) or 'none'})"
        )
    notes = [
        f"{e}: only in {run.label}, skipped"
        for run, other in ((a, b), (b, a))
        for e in run.tables
        if e not in other.tables
    ]
    results = []
    for evaluation in common:
        left, right = a.tables[evaluation], b.tables[evaluation]
        wanted = list(models) if models else [*left, *(m for m in right if m not in left)]
        for run, tables in ((a, left), (b, right)):
            missing = [m for m in wanted if m not in tables]
            if missing:
                notes.append(f"{evaluation}: {', '.join(missing)} not in {run.label}, not compared")
        names = [m for m in wanted if m in left and m in right]
        if names:
            results += compare_models(left, right, metric, names, evaluation)
    if not results:
        raise ValueError(
            f"no model of {a.label} is also in {b.label} on any evaluation both have ({', '.join(common)})"
        )
    return RunComparison(results, notes)


def _header(labels: tuple[str, str]) -> tuple[str, ...]:
    base, head = labels
    return ("evaluation", "model", "n", f"mean {base}", f"mean {head}", "change", "95% CI", "p", "verdict")


def _cells(r: ModelComparison) -> tuple[str, ...]:
    """A result's row under :func:`_header`, numbers formatted."""
    c = r.change
    low, high = c.ci95
    means = (f"{c.mean_a:.4f}", f"{c.mean_b:.4f}")
    change = (f"{c.delta:+.4f}", f"[{low:+.4f}, {high:+.4f}]", f"{c.p_value:.3g}")
    return (r.evaluation, r.model, str(c.n), *means, *change, r.verdict)


def format_markdown(results: list[ModelComparison], labels: tuple[str, str] = ("base", "head")) -> str:
    """One Markdown table, a row per result: n, the two means, the change (B - A), its 95% interval,
    the Wilcoxon p-value and the :func:`verdict`. ``labels`` name sides A and B. An ``evaluation``
    column leads when the results span more than one evaluation."""
    first = 0 if len({r.evaluation for r in results}) > 1 else 1  # else drop the evaluation column
    rule = "|" + "|".join(("---", "---", *["--:"] * 6, "---")[first:]) + "|"
    rows = ["| " + " | ".join(row[first:]) + " |" for row in (_header(labels), *(_cells(r) for r in results))]
    return "\n".join([rows[0], rule, *rows[1:]])


def format_text(results: list[ModelComparison], labels: tuple[str, str] = ("A", "B")) -> str:
    """The rows of :func:`format_markdown` as a plain table with aligned columns, for a terminal."""
    rows = [_header(labels), *(_cells(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {2, 3, 4, 5, 7}  # right-aligned columns
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    )
