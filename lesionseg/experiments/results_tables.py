"""The results tables of README.md and docs/, rendered from committed records (``results/<name>/``).

A table is a marked region of a page (``<!-- results:KIND RECORD... -->`` ... ``<!-- /results -->``);
:func:`render_pages` rewrites every region from the records it names (and lists those not
committed yet). The kinds and their options: docs/development.md, "Results tables".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from lesionseg import atomic
from lesionseg.evaluation.stats import mean_interval
from lesionseg.experiments.compare import DEFAULT_METRIC, compare_runs, format_markdown
from lesionseg.experiments.model_metrics import parse_metrics
from lesionseg.experiments.reproduction import PUBLISHED_FILE, averaging_table, reproduction_table
from lesionseg.experiments.results_record import PARAMS_FILE, RESULTS_DIR, read_provenance, record_path
from lesionseg.experiments.runs import read_run

_REGION = re.compile(r"^<!-- results:(?P<spec>[^>]*?) -->\n(?P<body>.*?)^<!-- /results -->$", re.M | re.S)
_OPEN_MARKER = re.compile(r"^<!-- results:", re.M)
_HISTORY_PAGE = "docs/history.md"
RENDER_COMMAND = "python scripts/results.py render"
# A score as the tables print them: four decimals, optionally signed (a change); not a time or a count.
_SCORE = re.compile(r"(?<![\w.])[+-]?0\.\d{4}(?![\d])")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_KINDS = {"scores": 1, "change": 2, "review": 1, "reproduction": 1, "averaging": 1, "cost": None}
# kind -> number of records it names (None: one or more)
_OPTIONS = {"metric", "models", "averaging"}
_GIVEN_WALL = "given"  # provenance's wall_seconds_source for a time measured around the whole run


@dataclass(frozen=True)
class TableSpec:
    """A region's opening marker, parsed: ``kind``, the ``records`` it is rendered from, its options."""

    kind: str
    records: tuple[str, ...]
    options: dict[str, str]

    @classmethod
    def parse(cls, spec: str, where: str) -> TableSpec:
        kind, *words = spec.split()
        records = tuple(w for w in words if "=" not in w)
        options = dict(w.split("=", 1) for w in words if "=" in w)
        if kind not in _KINDS:
            raise ValueError(f"{where}: unknown results table kind {kind!r} (kinds: {', '.join(_KINDS)})")
        if (len(records) != _KINDS[kind]) if _KINDS[kind] else not records:
            count = _KINDS[kind] or "one or more"
            raise ValueError(f"{where}: a {kind} table names {count} record(s), got {list(records)}")
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {sorted(unknown)} ({', '.join(o + '=' for o in _OPTIONS)})")
        if kind == "reproduction" and "averaging" not in options:
            raise ValueError(f"{where}: a reproduction table names the report's averaging (averaging=)")
        return cls(kind, records, options)

    @property
    def metric(self) -> str:
        return self.options.get("metric", DEFAULT_METRIC)

    @property
    def models(self) -> list[str] | None:
        return self.options["models"].split(",") if "models" in self.options else None


def _interval_cell(scores) -> str:
    mean, (low, high) = mean_interval(scores)
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def _scores_table(record: str, metric: str, models: list[str] | None, results_dir: Path) -> str:
    """Per model (rows) and evaluation (columns, with their image counts): mean ``metric`` [95% interval]."""
    run = read_run(str(record_path(record, results_dir)))
    names = models or list(dict.fromkeys(m for tables in run.tables.values() for m in tables))
    heads = [f"{evaluation} ({len(next(iter(tables.values())))})" for evaluation, tables in run.tables.items()]
    rows = [f"| model | {' | '.join(heads)} |", "|---|" + "--:|" * len(heads)]
    for name in names:
        cells = [_interval_cell(tables[name][metric]) if name in tables else "-" for tables in run.tables.values()]
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(rows)


def _change_table(a: str, b: str, metric: str, models: list[str] | None, results_dir: Path) -> str:
    """``lesionseg compare results/A results/B --md``: the paired change of each model on each evaluation."""
    runs = [read_run(str(record_path(name, results_dir))) for name in (a, b)]
    return format_markdown(compare_runs(*runs, metric, models).results, labels=(a, b))


