"""The recipe choice on k-fold cross-validation: recipes x folds, run side by side.

Every row trains the frozen and the all-layers phase on each fold of all
training pairs (:mod:`lesionseg.training.crossval`, the same code as the pipeline's
``cv`` stage) and scores the held-out fold at original resolution twice:
plain (threshold 0.5) and with flip TTA + largest component + holes filled.
After all folds of a row, the fold models' ensemble is scored on the test
split (and on ``--external``), and the reference row also trains the
single-split model of the pipeline (train/val from ``prepare``) as the
baseline of the test comparison (reused, only scored, when ``--work`` already
has it, e.g. from a ``--single-split`` screening). Jobs run fold by fold
(every row's fold 0, then fold 1, ...), so a run cut short still compares the
rows on the same folds.

With ``--external``, ``--score-only`` (without ``--single-split``) scores each
fold's all-layers model on the external folder after the run:

    python scripts/cv_ablation.py ... --out cv-ext --work screen/work --folds 5 \\
        --rows reference,camera_geo --external ../shared/data/isic2018-extra --score-only
    python scripts/external_table.py screen --cv cv-ext

Jobs (one row's fold) run in ``--jobs`` worker processes: at batch 16 on a
GPU a training step is bound by kernel launches, so several processes share
one GPU at nearly full speed each. Each finished job writes its per-image
tables at once, so a run cut short keeps what it finished.

    python scripts/cv_ablation.py --source ../shared/data/isic2016-dev \\
        --weights ../shared/weights/mobilenet_v2_imagenet.pth --out cv-ablation --jobs 1

Screening for other clinics' images (single split, each row's model also
scored on an external labelled folder; rows as in ``ROWS``):

    python scripts/cv_ablation.py --source ../shared/data/isic2016-dev \\
        --weights ../shared/weights/mobilenet_v2_imagenet.pth --out screen --single-split \\
        --external ../shared/data/isic2018-extra --rows reference,sog,camera,sog_camera

Outputs in ``--out``: ``oof/<row>__<variant>.csv`` (out-of-fold per-image
scores, every training pair once), ``test/<row>__<model>__<variant>.csv``
(test per-image scores of the single-split model and of the fold ensemble),
``external/<row>__single__<variant>.csv`` (with ``--external``: the
single-split model on that labelled folder; ``<row>__ensemble__`` the fold
ensemble; ``<row>__fold<k>__`` each fold model, from ``--score-only``),
``jobs.jsonl`` (one line per finished job: timings) and, with
``scripts/cv_table.py``, the summary tables.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lesionseg.data.cache import Split  # noqa: E402
from lesionseg.data.dataset import AugmentConfig  # noqa: E402
from lesionseg.data.download import DownloadConfig, download_and_extract  # noqa: E402
from lesionseg.data.external import ExternalSet, prepare_external  # noqa: E402
from lesionseg.data.prepare import PrepareConfig, prepare_dataset  # noqa: E402
from lesionseg.evaluation.evaluate import evaluate_model  # noqa: E402
from lesionseg.evaluation.postprocess import PostprocessConfig  # noqa: E402
from lesionseg.model.checkpoint import load_model, load_models  # noqa: E402
from lesionseg.model.model import ModelConfig, build_model  # noqa: E402
from lesionseg.training.crossval import CrossValConfig, make_folds, score_heldout, train_fold  # noqa: E402
from lesionseg.training.train import TrainConfig, train_model  # noqa: E402

# The reference report's recipe (as scripts/ablation.py's REFERENCE), per phase.
FROZEN = {"epochs": 25, "lr": 1e-3, "batch_size": 16, "optimizer": "adam", "scheduler": "constant"}
FINETUNE = {**FROZEN, "lr": 1e-4}
AFFINE_HSV = {"scale_rotate": 0.5, "hue_saturation": 0.3}
ADAMW_COSINE = {"optimizer": "adamw", "weight_decay": 1e-4, "scheduler": "cosine", "warmup_epochs": 1}

# What differs between cameras (issue: other clinics' images): colour, tone, focus, noise, compression.
CAMERA = {"hue_saturation": 0.3, "gamma": 0.3, "blur": 0.2, "noise": 0.2, "jpeg": 0.3}
GEOMETRIC = {"scale_rotate": 0.5, "scale_limit": 0.3}  # wider zoom: the later collections' lesions are smaller
SOG = {"colour_constancy": "shades_of_gray", "minkowski_p": 6.0}

# row -> (what it changes, image size, augmentation overrides, overrides of both phases, model overrides)
ROWS = {
    "reference": ("reference recipe", 128, {}, {}, {}),
    "epochs50": ("50 epochs a phase", 128, {}, {"epochs": 50}, {}),
    "augment": ("+ shift/scale/rotate (p 0.5) and hue/saturation/value (p 0.3)", 128, AFFINE_HSV, {}, {}),
    "adamw_cosine": ("AdamW (wd 1e-4), cosine LR, 1 warm-up epoch", 128, {}, ADAMW_COSINE, {}),
    "ema": ("EMA of weights (decay 0.99)", 128, {}, {"ema_decay": 0.99}, {}),
    "size256": ("256 px input", 256, {}, {}, {}),
    "combined": (
        "augment + AdamW/cosine + EMA + 50 epochs",
        128,
        AFFINE_HSV,
        {**ADAMW_COSINE, "ema_decay": 0.99, "epochs": 50},
        {},
    ),
    "sog": ("Shades of Gray colour constancy (p 6)", 128, {}, {}, SOG),
    "grayworld": ("gray world colour constancy", 128, {}, {}, {"colour_constancy": "gray_world"}),
    "camera": ("+ camera augmentation (HSV, gamma, blur, noise, JPEG)", 128, CAMERA, {}, {}),
    "geometric": ("+ shift/scale 0.7-1.3/rotate (p 0.5)", 128, GEOMETRIC, {}, {}),
    "camera_geo": ("camera + geometric augmentation", 128, {**CAMERA, **GEOMETRIC}, {}, {}),
    "sog_camera": ("Shades of Gray + camera augmentation", 128, CAMERA, {}, SOG),
    "sog_camera_geo": ("Shades of Gray + camera + geometric augmentation", 128, {**CAMERA, **GEOMETRIC}, {}, SOG),
    "sog_camera_geo160": (
        "Shades of Gray + camera + geometric augmentation, 160 px",
        160,
        {**CAMERA, **GEOMETRIC},
        {},
        SOG,
    ),
}
VARIANTS = {
    "plain": (False, PostprocessConfig()),
    "tta_clean": (True, PostprocessConfig(keep_largest=True, fill_holes=True)),
}
LEVELS = [4]  # frozen, then all layers


def phase_configs(row: str, device: str, epochs: int | None = None) -> tuple[TrainConfig, TrainConfig]:
    """The row's frozen and fine-tuning configs; ``epochs`` overrides both phases' epochs (smoke runs)."""
    _, _, augment, both, _ = ROWS[row]
    if epochs:
        both = {**both, "epochs": epochs, "warmup_epochs": min(both.get("warmup_epochs", 0), epochs)}
    runtime = {"device": device, "progress": False, "augment": AugmentConfig(**augment)}
    return TrainConfig(**{**FROZEN, **both, **runtime}), TrainConfig(**{**FINETUNE, **both, **runtime})


def prepare(source: Path, work: Path, sizes: set[int], workers: int) -> dict[int, Path]:
    raw = work / "raw"
    if not raw.is_dir():
        download_and_extract(DownloadConfig(source=str(source)), raw, work / "downloads")
    prepared = {}
    for size in sorted(sizes):
        prepared[size] = work / f"prepared{size}"
        if not (prepared[size] / "test.pt").is_file():
            prepare_dataset(raw, prepared[size], PrepareConfig(size=size, workers=workers))
    return prepared


def write_tables(folder: Path, stem: str, tables: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, table in tables.items():
        table.to_csv(folder / f"{stem}__{suffix}.csv", index=False, float_format="%.6f")


def run_job(job: dict) -> dict:
    """One row's fold (or its single-split model): train, score, write per-image tables."""
    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    row, fold_index, out, work = job["row"], job["fold"], Path(job["out"]), Path(job["work"])
    prepared = Path(job["prepared"])
    model_config = ModelConfig(encoder_weights=job["weights"], **ROWS[row][4])
    frozen_config, finetune_config = phase_configs(row, job["device"], job["epochs"])
    device = torch.device(job["device"])
    models = work / "models" / row
    train, val = Split.load(prepared / "train.pt"), Split.load(prepared / "val.pt")
    if fold_index == "single":  # the single-split pipeline: frozen then all layers, scored on test
        test = Split.load(prepared / "test.pt")
        frozen_path, all_path = models / "single" / "frozen.pt", models / "single" / "finetune_all.pt"
        if job["reuse"] and all_path.is_file():  # trained by an earlier run in this --work: score it only
            print(f"{row}: reusing {all_path}", flush=True)
            score_single(row, models / "single", test, out, device, job.get("external"))
            return {"row": row, "fold": fold_index, "seconds": 0.0, "reused": True}
        train_model(
            build_model(model_config, 0),
            model_config,
            train,
            val,
            frozen_config,
            frozen_path,
            models / "single" / "frozen.csv",
        )
        model, _ = load_model(frozen_path, unfreeze=4)
        train_model(model, model_config, train, val, finetune_config, all_path, models / "single" / "all.csv")
        score_single(row, models / "single", test, out, device, job.get("external"))
    else:
        folds = make_folds(Split.concat([train, val]), CrossValConfig(folds=job["folds"], seed=job["seed"]))
        fold = folds[fold_index]
        checkpoints = train_fold(fold, model_config, frozen_config, finetune_config, LEVELS, models)
        for variant, (tta, post) in VARIANTS.items():
            tables = score_heldout(checkpoints, fold, 32, device, tta, post)
            write_tables(
                out / "oof_parts", f"{row}__fold{fold_index}", {f"{m}__{variant}": t for m, t in tables.items()}
            )
    record = {"row": row, "fold": fold_index, "seconds": round(time.perf_counter() - start, 1)}
    with open(out / "jobs.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)
    return record


def external_split(folder: str, size: int) -> Split:
    """The labelled folder of ``--external``, decoded and resized to ``size`` (evaluation only)."""
    split, _ = prepare_external(ExternalSet("external", Path(folder)), size)
    return split


def score_single(row: str, folder: Path, test: Split, out: Path, device, external: str | None) -> None:
    """The single-split all-layers model of ``row`` on test and, with ``external``, on that labelled folder:
    per-image tables ``test/<row>__single__<variant>.csv`` and ``external/<row>__single__<variant>.csv``."""
    model, checkpoint = load_model(folder / "finetune_all.pt")
    model.to(device)
    sets = {"test": test}
    if external:
        sets["external"] = external_split(external, checkpoint["preprocessing"]["size"])
    for name, split in sets.items():
        for variant, (tta, post) in VARIANTS.items():
            _, table = evaluate_model(model, split, 32, device, tta, post)
            write_tables(out / name, f"{row}__single", {variant: table})


def score_folds_external(row: str, folds: int, work: Path, out: Path, device, external: str) -> None:
    """Each fold's all-layers model of ``row`` on the external folder, one model at a time:
    ``external/<row>__fold<k>__<variant>.csv``. Five models trained on different 80% of the
    training pairs: their mean per-image score varies less with training noise than one model's.
    Folds already scored (all variants' tables present) are skipped, so it can follow a run fold by fold."""
    split = None
    for k in range(folds):
        path = work / "models" / row / f"fold{k}" / "finetune_all.pt"
        if not path.is_file():
            print(f"{row}: fold {k} not trained, skipped", flush=True)
            continue
        if all((out / "external" / f"{row}__fold{k}__{variant}.csv").is_file() for variant in VARIANTS):
            continue
        if split is None:
            split = external_split(external, ROWS[row][1])
        model, _ = load_model(path)
        model.to(device)
        for variant, (tta, post) in VARIANTS.items():
            _, table = evaluate_model(model, split, 32, device, tta, post)
            write_tables(out / "external", f"{row}__fold{k}", {variant: table})
        print(f"{row}: fold {k} scored on the external folder", flush=True)


def finish_row(
    row: str, folds: int, out: Path, work: Path, prepared: Path, device: str, external: str | None = None
) -> None:
    """Join a row's out-of-fold tables, and score its fold ensemble (all-layers models) on test and,
    with ``external``, on that labelled folder."""
    import pandas as pd

    parts = sorted((out / "oof_parts").glob(f"{row}__fold*__*.csv"))
    by_key = {}
    for part in parts:
        _, _, model, variant = part.stem.split("__")
        by_key.setdefault((model, variant), []).append(pd.read_csv(part))
    complete = True
    for (model, variant), tables in by_key.items():
        if len(tables) != folds:
            complete = False
            continue
        joined = pd.concat(tables).sort_values("id")
        write_tables(out / "oof", row, {f"{model}__{variant}": joined})
    checkpoints = [work / "models" / row / f"fold{k}" / "finetune_all.pt" for k in range(folds)]
    if not complete or not all(p.is_file() for p in checkpoints):
        print(f"{row}: folds incomplete, no ensemble", flush=True)
        return
    test = Split.load(prepared / "test.pt")
    model, _ = load_models(checkpoints)
    model.to(device)
    sets = {"test": test}
    if external:
        sets["external"] = external_split(external, ROWS[row][1])
    for name, split in sets.items():
        for variant, (tta, post) in VARIANTS.items():
            _, table = evaluate_model(model, split, 32, torch.device(device), tta, post)
            write_tables(out / name, f"{row}__ensemble", {variant: table})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="folder with the four ISIC 2016 archives")
    parser.add_argument("--weights", default="imagenet", help="encoder weights: imagenet or a state dict path")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, help="models and prepared data (default: OUT/work)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {list(ROWS)}")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, help="override every phase's epochs (smoke runs)")
    parser.add_argument("--deadline", type=float, help="seconds after which unfinished jobs are stopped")
    parser.add_argument(
        "--single-split",
        action="store_true",
        help="screening: only each row's single-split model (train/val from prepare, scored on test), no folds",
    )
    parser.add_argument(
        "--external",
        type=Path,
        help="a labelled folder (e.g. ../shared/data/isic2018-extra) on which the single-split models are also "
        "scored; evaluation only, never trained or selected on",
    )
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="train nothing: score the models already in --work again (with --single-split the single-split "
        "models on test and --external; else every fold's all-layers model on --external)",
    )
    args = parser.parse_args()
    rows = args.rows.split(",")
    if unknown := set(rows) - set(ROWS):
        parser.error(f"unknown rows {sorted(unknown)}; known: {list(ROWS)}")
    work = args.work or args.out / "work"
    args.out.mkdir(parents=True, exist_ok=True)
    prepared = prepare(args.source.resolve(), work, {ROWS[r][1] for r in rows}, max(1, os.cpu_count() - 1))
    weights = args.weights if args.weights in ("imagenet", "none") else str(Path(args.weights).resolve())
    base = {"out": str(args.out), "work": str(work), "weights": weights, "device": args.device}
    base["external"] = str(args.external.resolve()) if args.external else None
    if args.score_only and not args.single_split:
        if not args.external:
            parser.error("--score-only without --single-split scores the fold models on --external: give one")
        for row in rows:
            score_folds_external(row, args.folds, work, args.out, torch.device(args.device), base["external"])
        return
    if args.score_only:
        for row in rows:
            test = Split.load(prepared[ROWS[row][1]] / "test.pt")
            score_single(
                row, work / "models" / row / "single", test, args.out, torch.device(args.device), base["external"]
            )
            print(f"{row}: scored", flush=True)
        return
    base.update(
        reuse=not args.single_split,
        folds=args.folds,
        seed=args.seed,
        epochs=args.epochs,
        threads=max(1, (os.cpu_count() or 1) // args.jobs),
    )
    if args.single_split:
        jobs = [{**base, "row": row, "fold": "single", "prepared": str(prepared[ROWS[row][1]])} for row in rows]
    else:
        jobs = [{**base, "row": "reference", "fold": "single", "prepared": str(prepared[128])}]
        # Fold-major order: a run cut short still has every row on the same folds (paired comparisons).
        jobs += [
            {**base, "row": row, "fold": k, "prepared": str(prepared[ROWS[row][1]])}
            for k in range(args.folds)
            for row in rows
        ]
    recipes = {}
    for row in rows:
        frozen, finetune = phase_configs(row, args.device, args.epochs)
        recipes[row] = {
            "what": ROWS[row][0],
            "size": ROWS[row][1],
            "frozen": asdict(frozen),
            "finetune": asdict(finetune),
            "model": ROWS[row][4],
        }
    (args.out / "rows.json").write_text(json.dumps(recipes, indent=1))
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.jobs, maxtasksperchild=1) as pool:
        pending = []
        for job in jobs:
            pending.append(pool.apply_async(run_job, (job,)))
        for result in pending:
            try:
                result.get(timeout=max(1.0, (args.deadline or 1e9) - (time.perf_counter() - start)))
            except multiprocessing.TimeoutError:
                print("deadline reached; finishing what is done", flush=True)
                pool.terminate()
                break
            except Exception as exc:  # one failed job must not lose the others
                print(f"job failed: {type(exc).__name__}: {exc}", flush=True)
    for row in [] if args.single_split else rows:
        finish_row(row, args.folds, args.out, work, prepared[ROWS[row][1]], args.device, base["external"])
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
