"""Tables of a ``scripts/cv_ablation.py`` run: CV mean +- SE per row, paired changes with 95% CIs.

    python scripts/cv_table.py cv-ablation            # Markdown tables on stdout
    python scripts/cv_table.py cv-ablation --json     # one JSON object

Cross-validation: every row's out-of-fold per-image Jaccard (original
resolution) of the ``finetune_all`` fold models, as the mean of the fold means
+- their standard error, and the paired change against the reference row
(same images, same fold assignment) with its 95% bootstrap interval and the
Wilcoxon p-value. Test: the reference recipe's single-split model (the
pipeline's ``finetune_all``) against each row's fold ensemble, paired on the
test images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from lesionseg.crossval import summarize_folds  # noqa: E402
from lesionseg.stats import paired_difference  # noqa: E402

METRIC = "orig_jaccard"
BASELINE = "reference"


def _paired(a: pd.DataFrame, b: pd.DataFrame):
    if list(a["id"]) != list(b["id"]):
        raise ValueError("the two tables score different images")
    return paired_difference(a[METRIC].to_numpy(), b[METRIC].to_numpy())


def cv_rows(out: Path, model: str = "finetune_all") -> list[dict]:
    rows = []
    base = out / "oof" / f"{BASELINE}__{model}__plain.csv"
    baseline = pd.read_csv(base).sort_values("id") if base.is_file() else None
    for path in sorted((out / "oof").glob(f"*__{model}__*.csv")):
        row, _, variant = path.stem.split("__")
        table = pd.read_csv(path).sort_values("id")
        summary = summarize_folds(table)[METRIC]
        entry = {"row": row, "variant": variant, "n": len(table), "mean": summary["mean"], "se": summary["se"]}
        if baseline is not None:
            entry["vs_reference"] = _paired(baseline, table).as_dict()
        rows.append(entry)
    return rows


def test_rows(out: Path) -> list[dict]:
    rows = []
    base = out / "test" / f"{BASELINE}__single__plain.csv"
    baseline = pd.read_csv(base).sort_values("id") if base.is_file() else None
    for path in sorted((out / "test").glob("*.csv")):
        row, model, variant = path.stem.split("__")
        table = pd.read_csv(path).sort_values("id")
        entry = {"row": row, "model": model, "variant": variant, "n": len(table), "mean": float(table[METRIC].mean())}
        if baseline is not None:
            entry["vs_reference_single"] = _paired(baseline, table).as_dict()
        rows.append(entry)
    return rows


def _change(entry: dict, key: str) -> str:
    if key not in entry:
        return ""
    c = entry[key]
    return f"{c['delta']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]", f"{c['p_value']:.2g}"


def markdown(cv: list[dict], test: list[dict], jobs: list[dict]) -> str:
    seconds = {}
    for job in jobs:
        seconds[job["row"]] = seconds.get(job["row"], 0) + job["seconds"]
    lines = [
        "| row | evaluation | CV IoU (mean +- SE) | change vs reference [95% CI] | p | job s |",
        "|---|---|---|---|---|---|",
    ]
    for e in cv:
        change, p = _change(e, "vs_reference") or ("", "")
        cv_iou = f"{e['mean']:.4f} +- {e['se']:.4f}"
        lines.append(f"| {e['row']} | {e['variant']} | {cv_iou} | {change} | {p} | {seconds.get(e['row'], 0):.0f} |")
    lines += [
        "",
        "| row | model | evaluation | test IoU | change vs reference single model [95% CI] | p |",
        "|---|---|---|---|---|---|",
    ]
    for e in test:
        change, p = _change(e, "vs_reference_single") or ("", "")
        lines.append(f"| {e['row']} | {e['model']} | {e['variant']} | {e['mean']:.4f} | {change} | {p} |")
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
