"""Tables of a ``scripts/cv_ablation.py`` run: CV mean +- SE per row, paired changes with 95% CIs.

    python scripts/cv_table.py cv-ablation            # Markdown tables on stdout
    python scripts/cv_table.py cv-ablation --json     # one JSON object

Cross-validation: every row's out-of-fold per-image Jaccard (original
resolution) of the ``finetune_all`` fold models, as the mean of the fold means
+- their standard error, and paired changes (same images, same fold
assignment; 95% bootstrap interval and Wilcoxon p) against the reference row
evaluated the same way (the effect of the training change) and evaluated
plain (the effect of the whole recipe). Test: the same against the reference
recipe's single-split model (the pipeline's ``finetune_all``), for that model
and for each row's fold ensemble.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from lesionseg.evaluation.stats import paired_difference  # noqa: E402
from lesionseg.training.crossval import summarize_folds  # noqa: E402

METRIC = "orig_jaccard"
BASELINE = "reference"


def _paired(a: pd.DataFrame, b: pd.DataFrame):
    if list(a["id"]) != list(b["id"]):
        raise ValueError("the two tables score different images")
    return paired_difference(a[METRIC].to_numpy(), b[METRIC].to_numpy())


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).sort_values("id")


def cv_rows(out: Path, model: str = "finetune_all") -> list[dict]:
    """Per row and evaluation: CV mean +- SE, and paired changes against the reference row
    evaluated the same way and against the reference row evaluated plain."""
    rows = []
    for path in sorted((out / "oof").glob(f"*__{model}__*.csv")):
        row, _, variant = path.stem.split("__")
        table = _read(path)
        summary = summarize_folds(table)[METRIC]
        entry = {"row": row, "variant": variant, "n": len(table), "mean": summary["mean"], "se": summary["se"]}
        for key, base_variant in (("vs_reference", variant), ("vs_reference_plain", "plain")):
            base = out / "oof" / f"{BASELINE}__{model}__{base_variant}.csv"
            if base.is_file():
                entry[key] = _paired(_read(base), table).as_dict()
        rows.append(entry)
    return rows


def test_rows(out: Path) -> list[dict]:
    """Per row, model (``single`` or ``ensemble``) and evaluation: test mean, and paired changes
    against the reference single-split model evaluated the same way and evaluated plain."""
    rows = []
    for path in sorted((out / "test").glob("*.csv")):
        row, model, variant = path.stem.split("__")
        table = _read(path)
        entry = {"row": row, "model": model, "variant": variant, "n": len(table), "mean": float(table[METRIC].mean())}
        for key, base_variant in (("vs_reference", variant), ("vs_reference_plain", "plain")):
            base = out / "test" / f"{BASELINE}__single__{base_variant}.csv"
            if base.is_file():
                entry[key] = _paired(_read(base), table).as_dict()
        rows.append(entry)
    return rows


def _change(entry: dict, key: str) -> str:
    if key not in entry:
        return ""
    c = entry[key]
    return f"{c['delta']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] (p {c['p_value']:.2g})"


def markdown(cv: list[dict], test: list[dict], jobs: list[dict]) -> str:
    seconds = {}
    for job in jobs:
        seconds[job["row"]] = seconds.get(job["row"], 0) + job["seconds"]
    lines = [
        "| row | evaluation | CV IoU (mean +- SE) | vs reference, same evaluation [95% CI] | vs reference plain | job s |",  # noqa: E501
        "|---|---|---|---|---|---|",
    ]
    for e in cv:
        cv_iou = f"{e['mean']:.4f} +- {e['se']:.4f}"
        same, plain = _change(e, "vs_reference"), _change(e, "vs_reference_plain")
        lines.append(f"| {e['row']} | {e['variant']} | {cv_iou} | {same} | {plain} | {seconds.get(e['row'], 0):.0f} |")
    lines += [
        "",
        "| row | model | evaluation | test IoU | vs reference single model, same evaluation | vs reference plain |",
        "|---|---|---|---|---|---|",
    ]
    for e in test:
        same, plain = _change(e, "vs_reference"), _change(e, "vs_reference_plain")
        lines.append(f"| {e['row']} | {e['model']} | {e['variant']} | {e['mean']:.4f} | {same} | {plain} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder of scripts/cv_ablation.py")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    jobs_file = args.out / "jobs.jsonl"
    jobs = [json.loads(line) for line in jobs_file.read_text().splitlines()] if jobs_file.is_file() else []
    cv, test = cv_rows(args.out), test_rows(args.out)
    print(json.dumps({"cv": cv, "test": test}, indent=1) if args.json else markdown(cv, test, jobs))


if __name__ == "__main__":
    main()
