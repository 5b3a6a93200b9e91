"""A pipeline run's records, and the one reader of them (``lesionseg compare``, ``scripts/ci_report.py`` and
``scripts/results.py``).

A run is a reports folder on disk, or the one DVC tracks at a git revision or DVC experiment (read from DVC's
cache). Its evaluations, model -> per-image table each: ``test`` (``per_image/``), ``external <set>``
(``per_image/<set>/``), ``cv out-of-fold`` (``cv/per_image/``) and ``external <set>, fold-model mean``
(``cv/external/<set>/``). :func:`read_run` reads every source ``lesionseg compare`` takes (also a folder of
per-image CSVs, or one CSV); :func:`read_pipeline_run` adds the run's ``metrics.json``. Both return a :class:`Run`.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lesionseg.errors import DataError
from lesionseg.experiments.model_metrics import ModelMetrics, parse_metrics

REPORTS_DIR = "reports"
_PER_IMAGE = "per_image"
_CV_PER_IMAGE = "cv/per_image"
_CV_EXTERNAL = "cv/external"
METRICS_FILE = "metrics.json"
CV_METRICS_FILE = "cv/metrics.json"
TEST = "test"
_CV_OUT_OF_FOLD = "cv out-of-fold"
_LOOSE_TABLES = "per-image tables"


def _external_evaluation(set_name: str) -> str:
    return f"external {set_name}"


def _fold_mean_evaluation(set_name: str) -> str:
    return f"external {set_name}, fold-model mean"


def _evaluation_of(folder: str) -> str:
    """The evaluation a folder of per-image tables holds, from where it sits in the layout above
    (``reports/cv/per_image`` -> ``cv out-of-fold``); a folder elsewhere is :data:`_LOOSE_TABLES`."""
    parts = Path(folder).parts
    if parts[-2:] == ("cv", "per_image"):
        return _CV_OUT_OF_FOLD
    if len(parts) >= 3 and parts[-3:-1] == ("cv", "external"):
        return _fold_mean_evaluation(parts[-1])
    if parts[-1:] == (_PER_IMAGE,):
        return TEST
    if len(parts) >= 2 and parts[-2] == _PER_IMAGE:
        return _external_evaluation(parts[-1])
    return _LOOSE_TABLES  # two such folders (two runs' copies of one evaluation) are compared with each other


def _check_table(table: pd.DataFrame, source) -> pd.DataFrame:
    """``table`` if it is a per-image table (an ``id`` column, each image once), else ``DataError``
    naming ``source``."""
    if "id" not in table.columns:
        raise DataError(source, "not a per-image table: no 'id' column")
    if not table["id"].is_unique:
        raise DataError(source, "per-image table lists an image twice")
    return table


def read_tables(path: Path) -> dict[str, pd.DataFrame]:
    """Model name -> table from one per-image CSV file (named by its stem) or a folder of them."""
    path = Path(path)
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise DataError(path, "no per-image CSV files here")
    return {f.stem: _check_table(pd.read_csv(f), f) for f in files}


class RunFiles:
    """A run's reports folder on disk (``source`` an existing folder) or through DVC at revision ``source``;
    paths are relative to the reports folder."""

    def __init__(self, source: str, reports_dir: str = REPORTS_DIR, repo: str = "."):
        self.label = source
        if Path(source).is_dir():
            from fsspec.implementations.local import LocalFileSystem

            self.fs, self.root, self.rev = LocalFileSystem(), str(Path(source).resolve()), None
            self.repo_root = str(Path(repo).resolve())
            return
        from dvc.api import DVCFileSystem

        self.root, self.rev = reports_dir, source
        try:
            self.fs = DVCFileSystem(repo, rev=source)
            found = self.fs.isdir(reports_dir)
        except Exception as exc:  # DVC raises several types for an unknown revision or repository
            raise ValueError(
                f"{source!r} is not a folder, and DVC cannot read {reports_dir}/ at it as a git revision or "
                f"experiment: {exc}"
            ) from exc
        if not found:
            raise ValueError(f"no {reports_dir}/ at revision or experiment {source!r}")
        self.repo_root = ""  # DVC's file system: paths are relative to the repository at the revision

    def where(self, relative: str) -> str:
        """``relative`` as a message names it: a path on disk, or ``rev:reports/...``."""
        path = posixpath.join(self.root, relative) if relative else self.root
        return f"{self.rev}:{path}" if self.rev else path

    def is_dir(self, relative: str) -> bool:
        return self.fs.isdir(posixpath.join(self.root, relative))

    def read_text(self, relative: str) -> str:
        try:
            return self.fs.read_text(posixpath.join(self.root, relative))
        except FileNotFoundError as exc:
            raise DataError(self.where(relative), "no such file") from exc

    def read_repo_text(self, path: str) -> str | None:
        """A file of the repository the run belongs to (``params.yaml``, ``dvc.lock``, ``models/...``), at the
        revision or in ``repo`` on disk; None if there is none."""
        try:
            return self.fs.read_text(posixpath.join(self.repo_root, path) if self.repo_root else path)
        except FileNotFoundError:
            return None

    def csv_names(self, relative: str) -> list[str]:
        """Names of the CSV files directly inside ``relative``, sorted."""
        return [posixpath.basename(p) for p in self._entries(relative, "file") if p.endswith(".csv")]

    def _entries(self, relative: str, kind: str) -> list[str]:
        entries = self.fs.ls(posixpath.join(self.root, relative), detail=True)
        return sorted(e["name"] for e in entries if e["type"] == kind)

    def subfolders(self, relative: str) -> list[str]:
        """Names of the folders directly inside ``relative``."""
        return [posixpath.basename(p.rstrip("/")) for p in self._entries(relative, "directory")]

    def tables(self, relative: str) -> dict[str, pd.DataFrame]:
        """Model name (file stem) -> per-image table, from the CSV files directly inside ``relative``."""
        tables = {}
        for name in self.csv_names(relative):
            with self.fs.open(posixpath.join(self.root, relative, name)) as f:
                tables[posixpath.splitext(name)[0]] = _check_table(
                    pd.read_csv(f), self.where(posixpath.join(relative, name))
                )
        return tables


def pipeline_run_files(source: str, reports_dir: str = REPORTS_DIR, repo: str = ".") -> RunFiles:
    """:class:`RunFiles` of a pipeline run's reports: ``DataError`` for a folder without ``metrics.json``
    (at a revision, a missing one is named when it is read)."""
    if Path(source).is_dir() and not (Path(source) / METRICS_FILE).is_file():
        raise DataError(source, f"no {METRICS_FILE} here: not a pipeline run's reports folder")
    return RunFiles(source, reports_dir, repo)


@dataclass
class Run:
    """One run's records: ``tables`` evaluation -> model -> per-image table, in the layout's order, and
    ``metrics`` model -> its ``metrics.json`` record where the run was read with them
    (:func:`read_pipeline_run`; :func:`read_run`'s sources need have none: a folder of CSVs)."""

    label: str
    tables: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    metrics: dict[str, ModelMetrics] = field(default_factory=dict)


def evaluation_folders(run: RunFiles, set_name: str | None = None) -> list[tuple[str, str]]:
    """``(evaluation, folder relative to the reports folder)`` of every evaluation of the layout found in
    ``run``, in the layout's order (with ``set_name``: only that external set's)."""
    found, sets = [], {}
    if run.is_dir(_PER_IMAGE):
        if not set_name:
            found.append((TEST, _PER_IMAGE))
        for name in run.subfolders(_PER_IMAGE):
            sets.setdefault(name, []).append((_external_evaluation(name), f"{_PER_IMAGE}/{name}"))
    if run.is_dir(_CV_PER_IMAGE) and not set_name:
        found.append((_CV_OUT_OF_FOLD, _CV_PER_IMAGE))
    if run.is_dir(_CV_EXTERNAL):
        for name in run.subfolders(_CV_EXTERNAL):
            sets.setdefault(name, []).append((_fold_mean_evaluation(name), f"{_CV_EXTERNAL}/{name}"))
    for name, places in sets.items():
        if set_name in (None, name):
            found += places
    return found


def _read_evaluations(run: RunFiles, folders: list[tuple[str, str]], label: str | None = None) -> Run:
    """The tables of ``folders`` (``(evaluation, folder)`` pairs, e.g. :func:`evaluation_folders`) in ``run``,
    models in the pipeline's order; a folder without CSV files is left out."""
    found, order = Run(label or run.label), _pipeline_order(run)
    for evaluation, relative in folders:
        tables = run.tables(relative)
        if tables:
            ranked = sorted(tables, key=lambda name: order.get(name, len(order)))  # stable: files' order after
            found.tables[evaluation] = {name: tables[name] for name in ranked}
    return found


def _pipeline_order(run: RunFiles) -> dict[str, int]:
    """Model name -> rank in the pipeline's order (frozen, each fine-tuning level, cv_ensemble), as the metrics
    files list the models; empty when there are none."""
    names = []
    for relative in (METRICS_FILE, CV_METRICS_FILE):
        try:
            names += [name for name in json.loads(run.read_text(relative)) if name not in names]
        except (DataError, ValueError, AttributeError):  # no such file, or not a metrics file: files' order
            continue
    return {name: rank for rank, name in enumerate(names)}


def read_run(
    source: str,
    set_name: str | None = None,
    per_image_dir: str | None = None,
    reports_dir: str = REPORTS_DIR,
    repo: str = ".",
) -> Run:
    """One side of ``lesionseg compare``: ``source`` is a reports folder, a git revision or DVC experiment
    (its ``reports_dir``), a folder of per-image CSVs or one CSV file; no ``metrics``.

    ``per_image_dir`` (a folder inside the repository, read at the revision) and a folder or file of CSVs
    give one evaluation, named after where it sits in the layout; ``set_name`` then picks its subfolder. A reports
    folder or revision gives every evaluation of :func:`evaluation_folders` (``set_name``: that set's only).
    """
    path = Path(source)
    if path.is_file():
        return Run(source, {_evaluation_of(str(path.resolve().parent)): read_tables(path)})
    if path.is_dir() and not any((path / sub).is_dir() for sub in (_PER_IMAGE, "cv")):
        folder = path / set_name if set_name else path
        evaluation = _external_evaluation(set_name) if set_name else _evaluation_of(str(folder.resolve()))
        return Run(source, {evaluation: read_tables(folder)})
    if path.is_dir() or per_image_dir is None:
        run = RunFiles(source, reports_dir, repo)
        return _read_evaluations(run, evaluation_folders(run, set_name))
    folder = posixpath.join(per_image_dir, set_name) if set_name else per_image_dir
    run = RunFiles(source, folder, repo)
    tables = run.tables("")
    if not tables:
        raise ValueError(f"no per-image CSV files in {folder}/ at {source!r}")
    return Run(source, {_evaluation_of(folder): tables})


def read_pipeline_run(source: str, label: str | None = None, reports_dir: str = REPORTS_DIR, repo: str = ".") -> Run:
    """A pipeline run's ``metrics`` and test-split tables (``label``: the run's name, else ``source``), from a
    folder holding ``metrics.json`` and ``per_image/`` (e.g. ``reports``), else from ``reports_dir`` at the git
    revision or DVC experiment ``source``. ``DataError`` when there is no ``metrics.json``, it is not a metrics
    file, or there are no per-image CSV files.

    Only the test split's tables: they are what a change report compares, and a revision's other outputs
    need not be in DVC's cache.
    """
    files = pipeline_run_files(source, reports_dir, repo)
    metrics = parse_metrics(files.read_text(METRICS_FILE), files.where(METRICS_FILE))
    run = _read_evaluations(files, [(TEST, _PER_IMAGE)], label)
    if TEST not in run.tables:
        raise DataError(files.where(_PER_IMAGE), "no per-image CSV files here")
    run.metrics = metrics
    return run
