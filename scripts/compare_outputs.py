"""Compare two folders of outputs (scripts/golden_outputs.sh) file by file; exit 1 naming every difference.

JSON and CSV numbers must agree to ``--tolerance`` (floating-point order may change in a refactor), keys and
columns in the same order; PNG images pixel for pixel; ``.npz`` arrays and checkpoint tensors exactly (floats to
the tolerance). What differs by construction between two runs is left out: MLflow run ids, the git commit in a
model card, and the runs' temporary folders in paths.

    python scripts/compare_outputs.py /tmp/golden/before /tmp/golden/after
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

SKIPPED_FILES = {"dvc.log"}
RUN_SPECIFIC_KEYS = {"mlflow_run_id", "parent_run_id", "git_commit"}
RUN_SPECIFIC_LINE = re.compile(r"\b(mlflow_run_id|parent_run_id|git_commit)\b")
TEMPORARY = re.compile(r"/tmp/tmp\.\w+|/tmp/tmp\w+")  # mktemp folders (GNU and Python styles)


def same_value(a, b, where: str, tolerance: float, problems: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            problems.append(f"{where}: keys {list(a)} != {list(b)}")
        for key in a.keys() & b.keys():
            if key not in RUN_SPECIFIC_KEYS:
                same_value(a[key], b[key], f"{where}.{key}", tolerance, problems)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            problems.append(f"{where}: {len(a)} items != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            same_value(x, y, f"{where}[{i}]", tolerance, problems)
    elif isinstance(a, float) and isinstance(b, float):
        if not (abs(a - b) <= tolerance or (math.isnan(a) and math.isnan(b))):
            problems.append(f"{where}: {a!r} != {b!r}")
    elif isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if not torch.equal(a, b):
            problems.append(f"{where}: tensors differ")
    elif isinstance(a, str) and isinstance(b, str):
        if TEMPORARY.sub("", a) != TEMPORARY.sub("", b):
            problems.append(f"{where}: {a!r} != {b!r}")
    elif a != b:
        problems.append(f"{where}: {a!r} != {b!r}")


def same_table(a: Path, b: Path, where: str, tolerance: float, problems: list[str]) -> None:
    x, y = pd.read_csv(a), pd.read_csv(b)
    if list(x.columns) != list(y.columns) or len(x) != len(y):
        problems.append(f"{where}: columns or rows differ")
        return
    for column in x.columns:
        if pd.api.types.is_numeric_dtype(x[column]) and pd.api.types.is_numeric_dtype(y[column]):
            p, q = x[column].to_numpy(float), y[column].to_numpy(float)
            if not np.array_equal(np.isnan(p), np.isnan(q)) or np.nanmax(np.abs(p - q), initial=0) > tolerance:
                problems.append(f"{where}: column {column} differs")
        elif (
            not x[column]
            .astype(str)
            .str.replace(TEMPORARY, "", regex=True)
            .equals(y[column].astype(str).str.replace(TEMPORARY, "", regex=True))
        ):
            problems.append(f"{where}: column {column} differs")


def same_file(a: Path, b: Path, where: str, tolerance: float, problems: list[str]) -> None:
    if a.suffix == ".json":
        same_value(json.loads(a.read_text()), json.loads(b.read_text()), where, tolerance, problems)
    elif a.suffix == ".csv":
        same_table(a, b, where, tolerance, problems)
    elif a.suffix == ".png":
        if not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))):
            problems.append(f"{where}: pixels differ")
    elif a.suffix == ".npz":
        x, y = np.load(a), np.load(b)
        for key in sorted(set(x.files) | set(y.files)):
            if key not in x.files or key not in y.files or x[key].shape != y[key].shape:
                problems.append(f"{where}:{key}: missing or shaped differently")
            elif not same_array(x[key], y[key], tolerance):
                problems.append(f"{where}:{key}: values differ")
    elif a.suffix == ".pt":
        loaded = [torch.load(path, map_location="cpu", weights_only=True) for path in (a, b)]
        same_value(*loaded, where, tolerance, problems)
    else:  # text (Markdown): run-specific lines aside
        if text_lines(a) != text_lines(b):
            problems.append(f"{where}: text differs")


def same_array(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    if a.dtype.kind == "f":
        return bool(np.abs(a - b).max(initial=0) <= tolerance)
    return bool(np.array_equal(a, b))


def text_lines(path: Path) -> list[str]:
    return [TEMPORARY.sub("", line) for line in path.read_text().splitlines() if not RUN_SPECIFIC_LINE.search(line)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args(argv)
    before, after = (
        {p.relative_to(root) for p in root.rglob("*") if p.is_file()} for root in (args.before, args.after)
    )
    problems = [f"{p}: only in {args.before}" for p in sorted(before - after)]
    problems += [f"{p}: only in {args.after}" for p in sorted(after - before)]
    compared = sorted(p for p in before & after if p.name not in SKIPPED_FILES)
    for path in compared:
        same_file(args.before / path, args.after / path, str(path), args.tolerance, problems)
    print(f"{len(compared)} files compared: {len(problems)} difference(s)")
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
