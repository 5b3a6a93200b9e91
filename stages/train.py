"""Stage train: the decoder with the encoder frozen (unfreeze level 0)."""

import argparse
from pathlib import Path

from lesionseg.cache import Split
from lesionseg.encoder import IMAGENET_WEIGHTS, NO_WEIGHTS
from lesionseg.model import ModelConfig, build_model
from lesionseg.phases import train_phase
from stages.common import ParamError, build, get, load_params, local_path, main, mlflow_setup, run_tags, train_config


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="prepared data folder")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    weights = get(params, "train.encoder_weights")
    if not isinstance(weights, str):
        raise ParamError(f"params.yaml: train.encoder_weights must be imagenet, none or a path, got {weights!r}")
    if weights not in (IMAGENET_WEIGHTS, NO_WEIGHTS):
        weights = local_path(weights)
    model_config = build(ModelConfig, params, "model", encoder_weights=weights)
    config = train_config(params, "train")
    model = build_model(model_config, unfreeze=0)  # before the data: bad weights fail at the start
    train_split, val_split = Split.load(args.data / "train.pt"), Split.load(args.data / "val.pt")

    mlflow_setup(params)
    train_phase(
        "frozen", model, model_config, train_split, val_split, config, args.checkpoint, args.history, run_tags("frozen")
    )


if __name__ == "__main__":
    main(run)
