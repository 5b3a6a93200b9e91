"""One training phase (frozen, or a fine-tuning level) as one MLflow run.

Training never depends on the tracking store: if it stops answering during a phase, the phase trains on and
writes its checkpoint and history, and what could not be logged waits with a copy of both in a pending folder
(:class:`DeferredLogging`). The next run of the same phase on the same inputs restores them without training,
completes the same MLflow run and removes the folder (docs/scaling-out.md).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch.distributed

from lesionseg import atomic, tracking
from lesionseg.model.checkpoint import read_checkpoint, save_checkpoint
from lesionseg.model.model import LesionSegModel, ModelConfig, count_parameters, level_name
from lesionseg.runtime import resolve_numerics, select_device
from lesionseg.training.distributed import Distributed
from lesionseg.training.train import TrainConfig, TrainingJob, TrainResult, train_model

log = logging.getLogger(__name__)

# amp and channels_last are logged as _phase_params resolves them (the request and what the device uses).
_LOGGED_TRAIN_FIELDS = (
    "epochs", "lr", "batch_size", "optimizer", "weight_decay", "scheduler", "warmup_epochs",
    "bce_weight", "dice_weight", "ema_decay", "seed", "device", "augment_on", "compile", "fused_optimizer",
)  # fmt: skip


# MLflow lists a run's metrics in the order they were first logged, and its compare page plots the first
# one shared by the runs (parallel coordinates) until the user picks another: the trainable count, which
# tells the phases apart, not the total, which is the same for all.
_COUNTS_LOGGING_ORDER = ("trainable", "frozen", "total")


def _counts_in_logging_order(counts: dict[str, int]) -> dict[str, int]:
    return {key: counts[key] for key in _COUNTS_LOGGING_ORDER}


@dataclass(frozen=True)
class DeferredLogging:
    """Where phases keep what they could not log: ``directory/<phase>-<key>``.

    ``key`` identifies the inputs of the phase (the caller's choice: params,
    data and code), so only a re-run of the very same phase takes it up.
    """

    directory: Path
    key: str

    def entry(self, name: str) -> Path:
        return Path(self.directory) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{self.key[:20]}"


def _phase_params(model: LesionSegModel, model_config: ModelConfig, config: TrainConfig, image_size: int) -> dict:
    """The MLflow params of a phase: unfreeze level, model, data size, training and augmentation settings, and
    the precision and layout the training step uses on its device (``precision``, ``channels_last``) with the
    requests (``amp_request``, ``channels_last_request``), as the checkpoint records them."""
    params = {
        "unfreeze": level_name(model.unfreeze_level),
        "encoder_weights": model_config.encoder_weights,
        "decoder_dilation": model_config.decoder_dilation,
        "colour_constancy": model_config.colour_constancy,
        "minkowski_p": model_config.minkowski_p,
        "image_size": image_size,
    }
    params.update({name: getattr(config, name) for name in _LOGGED_TRAIN_FIELDS})
    numerics = resolve_numerics(config.amp, config.channels_last, select_device(config.device), config.tf32)
    params.update(numerics.record())
    params.update({f"augment_{k}": v for k, v in asdict(config.augment).items()})
    return params


def train_phase(
    name: str,
    job: TrainingJob,
    tags: dict,
    parent_run_id: str | None = None,
    *,
    deferred: DeferredLogging | None = None,
    distributed: Distributed | None = None,
) -> TrainResult:
    """Train ``job.model`` at its unfreeze level inside an MLflow run named ``name``.

    Logs the params, parameter counts, per-epoch history, best validation metrics, the history CSV and the
    checkpoint, which records the run id (``extra.mlflow_run_id``). ``deferred``: keep what the tracking store did not
    take (see the module doc) and take it up instead of training again, reporting the failure in
    ``TrainResult.logging_error``; without it a failing store raises :class:`~lesionseg.tracking.TrackingError` once
    the checkpoint and history are written. ``distributed``: one rank of a ``torchrun`` job; only rank 0 talks to
    MLflow and writes files, and its choice to take up deferred logging is every rank's.
    """
    main = distributed is None or distributed.is_main
    entry = deferred.entry(name) if deferred is not None and main else None
    resume = entry is not None and (entry / "state.json").is_file()
    if distributed is not None:  # one decision for all ranks: the others would wait in training's collectives
        decision = [resume]
        torch.distributed.broadcast_object_list(decision, src=0)
        resume = decision[0]
    if not main:
        if resume:
            return TrainResult.of_other_rank()
        return train_model(job, distributed=distributed)
    tags = {**tags, "lesionseg.unfreeze": level_name(job.model.unfreeze_level)}
    if distributed is not None:
        tags["lesionseg.world_size"] = distributed.world_size
    if resume:
        return _complete_deferred(name, entry, job.checkpoint_path, job.history_path, tags, parent_run_id)

    params = _phase_params(job.model, job.model_config, job.config, job.train_split.size)
    counts = count_parameters(job.model)
    run = tracking.PhaseRun.start(name, tags, parent_run_id)
    run.log_params(params)
    run.log_metrics("params_", _counts_in_logging_order(counts))
    result = train_model(
        job,
        on_epoch=lambda row: run.log_metrics("", row, step=int(row["epoch"])),
        checkpoint_extra={"mlflow_run_id": run.run_id, "parent_run_id": parent_run_id},
        distributed=distributed,
    )
    run.log_metrics("best_val_", result.best_metrics)
    run.log_artifact(job.history_path)
    run.log_artifact(job.checkpoint_path, "checkpoint")
    run.finish()
    if not run.ok:
        result.logging_error = _defer_logging(name, job, entry, _pending_state(name, run, params, counts, result))
    return result


def _pending_state(name: str, run: tracking.PhaseRun, params: dict, counts: dict, result: TrainResult) -> dict:
    """What :func:`_complete_deferred` needs to log a trained phase the store did not take (``state.json``)."""
    return {
        "name": name,
        "run_id": run.run_id,
        "params": {k: str(v) for k, v in params.items()},
        "param_counts": counts,
        "best_epoch": result.best_epoch,
        "best_metrics": result.best_metrics,
        "error": run.error,
        "store": tracking.server(),
    }


def _defer_logging(name: str, job: TrainingJob, entry: Path | None, state: dict) -> str:
    """The error to report once the store stopped answering during a trained phase, after keeping ``state``
    and a copy of the outputs in ``entry`` for the next run to take up. Without an ``entry`` nothing can take
    it up: raises :class:`~lesionseg.tracking.TrackingError` (the outputs are written)."""
    where = f"{job.checkpoint_path} and {job.history_path}"
    if entry is not None:
        with atomic.atomic_dir(entry) as tmp:
            shutil.copyfile(job.checkpoint_path, tmp / "checkpoint.pt")
            shutil.copyfile(job.history_path, tmp / "history.csv")
            atomic.write_json(tmp / "state.json", state)
        where += f"; its MLflow logging waits in {entry}"
    error = (
        f"MLflow tracking store {state['store']} stopped answering ({state['error']}); "
        f"phase {name} was trained and saved to {where}"
    )
    if entry is None:
        raise tracking.TrackingError(error)
    return error


def _complete_deferred(
    name: str, entry: Path, checkpoint_path: Path, history_path: Path, tags: dict, parent_run_id: str | None
) -> TrainResult:
    """Restore a phase trained earlier from ``entry`` and complete its MLflow run; no training."""
    state = json.loads((entry / "state.json").read_text())
    log.info("%s: trained earlier, logging incomplete (%s): completing the MLflow run without training", name, entry)
    run = tracking.PhaseRun.start(name, tags, parent_run_id, run_id=state["run_id"])
    checkpoint = read_checkpoint(entry / "checkpoint.pt")
    extra = {"mlflow_run_id": run.run_id, "parent_run_id": parent_run_id}
    if run.ok and any(checkpoint["extra"].get(k) != v for k, v in extra.items()):
        checkpoint["extra"].update(extra)  # a new run, or a new parent: the links must point at them
        save_checkpoint(checkpoint, checkpoint_path)
    else:
        atomic.write_bytes(checkpoint_path, (entry / "checkpoint.pt").read_bytes())
    atomic.write_text(history_path, (entry / "history.csv").read_text())
    history = pd.read_csv(history_path)
    run.log_params(state["params"])
    run.log_metrics("params_", _counts_in_logging_order(state["param_counts"]), skip_logged=True)
    for row in history.to_dict("records"):
        run.log_metrics("", row, step=int(row["epoch"]), skip_logged=True)
    run.log_metrics("best_val_", state["best_metrics"], skip_logged=True)
    run.log_artifact(history_path)
    run.log_artifact(checkpoint_path, "checkpoint")
    run.finish()
    result = TrainResult(history, state["best_epoch"], state["best_metrics"])
    if run.ok:
        shutil.rmtree(entry)
        log.info("%s: MLflow run %s completed", name, run.run_id)
    else:
        result.logging_error = (
            f"MLflow tracking store {tracking.server()} does not answer ({run.error}); "
            f"phase {name} (trained earlier) was restored to {checkpoint_path}; its logging still waits in {entry}"
        )
    return result
