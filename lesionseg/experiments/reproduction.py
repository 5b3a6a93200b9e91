"""The reference report's table beside a record of its recipe: the reproduction and the averaging behind it.

The report's published scores are data, kept once in ``recipes/reference_report.yaml``; everything else
comes from the record (``results/<name>/``): its per-image tables with their pixel counts, and its
cross-validation summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lesionseg.errors import DataError
from lesionseg.evaluation.averaging import AVERAGINGS, averaged_scores, table_counts
from lesionseg.evaluation.stats import mean_interval
from lesionseg.experiments.results_record import record_path
from lesionseg.experiments.runs import CV_METRICS_FILE, read_run

PUBLISHED_FILE = Path("recipes/reference_report.yaml")
_OFFICIAL = "per_image"
TEST = "test"


def _read_published(path: Path = PUBLISHED_FILE) -> dict[str, dict[str, float]]:
    """Model -> ``{"iou": ..., "dice": ...}`` as the reference report published them."""
    try:
        models = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["models"]
    except (OSError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: cannot read the reference report's scores (a `models:` mapping): {exc}") from exc
    return {name: {"iou": float(s["iou"]), "dice": float(s["dice"])} for name, s in models.items()}


def _test_tables(record: str, results_dir: Path) -> dict[str, object]:
    """Model -> its test-split per-image table, in the record's model order."""
    tables = read_run(str(record_path(record, results_dir))).tables
    if TEST not in tables:
        raise DataError(f"{record_path(record, results_dir)}: the record has no test-split per-image tables")
    return tables[TEST]


def _cv_summary(record: str, results_dir: Path) -> dict:
    path = record_path(record, results_dir) / CV_METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _cell(value: float, interval: tuple[float, float]) -> str:
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def verdict(published: float, interval: tuple[float, float]) -> str:
    """Where a published score sits against our 95% interval: within it, or ours above or below by how much."""
    low, high = interval
    if low <= published <= high:
        return "within"
    gap = low - published if published < low else published - high
    return f"ours {'above' if published < low else 'below'} by {gap:.4f}"


def reproduction_table(record: str, averaging: str, results_dir: Path, published_file: Path = PUBLISHED_FILE) -> str:
    """Per model: the report's IoU / Dice; ours on the test split in the official metric and in ``averaging``
    (the report's, as settled by :func:`averaging_table`), each with its 95% interval; the k-fold CV mean IoU
    and its standard error (out of fold, official metric); where the report's IoU and Dice sit against ours."""
    if averaging not in AVERAGINGS:
        raise ValueError(f"unknown averaging {averaging!r} (averagings: {', '.join(AVERAGINGS)})")
    published, tables, cv = (
        _read_published(published_file),
        _test_tables(record, results_dir),
        _cv_summary(record, results_dir),
    )
    n = len(next(iter(tables.values())))
    head = ["model", "report IoU / Dice", f"ours, official IoU ({n})", "ours IoU, report's averaging"]
    head += ["ours Dice, report's averaging", "CV IoU, mean ± SE", "report vs ours (IoU; Dice)"]
    rows = [f"| {' | '.join(head)} |", "|---|--:|--:|--:|--:|--:|---|"]
    for name, table in tables.items():
        official = mean_interval(table["orig_jaccard"])
        ours = averaged_scores(table_counts(table, AVERAGINGS[averaging].resolution), averaging)
        report = published.get(name)
        entry = cv.get(name, {}).get("orig_jaccard")
        cells = [
            name,
            f"{report['iou']:.4f} / {report['dice']:.4f}" if report else "-",
            _cell(official[0], official[1]),
            _cell(ours.iou, ours.iou_ci95),
            _cell(ours.dice, ours.dice_ci95),
            f"{entry['mean']:.4f} ± {entry['se']:.4f}" if entry else "-",
            f"{verdict(report['iou'], ours.iou_ci95)}; {verdict(report['dice'], ours.dice_ci95)}" if report else "-",
        ]
        rows.append(f"| {' | '.join(cells)} |")
    return f"The report's averaging: {AVERAGINGS[averaging].label}.\n\n" + "\n".join(rows)


def averaging_table(record: str, results_dir: Path, published_file: Path = PUBLISHED_FILE) -> str:
    """Per model the report published and per averaging: our IoU and Dice on the same predictions, and how far
    our Dice - IoU is from the report's. One confusion matrix ties Dice to IoU, so the averaging that fits the
    report's pair is the one whose Dice - IoU matches: the gap does not depend on how good the model is."""
    published, tables = _read_published(published_file), _test_tables(record, results_dir)
    rows = [
        "| model | averaging | ours IoU | ours Dice | ours Dice - IoU | report Dice - IoU | difference |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for name, report in published.items():
        if name not in tables:
            continue
        report_gap = report["dice"] - report["iou"]
        for key, how in AVERAGINGS.items():
            scores = averaged_scores(table_counts(tables[name], how.resolution), key)
            gap = scores.dice - scores.iou
            cells = [name, how.label, f"{scores.iou:.4f}", f"{scores.dice:.4f}", f"{gap:+.4f}", f"{report_gap:+.4f}"]
            rows.append(f"| {' | '.join(cells)} | {gap - report_gap:+.4f} |")
    return "\n".join(rows)