def _review_table(record: str, models: list[str] | None, results_dir: Path) -> str:
    """Per model and evaluation: masks, mean IoU, and the review flag's AUROC for IoU < 0.7, share of failures
    caught, share flagged and mean IoU of the masks not flagged (``metrics.json``'s ``review_*``)."""
    path = record_path(record, results_dir) / "metrics.json"
    records = parse_metrics(path.read_text(encoding="utf-8"), path)
    test_tables = read_run(str(record_path(record, results_dir))).tables["test"]
    head = ["evaluation", "model", "masks", "mean IoU", "AUROC (IoU < 0.7)", "failures caught", "flagged"]
    rows = [f"| {' | '.join(head)} | IoU of accepted masks |", "|---|---|--:|--:|--:|--:|--:|--:|"]
    for name in models or list(records):
        scored = [("test", len(test_tables[name]) if name in test_tables else None, records[name].test)]
        scored += [(f"external {s}", v.get("n"), v) for s, v in records[name].external.items()]
        for evaluation, n, scores in scored:
            if "review_auroc" not in scores:
                continue
            cells = [evaluation, name, f"{n}", f"{scores['orig_jaccard']:.4f}", f"{scores['review_auroc']:.3f}"]
            cells += [f"{scores['review_caught']:.0%}", f"{scores['review_flagged']:.0%}"]
            cells.append(f"{scores['review_accepted_jaccard']:.4f}")
            rows.append(f"| {' | '.join(cells)} |")
    return "\n".join(rows)


def _machine(facts: dict) -> str | None:
    machine = facts.get("machine") or {}
    cores = f"{machine['cpu_count']} cores" if not machine.get("gpu") and machine.get("cpu_count") else None
    return ", ".join(filter(None, [machine.get("gpu") or machine.get("cpu"), cores])) or None


def _time(facts: dict) -> str | None:
    """The recorded time and what it measured: the whole run (given to ``results save``) or its training phases."""
    if not facts.get("wall_seconds"):
        return None
    whole = str(facts.get("wall_seconds_source", "")).startswith(_GIVEN_WALL)
    return f"{facts['wall_seconds']:,.0f} s {'wall' if whole else 'of training phases'}"


def _levels(unfreeze) -> int:
    return len(unfreeze) if isinstance(unfreeze, list) else 1


def _cost_table(records: tuple[str, ...], results_dir: Path) -> str:
    """Per record: machine, precision, data set, schedule and models trained, the recorded time and what it
    measured, and (training phases only) the seconds per epoch over every phase's epochs."""
    head = ["record", "machine", "precision", "data", "epochs (frozen + fine-tuning)", "models trained", "time"]
    rows = [f"| {' | '.join(head)} | s per epoch |", "|---|---|---|---|--:|--:|--:|--:|"]
    for name in records:
        facts = read_provenance(name, results_dir)
        params = yaml.safe_load((record_path(name, results_dir) / PARAMS_FILE).read_text()) or {}
        train, cv = params.get("train", {}), params.get("cv", {})
        # finetune states only the keys where it differs from train
        finetune = {**train, **params["finetune"]} if params.get("finetune") else {}
        levels = _levels(finetune.get("unfreeze"))
        runs = 1 + (cv.get("folds") or 0)  # the main split, then each fold trains every phase again
        epochs = runs * (train.get("epochs", 0) + levels * finetune.get("epochs", 0))
        per_epoch = "-"
        if facts.get("wall_seconds") and not str(facts.get("wall_seconds_source", "")).startswith(_GIVEN_WALL):
            per_epoch = f"{facts['wall_seconds'] / epochs:,.1f}" if epochs else "-"
        source = str(params.get("download", {}).get("source", "")).rstrip("/")
        cells = [f"`{name}`", _machine(facts) or "-", facts.get("precision") or "-", source.rsplit("/", 1)[-1]]
        cells += [f"{train.get('epochs')} + {levels} x {finetune.get('epochs')}", f"{runs * (1 + levels)}"]
        cells += [_time(facts) or "-", per_epoch]
        rows.append(f"| {' | '.join(cells)} |")
    return "\n".join(rows)


def _footnote(spec: TableSpec, results_dir: Path) -> str:
    made = []
    for name in spec.records:
        facts = read_provenance(name, results_dir)
        how = f"`{facts['command']}`" if facts.get("command") else "command not recorded"
        commit = facts.get("baseline_commit")
        details = [f"run from commit {commit[:7]}" if commit else None, facts.get("precision"), _machine(facts)]
        details.append(_time(facts))  # the run's own time, so no CPU or GPU time is typed into a page by hand
        made.append(f"`{record_path(name, results_dir).as_posix()}/` ({how}; {', '.join(d for d in details if d)})")
    what = {
        "scores": f"mean per-image `{spec.metric}`, 95% bootstrap intervals",
        "change": f"paired change B - A of per-image `{spec.metric}`, 95% bootstrap intervals",
        "review": "the review flag at each model's stored review threshold (failure: IoU < 0.7)",
        "reproduction": f"the reference report's scores (`{PUBLISHED_FILE}`) beside ours on the test split, "
        "95% bootstrap intervals (images resampled; batches for a per-batch averaging), CV out of fold",
        "averaging": f"the reference report's scores (`{PUBLISHED_FILE}`); ours on the test split",
        "cost": "time as recorded by `python scripts/results.py save`",
    }[spec.kind]
    return f"{what}; from {'; '.join(made)}. Regenerate: `{RENDER_COMMAND}`."


