"""What every stage shares: reading params.yaml into typed configs, logging, MLflow setup.

This is the only place that reads ``params.yaml`` and the environment; the
``lesionseg`` library receives explicit, typed arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from lesionseg.errors import EncoderWeightsError, TrackingError

# Imported where used: a stage imports only what it needs (the download and
# prepare stages start without MLflow, torchvision or the training stack).
if TYPE_CHECKING:
    from lesionseg.model.model import ModelConfig
    from lesionseg.training.distributed import Distributed
    from lesionseg.training.phases import Deferred
    from lesionseg.training.train import TrainConfig

PARAMS_FILE = Path("params.yaml")
# Set by the end-to-end benchmark (benchmarks/e2e.py): where each stage appends the wall-clock interval
# of its work, so that the benchmark can split a stage's process time into start-up, work and shut-down.
TIMING_LOG_ENV = "LESIONSEG_TIMING_LOG"
PENDING_DIR = Path(".lesionseg") / "pending"  # phases whose MLflow logging is deferred (lesionseg.training.phases)
# MLflow's own HTTP retry settings, unless the user set them: a tracking server that stops answering
# costs a training stage ~10 s per call instead of minutes (the stage then defers its logging).
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


class ParamError(ValueError):
    """A bad or missing value in params.yaml; the message names the dotted key."""


def load_params(path: Path = PARAMS_FILE) -> dict:
    try:
        params = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ParamError(f"{path}: not found (run stages from the repository root)") from exc
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(params, dict):
        raise ParamError(f"{path}: expected a mapping of sections")
    return params


def get(params: dict, key: str):
    """The value at dotted ``key``; a missing key raises :class:`ParamError` naming it."""
    node = params
    for i, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            raise ParamError(f"params.yaml: missing key {'.'.join(key.split('.')[: i + 1])!r}")
        node = node[part]
    return node


def _check_type(key: str, value, annotation):
    """Return ``value`` if it fits ``annotation`` (int, float, str, bool, Optional[...]), else raise."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and (type(value) is not annotation):
        raise ParamError(f"params.yaml: {key} must be of type {annotation.__name__}, got {value!r}")
    return value


def build(cls, params: dict, section: str, skip: tuple[str, ...] = (), **given):
    """Build dataclass ``cls`` from ``params[section]``.

    Every field not in ``given`` must be present under ``section`` (fields in
    ``skip`` are left to their defaults); values are type-checked, and the
    dataclass's own validation errors are re-raised naming ``section.field``.
    """
    values = get(params, section)
    if not isinstance(values, dict):
        raise ParamError(f"params.yaml: {section} must be a mapping")
    hints = typing.get_type_hints(cls)
    kwargs = dict(given)
    for field in dataclasses.fields(cls):
        if field.name in given or field.name in skip or not field.init:
            continue
        if dataclasses.is_dataclass(hints[field.name]):
            continue
        kwargs[field.name] = _check_type(
            f"{section}.{field.name}", get(params, f"{section}.{field.name}"), hints[field.name]
        )
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ParamError(f"params.yaml: {section}.{exc}") from exc


RUNTIME_KEYS = ("device", "num_workers", "amp", "augment_on", "channels_last", "compile", "fused_optimizer")


def train_config(params: dict, section: str) -> TrainConfig:
    """A phase's TrainConfig (``train`` or ``finetune``): its own section plus ``runtime`` and ``augment``."""
    from lesionseg.data.dataset import AugmentConfig
    from lesionseg.training.train import TrainConfig

    runtime = {key: get(params, f"runtime.{key}") for key in RUNTIME_KEYS}
    augment = build(AugmentConfig, params, "augment")
    return build(TrainConfig, params, section, skip=("progress",), augment=augment, **runtime)


def model_config(params: dict) -> ModelConfig:
    """``model`` plus ``train.encoder_weights`` (a local path made absolute against the repository root)."""
    from lesionseg.model.encoder import IMAGENET_WEIGHTS, NO_WEIGHTS
    from lesionseg.model.model import ModelConfig

    weights = get(params, "train.encoder_weights")
    if not isinstance(weights, str):
        raise ParamError(f"params.yaml: train.encoder_weights must be imagenet, none or a path, got {weights!r}")
    if weights not in (IMAGENET_WEIGHTS, NO_WEIGHTS):
        weights = local_path(weights)
    return build(ModelConfig, params, "model", encoder_weights=weights)


def unfreeze_levels(value) -> list[int]:
    """``finetune.unfreeze``: one level or a list of levels (1, 2, 3, all)."""
    from lesionseg.model.model import parse_unfreeze_level

    values = value if isinstance(value, list) else [value]
    if not values:
        raise ParamError("params.yaml: finetune.unfreeze must name at least one level")
    try:
        levels = [parse_unfreeze_level(v) for v in values]
    except ValueError as exc:
        raise ParamError(f"params.yaml: finetune.unfreeze: {exc}") from exc
    if 0 in levels:
        raise ParamError(
            "params.yaml: finetune.unfreeze: level 0 is the frozen phase (the train stage); use 1, 2, 3 or all"
        )
    return sorted(set(levels))


def repo_root() -> Path:
    """The main repository: DVC sets DVC_ROOT to it, also for ``dvc exp run --temp`` and queues."""
    return Path(os.environ.get("DVC_ROOT", ".")).resolve()


def local_path(value: str) -> str:
    """A relative local path from params, made absolute against the repository root."""
    return str((repo_root() / Path(value).expanduser()).resolve())


