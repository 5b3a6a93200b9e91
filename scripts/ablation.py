"""The recipe ablation: one `dvc exp run` per row, each row adding one change to the row before.

Every row sets all recipe keys explicitly (the reference recipe plus the
changes of the rows above it), so a row does not depend on the defaults in
params.yaml. Rows can run in any order (``--rows``); each appends its line to
the CSV and Markdown table as soon as it finishes, and rows already in the
CSV are skipped (delete it to start over).

    python scripts/ablation.py --set download.source=../shared/data/isic2016-dev \\
        --set train.encoder_weights=../shared/weights/mobilenet_v2_imagenet.pth \\
        --set data.expected_train=null --set data.expected_test=null

``python scripts/ablation.py --print-reference`` prints the `dvc exp run`
command of the reference recipe alone.

Columns: validation and test per-image Jaccard, thresholded Jaccard and Dice
at original resolution (the evaluate stage's ``val_orig_*`` and ``orig_*``),
of the model named by ``--model`` (default ``finetune_all``); ``train_s`` is the
summed epoch time of the frozen phase and that model's phase; ``exp_s`` the
whole `dvc exp run`.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

# The reference report's recipe, key by key (128 px, Adam, constant LR, flips + brightness/contrast).
REFERENCE = {
    "data.size": 128,
    "model.decoder_dilation": 1,
    "augment.hflip": 0.5,
    "augment.vflip": 0.5,
    "augment.brightness_contrast": 0.5,
    "augment.scale_rotate": 0.0,
    "augment.hue_saturation": 0.0,
    "augment.scale_limit": 0.15,
    "augment.gamma": 0.0,
    "augment.blur": 0.0,
    "augment.noise": 0.0,
    "augment.jpeg": 0.0,
    "train.epochs": 25,
    "train.lr": 0.001,
    "train.batch_size": 16,
    "train.optimizer": "adam",
    "train.weight_decay": 0.0,
    "train.scheduler": "constant",
    "train.warmup_epochs": 0,
    "train.ema_decay": 0.0,
    "finetune.epochs": 25,
    "finetune.lr": 0.0001,
    "finetune.batch_size": 16,
    "finetune.optimizer": "adam",
    "finetune.weight_decay": 0.0,
    "finetune.scheduler": "constant",
    "finetune.warmup_epochs": 0,
    "finetune.ema_decay": 0.0,
    "evaluate.tta": False,
    "evaluate.keep_largest": False,
    "evaluate.fill_holes": False,
}

# The row whose keys are params.yaml's defaults (tests/test_ablation_script.py checks it).
CHOSEN = "camera-geo-eval"

# (slug, what the row adds, overrides added on top of the rows above, kept for the rows below)
CHANGES = [
    ("reference", "reference recipe", {}, True),
    (
        "reference-eval",
        "(side) reference training + flip TTA + largest component + holes filled",
        {"evaluate.tta": True, "evaluate.keep_largest": True, "evaluate.fill_holes": True},
        False,
    ),
    (
        "camera-geo-eval",
        "(side) + camera and geometric augmentation (the default: docs/other-clinics.md)",
        {
            "evaluate.tta": True,
            "evaluate.keep_largest": True,
            "evaluate.fill_holes": True,
            "augment.hue_saturation": 0.3,
            "augment.gamma": 0.3,
            "augment.blur": 0.2,
            "augment.noise": 0.2,
            "augment.jpeg": 0.3,
            "augment.scale_rotate": 0.5,
            "augment.scale_limit": 0.3,
        },
        False,
    ),
    ("affine", "+ shift/scale/rotate augmentation (p 0.5)", {"augment.scale_rotate": 0.5}, True),
    ("hsv", "+ hue/saturation/value augmentation (p 0.3)", {"augment.hue_saturation": 0.3}, True),
    (
        "adamw-cosine",
        "+ AdamW (wd 1e-4), cosine LR, 1 warm-up epoch",
        {
            "train.optimizer": "adamw",
            "train.weight_decay": 0.0001,
            "train.scheduler": "cosine",
            "train.warmup_epochs": 1,
            "finetune.optimizer": "adamw",
            "finetune.weight_decay": 0.0001,
            "finetune.scheduler": "cosine",
            "finetune.warmup_epochs": 1,
        },
        True,
    ),
    ("ema", "+ EMA of weights (decay 0.99)", {"train.ema_decay": 0.99, "finetune.ema_decay": 0.99}, True),
    (
        "ema-eval",
        "(side) + flip TTA + largest component + holes filled",
        {"evaluate.tta": True, "evaluate.keep_largest": True, "evaluate.fill_holes": True},
        False,
    ),
    ("epochs50", "+ 50 epochs per phase", {"train.epochs": 50, "finetune.epochs": 50}, True),
    # A side row: tried on top of the row above, not carried into the rows below.
    ("dilation2", "(side) + dilated decoder convs (dilation 2)", {"model.decoder_dilation": 2}, False),
    ("tta", "+ flip test-time augmentation", {"evaluate.tta": True}, True),
    (
        "postprocess",
        "+ largest component, holes filled",
        {"evaluate.keep_largest": True, "evaluate.fill_holes": True},
        True,
    ),
    ("size256", "+ 256 px input", {"data.size": 256}, True),
]

METRICS = [
    ("val_jaccard", "val_orig_jaccard"),
    ("val_jaccard_thr", "val_orig_jaccard_thresholded"),
    ("val_dice", "val_orig_dice"),
    ("test_jaccard", "orig_jaccard"),
    ("test_jaccard_thr", "orig_jaccard_thresholded"),
    ("test_dice", "orig_dice"),
]


def cumulative_rows() -> dict[str, tuple[str, dict]]:
    """slug -> (description, full overrides) with every change up to and including that row."""
    rows, params = {}, dict(REFERENCE)
    for slug, description, change, kept in CHANGES:
        rows[slug] = (description, {**params, **change})
        if kept:
            params = {**params, **change}
    return rows


def override(key: str, value) -> str:
    """One ``-S`` argument in DVC's (Hydra) override syntax."""
    return f"{key}={_hydra_value(value)}"