def _render_table(spec: TableSpec, results_dir: Path = RESULTS_DIR) -> str:
    """The Markdown of one region: its table and the line naming its records and command."""
    missing = [name for name in spec.records if not record_path(name, results_dir).is_dir()]
    if missing:  # a table waiting for its experiment: says so, and holds no number
        names = ", ".join(f"`{record_path(name, results_dir).as_posix()}/`" for name in missing)
        return (
            f"*No record {names} committed yet: when the experiment has finished, "
            f"`python scripts/results.py save <exp> --name {missing[0]}`, commit it, then `{RENDER_COMMAND}`.*\n"
        )
    if spec.kind == "scores":
        table = _scores_table(spec.records[0], spec.metric, spec.models, results_dir)
    elif spec.kind == "review":
        table = _review_table(spec.records[0], spec.models, results_dir)
    elif spec.kind == "reproduction":
        table = reproduction_table(spec.records[0], spec.options["averaging"], results_dir)
    elif spec.kind == "averaging":
        table = averaging_table(spec.records[0], results_dir)
    elif spec.kind == "cost":
        table = _cost_table(spec.records, results_dir)
    else:
        table = _change_table(*spec.records, spec.metric, spec.models, results_dir)
    return f"{table}\n\n{_footnote(spec, results_dir)}\n"


def regions(text: str, where: str) -> list[tuple[TableSpec, re.Match]]:
    """Each region of a page with its parsed marker; an opening marker without its close is an error."""
    found = [
        (TableSpec.parse(m["spec"], f"{where}:{text.count(chr(10), 0, m.start()) + 1}"), m)
        for m in _REGION.finditer(text)
    ]
    if len(_OPEN_MARKER.findall(text)) != len(found):
        raise ValueError(f"{where}: a `<!-- results:... -->` marker without its `<!-- /results -->`")
    return found


def _render_page(text: str, where: str, results_dir: Path = RESULTS_DIR) -> str:
    """``text`` with every region's body rendered anew."""
    out, last = [], 0
    for spec, match in regions(text, where):
        out += [text[last : match.start("body")], _render_table(spec, results_dir)]
        last = match.end("body")
    return "".join(out) + text[last:]


def _unrecorded_rows(text: str) -> list[int]:
    """Line numbers of Markdown table rows outside the regions that hold a score: numbers no record renders.
    Rows inside fenced blocks are examples of a command's output, not tables of the page, and are skipped."""
    inside = set()
    for match in _REGION.finditer(text):
        first = text.count("\n", 0, match.start()) + 1
        inside.update(range(first, first + match.group(0).count("\n") + 1))
    rows, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        opening = _FENCE.match(line)
        if opening and (fence is None or opening.group(1).startswith(fence)):
            fence = opening.group(1) if fence is None else None
        elif fence is None and number not in inside and line.lstrip().startswith("|") and _SCORE.search(line):
            rows.append(number)
    return rows


def _missing_records(text: str, where: str, results_dir: Path = RESULTS_DIR) -> list[str]:
    """The records a page's regions name that ``results_dir`` lacks."""
    named = [name for spec, _ in regions(text, where) for name in spec.records]
    return [name for name in dict.fromkeys(named) if not record_path(name, results_dir).is_dir()]


def pages(root: Path) -> list[Path]:
    """README.md and every docs page."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render_pages(
    pages: list[Path], results_dir: Path = RESULTS_DIR, write: bool = True
) -> tuple[list[Path], list[str]]:
    """The pages whose regions differ from the records (each rewritten whole when ``write``), and a line for
    each record a page names that ``results_dir`` lacks (its table says so)."""
    differ, missing = [], []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        rendered = _render_page(text, str(page), results_dir)
        named = _missing_records(text, str(page), results_dir)
        missing += [f"{page}: no record {results_dir / name}/ yet" for name in named]
        if rendered != text:
            differ.append(page)
            if write:
                atomic.write_text(page, rendered)
    return differ, missing