def mlflow_setup(params: dict) -> str:
    """Point MLflow at the store and experiment; return the id of this pipeline execution's parent run.

    The store is ``MLFLOW_TRACKING_URI`` if set, else ``mlflow.tracking_uri``.
    An execution is identified by the DVC experiment name (``DVC_EXP_NAME``,
    set by ``dvc exp run``), the git commit and the whole of ``params.yaml``:
    every stage of one ``dvc repro`` / ``dvc exp run`` computes the same key
    and so logs under the same parent run (see :mod:`lesionseg.tracking`).
    """
    from lesionseg import tracking

    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or get(params, "mlflow.tracking_uri")
    experiment_id = tracking.setup(tracking.resolve_tracking_uri(uri, repo_root()), get(params, "mlflow.experiment"))
    exp_name, commit = os.environ.get("DVC_EXP_NAME"), tracking.git_commit(repo_root())
    digest = hashlib.sha256(json.dumps([exp_name, commit, params], sort_keys=True, default=str).encode()).hexdigest()
    name = exp_name or f"repro-{digest[:8]}"
    return tracking.execution_run(experiment_id, f"{name}:{digest[:16]}", name, flatten(params), run_tags("pipeline"))


def flatten(params: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 0.001}}`` -> ``{"train.lr": 0.001}`` (lists stay values)."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_tags(phase: str) -> dict:
    from lesionseg import tracking

    return {
        "lesionseg.phase": phase,
        "git_commit": tracking.git_commit(repo_root()),
        "dvc_exp": os.environ.get("DVC_EXP_NAME"),
    }


def deferred(params: dict, inputs: list[Path]) -> Deferred:
    """Where a training stage keeps logging it could not do, keyed by params, input files and code."""
    from lesionseg.training.phases import Deferred

    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    code = [*sorted((repo_root() / "lesionseg").glob("*.py")), *sorted((repo_root() / "stages").glob("*.py"))]
    for path in [*inputs, *code]:
        path = Path(path)
        digest.update(str(path.name).encode())
        if path.is_file():
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return Deferred(repo_root() / PENDING_DIR, digest.hexdigest())


def nproc_per_node(params: dict) -> int:
    value = get(params, "runtime.nproc_per_node")
    if type(value) is not int or value < 1:
        raise ParamError(f"params.yaml: runtime.nproc_per_node must be a positive integer, got {value!r}")
    return value


def distributed_rank(params: dict, module: str) -> Distributed | None:
    """``runtime.nproc_per_node`` > 1: run this stage as that many ``torchrun`` ranks.

    Called in the stage process that DVC started, it re-launches the stage
    through ``torch.distributed.run --standalone`` (a free rendezvous port, so
    parallel experiments do not collide) and exits with its status. Called in
    a rank, it joins the process group (NCCL on CUDA, gloo otherwise) and
    returns the rank's :class:`~lesionseg.training.distributed.Distributed`. With 1
    process it returns None and the stage runs as before.
    """
    import torch

    from lesionseg.model.inference import select_device
    from lesionseg.training import distributed

    if "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        ctx = distributed.Distributed(
            int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        )
        if ctx.world_size == 1:
            return None
        distributed.init(ctx, select_device(get(params, "runtime.device")))
        return ctx
    nproc = nproc_per_node(params)
    if nproc == 1:
        return None
    device = select_device(get(params, "runtime.device"))
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ParamError(
            f"params.yaml: runtime.nproc_per_node is {nproc} but this machine has {torch.cuda.device_count()} "
            "GPU(s): NCCL needs one GPU per process"
        )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", module, *sys.argv[1:]]
    logging.getLogger("lesionseg").info("%d processes: %s", nproc, " ".join(cmd))
    sys.exit(subprocess.call(cmd))


def main(fn) -> None:
    """Run a stage's ``fn()``: configure logging, and turn expected errors into one clear line."""
    rank = os.environ.get("RANK")
    fmt = (
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
        if rank is None
        else f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s"
    )
    logging.basicConfig(level=logging.INFO, format=fmt)
    try:
        fn()
    except (ParamError, ValueError, OSError, EncoderWeightsError, TrackingError) as exc:
        logging.getLogger("lesionseg").error("%s failed: %s", Path(sys.argv[0]).stem, exc)
        sys.exit(1)
    finally:
        if rank is not None:  # a torchrun rank: leave the process group
            from lesionseg.training import distributed

            distributed.shutdown()
        # The interpreter's teardown would garbage-collect every object of torch, torchvision and MLflow
        # one by one: 1.8 s of a stage's exit on a 2-core VM, 0.25 s without (docs/benchmarks.md).
        # atexit handlers and the normal exit still run; only the collector is off.
        gc.disable()
        gc.freeze()


@contextlib.contextmanager
def work(**info):
    """Mark the stage's work (the library call, after imports and reading inputs) for the benchmark.

    If ``LESIONSEG_TIMING_LOG`` names a file, a JSON line with the stage, the
    wall-clock start and end of the block and ``info`` (e.g. a training
    phase's images) is appended to it when the block succeeds; else nothing.
    """
    start = time.time()
    yield
    path = os.environ.get(TIMING_LOG_ENV)
    if path:
        entry = {"stage": Path(sys.argv[0]).stem, "start": start, "end": time.time(), "rank": os.environ.get("RANK")}
        with open(path, "a") as handle:  # one short line per write: appends from several processes stay whole
            handle.write(json.dumps({**entry, **info}) + "\n")


def raise_logging_errors(results) -> None:
    """After the outputs are written: fail the stage, in one line, if the tracking store stopped answering."""
    errors = [r.logging_error for r in results if r is not None and r.logging_error]
    if errors:
        raise TrackingError(
            " | ".join(errors) + ". Run the stage again (dvc repro) once it answers: the logging completes "
            "without training again."
        )
