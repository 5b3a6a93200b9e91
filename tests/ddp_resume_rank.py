"""One rank of tests/test_scale.py's deferred-logging resume under DDP (run by ``torchrun``): every rank sets
up the phase ``frozen`` on the prepared data; rank 0 holds the pending entry. Prints what the rank returned.

Arguments: prepared data folder, pending folder, the entry's key, output folder.
"""

import os
import sys
from pathlib import Path

import torch

from lesionseg.data.cache import Split
from lesionseg.model.model import ModelConfig, build_model
from lesionseg.training import distributed
from lesionseg.training.phases import DeferredLogging, train_phase
from lesionseg.training.train import TrainConfig, TrainingJob

prepared, pending, key, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
ctx = distributed.Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
distributed.init(ctx, torch.device("cpu"))
train, val = Split.load(prepared / "train.pt"), Split.load(prepared / "val.pt")
config = TrainConfig(epochs=1, batch_size=8, device="cpu", progress=False)
model = build_model(ModelConfig("none"), unfreeze=0)
job = TrainingJob(model, ModelConfig("none"), train, val, config, out / "c.pt", out / "h.csv")
# As the stages call it: only rank 0 is given the pending folder.
result = train_phase(
    "frozen", job, {}, None, deferred=DeferredLogging(pending, key) if ctx.is_main else None, distributed=ctx
)
print(f"rank {ctx.rank} returned: best epoch {result.best_epoch}, error {result.logging_error}", flush=True)
distributed.shutdown()
