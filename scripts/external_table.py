"""The other-clinics table of a ``scripts/cv_ablation.py --single-split --external DIR`` run.

    python scripts/external_table.py screen                 # Markdown on stdout
    python scripts/external_table.py screen --json          # one JSON object
    python scripts/external_table.py screen --cv cv-ext     # + the rows' 5-fold CV (a --folds run)

For every row's single-split all-layers model, evaluated with lesionseg's
inference settings (flip TTA + clean-up, the ``tta_clean`` variant): per-image
IoU (original resolution) on the test split and on the external folder, the
drop from one to the other (independent samples, 95% bootstrap interval), and
the paired change against the reference row on each (same images; 95%
bootstrap interval and Wilcoxon p). With ``--cv`` (the ``--out`` of a
``scripts/cv_ablation.py --folds K`` run of the same rows), also each row's
out-of-fold IoU over all training pairs and its paired change against the
reference row's, both with the same inference settings; and, where
``cv_ablation.py --score-only`` scored the fold models on the external
folder, each image's IoU averaged over a row's fold models, paired against
the reference row's (less dependent on one training run's luck).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from lesionseg.evaluation.stats import (  # noqa: E402
    IndependentComparison,
    PairedComparison,
    format_change,
    independent_difference,
    paired_difference,
)
from lesionseg.training.crossval import summarize_folds  # noqa: E402

METRIC = "orig_jaccard"
BASELINE = "reference"
VARIANT = "tta_clean"


def _table(out: Path, where: str, row: str) -> pd.DataFrame | None:
    path = out / where / f"{row}__single__{VARIANT}.csv"
    return pd.read_csv(path).sort_values("id").reset_index(drop=True) if path.is_file() else None


def _paired(a: pd.DataFrame, b: pd.DataFrame):
    if list(a["id"]) != list(b["id"]):
        raise ValueError("the two tables score different images")
    return paired_difference(a[METRIC].to_numpy(), b[METRIC].to_numpy())


def _oof(cv: Path, row: str) -> pd.DataFrame | None:
    path = cv / "oof" / f"{row}__finetune_all__{VARIANT}.csv"
    return pd.read_csv(path).sort_values("id").reset_index(drop=True) if path.is_file() else None


def _fold_models_external(cv: Path, row: str) -> tuple[int, pd.DataFrame | None]:
    """Per-image external IoU averaged over ``row``'s fold models (``cv_ablation.py --score-only``)."""
    paths = sorted((cv / "external").glob(f"{row}__fold*__{VARIANT}.csv"))
    if not paths:
        return 0, None
    tables = [pd.read_csv(p).set_index("id")[METRIC] for p in paths]
    mean = pd.concat(tables, axis=1).mean(axis=1).sort_index()
    return len(paths), mean.rename(METRIC).reset_index()


def summarize(out: Path, cv: Path | None = None) -> list[dict]:
    rows = json.loads((out / "rows.json").read_text())
    base_test, base_ext = _table(out, "test", BASELINE), _table(out, "external", BASELINE)
    base_oof = _oof(cv, BASELINE) if cv else None
    base_folds, base_fold_ext = _fold_models_external(cv, BASELINE) if cv else (0, None)
    results = []
    for row, recipe in rows.items():
        test, external = _table(out, "test", row), _table(out, "external", row)
        if test is None or external is None:
            continue
        entry = {"row": row, "what": recipe["what"], "n_test": len(test), "n_external": len(external)}
        entry["test"], entry["external"] = float(test[METRIC].mean()), float(external[METRIC].mean())
        entry["drop"] = independent_difference(test[METRIC], external[METRIC]).as_dict()
        if row != BASELINE and base_test is not None and base_ext is not None:
            entry["change_external"] = _paired(base_ext, external).as_dict()
            entry["change_test"] = _paired(base_test, test).as_dict()
        oof = _oof(cv, row) if cv else None
        if oof is not None:
            entry["n_cv"], entry["cv"] = len(oof), summarize_folds(oof)[METRIC]
            if row != BASELINE and base_oof is not None:
                entry["change_cv"] = _paired(base_oof, oof).as_dict()
        folds, fold_ext = _fold_models_external(cv, row) if cv else (0, None)
        if fold_ext is not None:
            entry["fold_models"], entry["external_fold_models"] = folds, float(fold_ext[METRIC].mean())
            if row != BASELINE and base_fold_ext is not None and folds == base_folds:
                entry["change_external_fold_models"] = _paired(base_fold_ext, fold_ext).as_dict()
        results.append(entry)
    return results


def _change(entry: dict | None) -> str:
    if not entry:
        return "(baseline)"
    comparison = PairedComparison(**{**entry, "ci95": tuple(entry["ci95"])})
    return f"{format_change(comparison)} (p {comparison.p_value:.2g})"


def markdown(results: list[dict]) -> str:
    with_cv = any("cv" in r for r in results)
    header = "| row | what | test IoU | external IoU | drop test -> external [95% CI] "
    header += "| change vs reference, external [95% CI] | change vs reference, test [95% CI] |"
    rule = "|---|---|---|---|---|---|---|"
    with_folds = any("fold_models" in r for r in results)
    if with_cv:
        header += " CV IoU (mean +- SE) | change vs reference, CV out-of-fold [95% CI] |"
        rule += "---|---|"
    if with_folds:
        header += " external IoU, fold models | change vs reference, external, fold models [95% CI] |"
        rule += "---|---|"
    lines = [header, rule]
    for r in results:
        drop = IndependentComparison(**{**r["drop"], "ci95": tuple(r["drop"]["ci95"])})
        line = (
            f"| {r['row']} | {r['what']} | {r['test']:.4f} | {r['external']:.4f} | {format_change(drop)} "
            f"| {_change(r.get('change_external'))} | {_change(r.get('change_test'))} |"
        )
        if with_cv:
            cv = f"{r['cv']['mean']:.4f} +- {r['cv']['se']:.4f}" if "cv" in r else "not run"
            line += f" {cv} | {_change(r.get('change_cv')) if 'cv' in r else 'not run'} |"
        if with_folds:
            ext = f"{r['external_fold_models']:.4f}" if "fold_models" in r else "not run"
            line += f" {ext} | {_change(r.get('change_external_fold_models')) if 'fold_models' in r else 'not run'} |"
        lines.append(line)
    n_test = {r["n_test"] for r in results}
    n_ext = {r["n_external"] for r in results}
    footer = f"\nn = {sorted(n_test)} test images, {sorted(n_ext)} external images"
    if with_cv:
        footer += f", {sorted({r['n_cv'] for r in results if 'cv' in r})} out-of-fold training pairs"
    if with_folds:
        counts = sorted({r["fold_models"] for r in results if "fold_models" in r})
        footer += f"; fold models: per-image mean of {counts} models, one per CV fold"
    lines.append(footer + ".")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the --out folder of scripts/cv_ablation.py")
    parser.add_argument("--cv", type=Path, help="the --out folder of a scripts/cv_ablation.py --folds K run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = summarize(args.out, args.cv)
    print(json.dumps(results, indent=1) if args.json else markdown(results))


if __name__ == "__main__":
    main()