def _hydra_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    return str(value)


def write_params(path: Path, values: dict) -> None:
    """Set dotted keys in a params file (the ``repro`` runner's stand-in for ``-S``)."""
    params = yaml.safe_load(path.read_text())
    for key, value in values.items():
        *sections, leaf = key.split(".")
        node = params
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def read_row(model: str) -> dict:
    metrics = json.loads(Path("reports/metrics.json").read_text())
    values = metrics[model]
    row = {name: values.get(key) for name, key in METRICS}
    histories = [Path("reports/history/frozen.csv")]
    if model != "frozen":
        histories.append(Path(f"reports/history/finetune/{model}.csv"))
    row["train_s"] = round(sum(pd.read_csv(h)["seconds"].sum() for h in histories), 1)
    return row


def write_tables(results: list[dict], out: Path) -> None:
    table = pd.DataFrame(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(table.to_csv(index=False, float_format="%.4f"))
    tmp.replace(out)
    md = out.with_suffix(".md")
    tmp.write_text(table.to_markdown(index=False, floatfmt=".4f") + "\n")
    tmp.replace(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], help="extra -S override for every row (repeatable)")
    parser.add_argument("--rows", default=",".join(slug for slug, *_ in CHANGES), help="slugs, in run order")
    parser.add_argument("--model", default="finetune_all", help="model of reports/metrics.json in the table")
    parser.add_argument("--unfreeze", default="all", help="finetune.unfreeze for every row, e.g. all or [1,2,all]")
    parser.add_argument("--target", default="evaluate", help="last stage to run (report/export add nothing here)")
    parser.add_argument("--prefix", default="ablation", help="experiment name prefix")
    parser.add_argument("--out", type=Path, default=Path("reports/ablation.csv"))
    parser.add_argument("--deadline", type=float, default=0, help="unix time after which no new row starts")
    parser.add_argument(
        "--runner",
        default="exp",
        choices=("exp", "repro"),
        help="exp: `dvc exp run -S ...` (needs git); repro: write the values into params.yaml, then `dvc repro`",
    )
    parser.add_argument("--print-reference", action="store_true")
    args = parser.parse_args()

    rows = cumulative_rows()
    if args.print_reference:
        sets = [f"-S {override(k, v)}" for k, v in REFERENCE.items()]
        lines = [" ".join(sets[i : i + 4]) for i in range(0, len(sets), 4)]
        print(" \\\n  ".join(["dvc exp run -n reference", *lines]))
        return
    wanted = [slug.strip() for slug in args.rows.split(",") if slug.strip()]
    unknown = [slug for slug in wanted if slug not in rows]
    if unknown:
        sys.exit(f"unknown rows {unknown}; known: {list(rows)}")

    # Resume: rows already in the table are kept, not re-run.
    results = pd.read_csv(args.out).to_dict("records") if args.out.exists() else []
    done, where = {row["row"] for row in results}, machine()
    for slug in (slug for slug in wanted if slug not in done):
        if args.deadline and time.time() > args.deadline:
            print(f"deadline reached: skipping {slug} and later rows", flush=True)
            break
        description, params = rows[slug]
        params = {**params, "finetune.unfreeze": yaml.safe_load(args.unfreeze)}
        params = {**params, **{k: yaml.safe_load(v) for k, v in (extra.split("=", 1) for extra in args.set)}}
        if args.runner == "exp":
            name = re.sub(r"[^a-z0-9-]", "-", f"{args.prefix}-{slug}")
            command = [sys.executable, "-m", "dvc", "exp", "run", "-n", name]
            for key, value in params.items():
                command += ["-S", override(key, value)]
        else:
            write_params(Path("params.yaml"), params)
            command = [sys.executable, "-m", "dvc", "repro"]
        command.append(args.target)
        print("$", " ".join(command), flush=True)
        start = time.perf_counter()
        if subprocess.run(command).returncode != 0:
            print(f"row {slug} failed; going on with the next row", flush=True)
            continue
        row = {"row": slug, "change": description, **read_row(args.model)}
        row["exp_s"] = round(time.perf_counter() - start, 1)
        row["machine"] = where
        results.append(row)
        write_tables(results, args.out)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
