"""Stage train: the decoder with the encoder frozen (unfreeze level 0).

With ``runtime.nproc_per_node`` > 1 it runs as that many ``torchrun`` ranks
(DistributedDataParallel; see :mod:`lesionseg.training.distributed`).
"""

import argparse
from pathlib import Path

from lesionseg.data.cache import Split
from lesionseg.model.model import build_model
from lesionseg.training.phases import train_phase
from lesionseg.training.train import TrainingJob, seed_everything
from stages import configs, runlog
from stages.distributed import distributed_rank
from stages.launch import main, timed_work
from stages.params import load_params
from stages.runlog import mlflow_setup, raise_logging_errors, run_tags


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="prepared data folder")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    model_config = configs.model_config(params)
    config = configs.train_config(params, "train")
    # The decoder's initial weights come from the global generator: seeded, two runs of one commit train the
    # same model, so a pull request's CI report (base against head) shows the change, not the draw.
    seed_everything(config.seed)
    model = build_model(model_config, unfreeze=0)  # before the data: bad weights fail at the start
    inputs = [args.data / "train.pt", args.data / "val.pt"]
    train_split, val_split = Split.load(inputs[0]), Split.load(inputs[1])
    # exits here when it re-launched under torchrun
    rank = distributed_rank(params, "stages.train", "train", config.batch_size)

    main_rank = rank is None or rank.is_main
    parent = mlflow_setup(params) if main_rank else None
    with timed_work(phase="frozen", unfreeze="0", images=len(train_split) * config.epochs):
        result = train_phase(
            "frozen",
            TrainingJob(model, model_config, train_split, val_split, config, args.checkpoint, args.history),
            run_tags("frozen"),
            parent_run_id=parent,
            deferred=runlog.deferred(params, inputs, "stages.train") if main_rank else None,
            distributed=rank,
        )
    raise_logging_errors([result])


if __name__ == "__main__":
    main(run)
