"""Stage finetune: from the frozen checkpoint, unfreeze encoder stages, one model per level.

With ``runtime.nproc_per_node`` > 1 it runs as that many ``torchrun`` ranks
(DistributedDataParallel; see :mod:`lesionseg.training.distributed`).
"""

import argparse
import contextlib
from pathlib import Path

from lesionseg import atomic
from lesionseg.data.cache import Split
from lesionseg.errors import DataError
from lesionseg.model.checkpoint import load_model
from lesionseg.model.model import ModelConfig, level_name
from lesionseg.tracking import INIT_FROM_TAG
from lesionseg.training.phases import train_phase
from lesionseg.training.train import TrainingJob
from stages import runlog
from stages.configs import train_config, unfreeze_levels
from stages.distributed import distributed_rank
from stages.launch import main, timed_work
from stages.params import load_params, section
from stages.runlog import mlflow_setup, raise_logging_errors, run_tags


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--frozen", type=Path, required=True, help="checkpoint of the train stage")
    parser.add_argument("--models", type=Path, required=True, help="output folder of fine-tuned checkpoints")
    parser.add_argument("--histories", type=Path, required=True, help="output folder of histories")
    args = parser.parse_args()
    params = load_params()
    levels = unfreeze_levels(section(params, "finetune").unfreeze)
    config = train_config(params, "finetune")
    inputs = [args.data / "train.pt", args.data / "val.pt", args.frozen]
    train_split, val_split = Split.load(inputs[0]), Split.load(inputs[1])
    # exits here when it re-launched under torchrun
    rank = distributed_rank(params, "stages.finetune", "finetune", config.batch_size)
    main_rank = rank is None or rank.is_main
    parent = mlflow_setup(params) if main_rank else None
    deferred = runlog.deferred(params, inputs, "stages.finetune") if main_rank else None

    results = []
    with contextlib.ExitStack() as stack:
        if main_rank:
            models_dir = stack.enter_context(atomic.atomic_dir(args.models))
            histories_dir = stack.enter_context(atomic.atomic_dir(args.histories))
        else:  # other ranks write nothing
            models_dir, histories_dir = args.models, args.histories
        for level in levels:
            name = f"finetune_{level_name(level)}"
            model, frozen = load_model(args.frozen, unfreeze=level)
            if frozen["unfreeze"] != "0":
                raise DataError(
                    args.frozen, f"expected the frozen-encoder (level 0) checkpoint, got level {frozen['unfreeze']}"
                )
            model_config = ModelConfig(**frozen["model_config"])
            checkpoint, history = models_dir / f"{name}.pt", histories_dir / f"{name}.csv"
            job = TrainingJob(model, model_config, train_split, val_split, config, checkpoint, history)
            images = len(train_split) * config.epochs
            with timed_work(phase=name, unfreeze=level_name(level), images=images):
                result = train_phase(
                    name,
                    job,
                    {**run_tags(name), INIT_FROM_TAG: frozen["extra"].get("mlflow_run_id")},
                    parent_run_id=parent,
                    deferred=deferred,
                    distributed=rank,
                )
            results.append(result)
    raise_logging_errors(results)  # after the outputs are in place


if __name__ == "__main__":
    main(run)
