"""The other-clinics table of a ``scripts/cv_ablation.py --single-split --external DIR`` run.

    python scripts/external_table.py screen            # Markdown on stdout
    python scripts/external_table.py screen --json     # one JSON object

For every row's single-split all-layers model, evaluated with lesionseg's
inference settings (flip TTA + clean-up, the ``tta_clean`` variant): per-image
IoU (original resolution) on the test split and on the external folder, the
drop from one to the other (independent samples, 95% bootstrap interval), and
the paired change against the reference row on each (same images; 95%
bootstrap interval and Wilcoxon p).
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


def summarize(out: Path) -> list[dict]:
    rows = json.loads((out / "rows.json").read_text())
    base_test, base_ext = _table(out, "test", BASELINE), _table(out, "external", BASELINE)
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
        results.append(entry)
    return results


def _change(entry: dict | None) -> str:
    if not entry:
        return "(baseline)"
    comparison = PairedComparison(**{**entry, "ci95": tuple(entry["ci95"])})
    return f"{format_change(comparison)} (p {comparison.p_value:.2g})"


def markdown(results: list[dict]) -> str:
    lines = [
        "| row | what | test IoU | external IoU | drop test -> external [95% CI] "
        "| change vs reference, external [95% CI] | change vs reference, test [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        drop = IndependentComparison(**{**r["drop"], "ci95": tuple(r["drop"]["ci95"])})
        lines.append(
            f"| {r['row']} | {r['what']} | {r['test']:.4f} | {r['external']:.4f} | {format_change(drop)} "
            f"| {_change(r.get('change_external'))} | {_change(r.get('change_test'))} |"
        )
    n_test = {r["n_test"] for r in results}
    n_ext = {r["n_external"] for r in results}
    lines.append(f"\nn = {sorted(n_test)} test images, {sorted(n_ext)} external images.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the --out folder of scripts/cv_ablation.py")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = summarize(args.out)
    print(json.dumps(results, indent=1) if args.json else markdown(results))


if __name__ == "__main__":
    main()
