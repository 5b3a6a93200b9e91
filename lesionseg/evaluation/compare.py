"""Paired comparison of two sets of per-image scores (two experiments, two runs, two models).

A side is a mapping model name -> per-image table (``id`` plus score columns,
as the evaluate stage writes them to ``reports/per_image/<model>.csv``).
Models present on both sides are compared image by image
(:func:`lesionseg.evaluation.stats.paired_difference`); the image sets must be the same.
Two sides of one table each (two CSV files) are compared whatever their model names, so two models
of one run can be compared from their tables.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lesionseg.errors import DataError
from lesionseg.evaluation.stats import paired_difference

DEFAULT_METRIC = "orig_jaccard"


def read_tables(path: Path) -> dict[str, pd.DataFrame]:
    """Model name -> table from one per-image CSV file (named by its stem) or a folder of them."""
    path = Path(path)
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise DataError(path, "no per-image CSV files here")
    return {f.stem: _checked(pd.read_csv(f), f) for f in files}


def _checked(table: pd.DataFrame, source) -> pd.DataFrame:
    if "id" not in table.columns:
        raise DataError(Path(str(source)), "not a per-image table: no 'id' column")
    if not table["id"].is_unique:
        raise DataError(Path(str(source)), "per-image table lists an image twice")
    return table


def compare_models(
    a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame], metric: str = DEFAULT_METRIC, models=None
) -> list[dict]:
    """One result per model on both sides (or the given ``models``): ``model``, ``n``, ``mean_a``,
    ``mean_b``, ``delta`` (b - a), ``ci95`` ([low, high]) and ``p_value``.

    When each side holds a single table under different names (``frozen.csv`` against
    ``finetune_all.csv``), those two are compared as the model ``"frozen vs finetune_all"``.

    Raises ``ValueError`` naming the model and the differing images when the
    two sides scored different images, or when no model is on both sides.
    """
    if not models and len(a) == len(b) == 1 and a.keys() != b.keys():
        (name_a, table_a), (name_b, table_b) = *a.items(), *b.items()
        label = f"{name_a} vs {name_b}"
        a, b = {label: table_a}, {label: table_b}
    names = list(models) if models else [name for name in a if name in b]
    if not names:
        raise ValueError(f"no model on both sides: {sorted(a)} vs {sorted(b)}")
    results = []
    for name in names:
        for side, tables in (("A", a), ("B", b)):
            if name not in tables:
                raise ValueError(f"model {name!r} is not in {side} (it has {sorted(tables)})")
            if metric not in tables[name].columns:
                raise ValueError(f"{side}/{name}: no column {metric!r}")
        left, right = a[name].set_index("id"), b[name].set_index("id")
        only_a, only_b = left.index.difference(right.index), right.index.difference(left.index)
        if len(only_a) or len(only_b):
            raise ValueError(
                f"{name}: the two sides scored different images ({len(left)} vs {len(right)}; "
                f"only in A: {list(only_a[:5])}{' ...' if len(only_a) > 5 else ''}, "
                f"only in B: {list(only_b[:5])}{' ...' if len(only_b) > 5 else ''})"
            )
        right = right.loc[left.index]
        results.append({"model": name, **paired_difference(left[metric], right[metric]).as_dict()})
    return results


def verdict(result: dict) -> str:
    """Whether the 95% interval of the change (B - A) excludes 0: "better", "worse" or "no detectable change"."""
    low, high = result["ci95"]
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no detectable change"


def format_markdown(results: list[dict], labels: tuple[str, str] = ("base", "head")) -> str:
    """One Markdown table of :func:`compare_models` results, a row per model: n, the two means, the change
    (B - A), its 95% interval, the Wilcoxon p-value and the :func:`verdict`. ``labels`` name sides A and B."""
    base, head = labels
    lines = [
        f"| model | n | mean {base} | mean {head} | change | 95% CI | p | verdict |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        low, high = r["ci95"]
        lines.append(
            f"| {r['model']} | {r['n']} | {r['mean_a']:.4f} | {r['mean_b']:.4f} | {r['delta']:+.4f} | "
            f"[{low:+.4f}, {high:+.4f}] | {r['p_value']:.3g} | {verdict(r)} |"
        )
    return "\n".join(lines)


def read_revision(rev: str, folder: str, repo: str = ".") -> dict[str, pd.DataFrame]:
    """Model name -> table from the per-image CSVs in ``folder`` as DVC tracks them at ``rev``
    (a git revision or a DVC experiment name), read through DVC's file system (from its cache)."""
    from dvc.api import DVCFileSystem

    try:
        fs = DVCFileSystem(repo, rev=rev)
        files = sorted(f for f in fs.ls(folder, detail=False) if f.endswith(".csv"))
    except Exception as exc:  # DVC raises several types for an unknown revision or a missing folder
        raise ValueError(f"cannot read {folder}/ at revision or experiment {rev!r}: {exc}") from exc
    if not files:
        raise ValueError(f"no per-image CSV files in {folder}/ at {rev!r}")
    tables = {}
    for name in files:
        with fs.open(name) as f:
            tables[Path(name).stem] = _checked(pd.read_csv(f), f"{rev}:{name}")
    return tables
