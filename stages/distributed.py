"""``runtime.nproc_per_node`` > 1: a training stage re-launched as that many ``torchrun`` ranks."""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys

import torch

from lesionseg.augment.dataset import local_batch_size
from lesionseg.runtime import select_device
from lesionseg.training import distributed
from stages.params import ParamError, section


def nproc_per_node(params: dict) -> int:
    value = section(params, "runtime").nproc_per_node
    if value < 1:
        raise ParamError(f"params.yaml: runtime.nproc_per_node must be a positive integer, got {value!r}")
    return value


def distributed_rank(params: dict, module: str, phase: str, batch_size: int) -> distributed.Distributed | None:
    """``runtime.nproc_per_node`` > 1: run this stage as that many ``torchrun`` ranks.

    In the stage process DVC started, re-launches the stage through ``torch.distributed.run --standalone`` (a free
    rendezvous port) and exits with its status; in a rank, joins the process group (NCCL on CUDA, gloo otherwise)
    until exit and returns the rank's :class:`~lesionseg.training.distributed.Distributed`. With 1 process it returns
    None. Phase ``phase``'s ``batch_size`` is the global batch: one that does not split evenly over the processes is
    refused before any is started.
    """
    if "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        ctx = distributed.Distributed(
            int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        )
        if ctx.world_size == 1:
            return None
        distributed.init(ctx, select_device(section(params, "runtime").device))
        atexit.register(distributed.shutdown)
        return ctx
    nproc = nproc_per_node(params)
    if nproc == 1:
        return None
    try:
        local_batch_size(batch_size, nproc)
    except ValueError as exc:
        raise ParamError(f"params.yaml: {phase}.batch_size with runtime.nproc_per_node {nproc}: {exc}") from exc
    device = select_device(section(params, "runtime").device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ParamError(
            f"params.yaml: runtime.nproc_per_node is {nproc} but this machine has {torch.cuda.device_count()} "
            "GPU(s): NCCL needs one GPU per process"
        )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", module, *sys.argv[1:]]
    logging.getLogger("lesionseg").info("%d processes: %s", nproc, " ".join(cmd))
    sys.exit(subprocess.call(cmd))
