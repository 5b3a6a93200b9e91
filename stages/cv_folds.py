"""Stage cv_folds: k-fold cross-validation's fold assignment (``cv.folds``; 0 = off), as ``<manifest>``.

Writes the image ids of every fold's training, inner-validation and held-out pairs (stratified by lesion area,
seeded by ``cv.seed``), nothing else, so the folds are trained again only when the assignment changes. Checks,
before any fold trains, that ``cv.fold_stages`` is ``0 .. n-1`` with ``n`` at least ``cv.folds``. With folds off
it writes an empty manifest, at once, without importing torch.
"""

import argparse
from pathlib import Path

from lesionseg import atomic
from stages.launch import main
from stages.params import ParamError, build, load_params, section


def check_fold_stages(folds, fold_stages) -> None:
    """``cv.fold_stages`` (the ``cv_train@<k>`` stages dvc.yaml makes) must be ``0 .. n-1`` with ``n >= cv.folds``."""
    if not isinstance(fold_stages, list) or fold_stages != list(range(len(fold_stages))):
        raise ParamError(f"params.yaml: cv.fold_stages must be the list 0, 1, ..., n-1, got {fold_stages!r}")
    if type(folds) is int and folds > len(fold_stages):
        wanted = ",".join(map(str, range(folds)))
        raise ParamError(
            f"params.yaml: cv.folds is {folds} but dvc.yaml has {len(fold_stages)} fold stages (cv.fold_stages); "
            f"run with -S 'cv.fold_stages=[{wanted}]'"
        )


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True, help="the fold manifest (JSON) to write")
    args = parser.parse_args()
    params = load_params()
    cv = section(params, "cv")
    check_fold_stages(cv.folds, cv.fold_stages)
    if cv.folds == 0:
        atomic.write_json(args.manifest, {"folds": 0, "assignment": []})
        return
    from lesionseg.data.cache import Split
    from lesionseg.training.folds import CrossValConfig, fold_manifest, make_folds

    val_fraction = section(params, "data").val_fraction
    config = build(CrossValConfig, "cv", cv.model_dump(exclude={"fold_stages"}), val_fraction=val_fraction)
    folds = make_folds(Split.concat([Split.load(args.data / "train.pt"), Split.load(args.data / "val.pt")]), config)
    atomic.write_json(args.manifest, {**fold_manifest(folds), "seed": config.seed})


if __name__ == "__main__":
    main(run)
