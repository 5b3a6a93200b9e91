"""A plain training loop: train, validate, keep the best checkpoint by validation Jaccard."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from lesionseg import atomic
from lesionseg.augment.augmentation import AugmentConfig
from lesionseg.augment.batch_augment import DeviceBatches
from lesionseg.augment.dataset import SegmentationDataset, local_batch_size, train_transform
from lesionseg.data.cache import Split
from lesionseg.inference.logits import predict_uint8
from lesionseg.metrics import confusion_counts, summarize
from lesionseg.model.checkpoint import make_checkpoint, save_checkpoint
from lesionseg.model.model import LesionSegModel, ModelConfig
from lesionseg.runtime import (
    Numerics,
    amp_request,
    autocast_for,
    channels_last_request,
    resolve_numerics,
    select_device,
    tf32_mode,
)
from lesionseg.training import distributed as ddp
from lesionseg.training.losses import DiceBCELoss

log = logging.getLogger(__name__)

_OPTIMIZERS = ("adam", "adamw")
_SCHEDULERS = ("constant", "cosine")
_AUGMENT_ON = ("auto", "loader", "device")
# torch.compile modes for the training step; "eager" = not compiled.
_COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune")
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that replay CUDA graphs on CUDA
_FUSED_OPTIMIZER = ("auto", "on", "off")
_FUSED_DEVICES = ("cuda", "cpu")  # where fused Adam/AdamW exist in every supported torch (>= 2.5)
_HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_jaccard",
    "train_dice",
    "val_loss",
    "val_jaccard",
    "val_dice",
    "lr",
    "seconds",
    "precision",
    "channels_last",
)


@dataclass(frozen=True)
class TrainConfig:
    """One training phase: the keys of params.yaml's ``train`` (or ``finetune``), ``runtime`` and ``augment``
    sections, each explained once in docs/reference.md; what ``amp`` and ``channels_last`` resolve to on a device
    is :func:`lesionseg.runtime.resolve_numerics`'s."""

    epochs: int = 25
    lr: float = 1e-3
    batch_size: int = 16
    optimizer: str = "adam"
    weight_decay: float = 0.0
    scheduler: str = "constant"
    warmup_epochs: int = 0
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    ema_decay: float = 0.0
    seed: int = 42
    num_workers: int = 0
    augment_on: str = "auto"
    channels_last: str | bool = "auto"
    compile: str = "eager"
    fused_optimizer: str = "auto"
    device: str = "auto"
    amp: str = "auto"
    tf32: bool = False
    progress: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if self.scheduler not in _SCHEDULERS:
            raise ValueError(f"scheduler must be one of {_SCHEDULERS}, got {self.scheduler!r}")
        # warmup_epochs == epochs is allowed (all warm-up): short smoke runs keep the recipe's warm-up.
        if not isinstance(self.warmup_epochs, int) or not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be an integer in [0, epochs], got {self.warmup_epochs!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay!r}")
        if self.augment_on not in _AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {_AUGMENT_ON}, got {self.augment_on!r}")
        if self.compile not in _COMPILE_MODES:
            raise ValueError(f"compile must be one of {_COMPILE_MODES}, got {self.compile!r}")
        if self.fused_optimizer not in _FUSED_OPTIMIZER:
            raise ValueError(f"fused_optimizer must be one of {_FUSED_OPTIMIZER}, got {self.fused_optimizer!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}")
        amp_request(self.amp)
        if not isinstance(self.tf32, bool):
            raise ValueError(f"tf32 must be true or false, got {self.tf32!r}")
        channels_last_request(self.channels_last)


@dataclass
class TrainResult:
    history: pd.DataFrame
    best_epoch: int
    best_metrics: dict
    logging_error: str | None = None  # set by lesionseg.training.phases when the tracking store stopped answering

    @classmethod
    def of_other_rank(cls) -> TrainResult:
        """What a rank other than 0 returns: rank 0 holds the history and the best epoch."""
        return cls(pd.DataFrame(columns=_HISTORY_COLUMNS), 0, {})


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel for the whole update is faster where PyTorch has one (docs/benchmarks.md); None: its default.
    auto = True if device.type in _FUSED_DEVICES else None
    fused = {"on": True, "off": None, "auto": auto}[config.fused_optimizer]
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def _lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` at optimizer step ``step`` (0-based)."""
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if config.scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, config.epochs * steps_per_epoch - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def _evaluate_split(model: torch.nn.Module, split: Split, loss_fn, batch_size: int, device) -> dict:
    """Loss and metrics (see :mod:`lesionseg.metrics`) at model resolution, from fp32 logits on every device."""
    logits = predict_uint8(model, split.images, batch_size, device)
    target = split.masks[:, None].float()
    counts = confusion_counts(logits > 0, target > 0)
    return {"loss": float(loss_fn(logits, target)), **summarize(counts)}


def _training_batches(
    split: Split, config: TrainConfig, device: torch.device, distributed: ddp.Distributed | None = None
):
    """Iterable of augmented ``(images (N, 3, S, S), masks (N, 1, S, S))`` batches on ``device``, one epoch
    per iteration, shuffled with ``config.seed``; where the augmentation runs follows ``config.augment_on``.

    With ``distributed``, this rank's share of every global batch of ``config.batch_size`` (see
    :mod:`lesionseg.training.distributed`)."""
    rank, world = (distributed.rank, distributed.world_size) if distributed else (0, 1)
    on_device = config.augment_on == "device" or (config.augment_on == "auto" and device.type == "cuda")
    if on_device:
        return DeviceBatches(
            split.images, split.masks, config.batch_size, config.augment, config.seed, device, shard=(rank, world)
        )
    dataset = SegmentationDataset(split.images, split.masks, train_transform(config.augment, config.seed + rank))
    if distributed is None:
        loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            num_workers=config.num_workers,
            generator=torch.Generator().manual_seed(config.seed),
            pin_memory=device.type == "cuda",
            persistent_workers=config.num_workers > 0,
        )
        return _OnDevice(loader, device)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
    loader = DataLoader(
        dataset,
        batch_size=local_batch_size(config.batch_size, world),
        sampler=sampler,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=config.num_workers > 0,
    )
    return _OnDevice(loader, device, sampler)


class _OnDevice:
    """A DataLoader of ``(images, masks, index)`` as ``(images, masks)`` moved to ``device``."""

    def __init__(self, loader: DataLoader, device: torch.device, sampler: DistributedSampler | None = None):
        self.loader, self.device, self.sampler = loader, device, sampler
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.sampler is not None:  # a new shuffle every epoch, the same on every rank
            self.sampler.set_epoch(self.epoch)
            self.epoch += 1
        for images, masks, _ in self.loader:
            yield images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)


@dataclass(frozen=True)
class TrainingJob:
    """One phase's training: ``model`` (trained in place, at its current unfreeze level) with its architecture
    ``model_config``, the splits it trains and validates on, the phase's settings, and where the best checkpoint
    and the per-epoch history go."""

    model: LesionSegModel
    model_config: ModelConfig
    train_split: Split
    val_split: Split
    config: TrainConfig
    checkpoint_path: Path
    history_path: Path


@dataclass
class TrainingSetup:
    """What the epoch loop needs, built once per phase."""

    device: torch.device
    numerics: Numerics  # the training step's precision and memory layout on ``device``
    batches: Iterable  # one epoch of augmented (images, masks) batches per iteration (:func:`_training_batches`)
    model: LesionSegModel  # the eager module (BatchNorm synchronised under DDP): what the optimizer updates
    trained: torch.nn.Module  # ``model``, or its DDP wrapper: what is put in training mode
    step_model: torch.nn.Module  # ``trained``, compiled unless ``compile`` is eager: what the step calls
    loss_fn: DiceBCELoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped once per optimizer step
    ema: AveragedModel | None  # the weights' moving average, if ``ema_decay`` > 0
    cuda_graphs: bool  # the compiled step replays CUDA graphs: each step must be marked
    scaler: torch.amp.GradScaler  # loss scaling for fp16 (``numerics.scaled``); a pass-through otherwise

    @property
    def evaluated(self) -> torch.nn.Module:
        """What is validated and checkpointed: the eager model, or its moving average."""
        return self.model if self.ema is None else self.ema.module


@dataclass
class _EpochTotals:
    """One training epoch's sums over all ranks' shards, on the training device: ``loss_sum`` (scalar: each
    batch's mean loss times its images), ``seen`` (scalar: images) and ``counts`` (int64 ``(N, 4)``: each image's
    TP, FP, FN, TN, from the step's own logits)."""

    loss_sum: torch.Tensor
    seen: torch.Tensor
    counts: torch.Tensor

    def metrics(self) -> dict:
        """The history's training columns."""
        summary = summarize(self.counts.cpu())
        loss = float(self.loss_sum / self.seen)
        return {"train_loss": loss, "train_jaccard": summary["jaccard"], "train_dice": summary["dice"]}


@dataclass
class _BestEpoch:
    """The best epoch so far by validation Jaccard, its validation metrics and its checkpoint (held in memory)."""

    epoch: int
    metrics: dict
    checkpoint: dict


def _set_up_training(job: TrainingJob, distributed: ddp.Distributed | None) -> TrainingSetup:
    """Seed, pick the device and numerics, move the model there and build the batches, the DDP wrapper, the
    compiled step, the optimizer, its schedule and the moving average, in that order (the seeded draws follow
    it)."""
    config, model = job.config, job.model
    seed_everything(config.seed)
    device = select_device(config.device)
    if distributed is not None and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank)
    numerics = resolve_numerics(config.amp, config.channels_last, device, config.tf32)
    log.info("training step: %s, channels_last %s, tf32 %s (asked: amp %s)", numerics.precision,
             numerics.channels_last, numerics.tf32, config.amp)  # fmt: skip
    model.to(device, memory_format=numerics.memory_format)
    batches = _training_batches(job.train_split, config, device, distributed)
    trained = model
    if distributed is not None:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        trained = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    loss_fn = DiceBCELoss(config.bce_weight, config.dice_weight)
    optimizer = make_optimizer(model, config, device)
    # Only the training step is compiled; validation and checkpoints use the eager module (same weights).
    step_model = trained if config.compile == "eager" else torch.compile(trained, mode=config.compile)
    cuda_graphs = config.compile in _CUDA_GRAPH_MODES and device.type == "cuda"
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, len(batches), config))
    # The average starts from the phase's initial weights; use_buffers also averages BatchNorm statistics.
    ema = None
    if config.ema_decay > 0:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    scaler = torch.amp.GradScaler(device.type, enabled=numerics.scaled)
    return TrainingSetup(
        device, numerics, batches, model, trained, step_model, loss_fn, optimizer, scheduler, ema, cuda_graphs, scaler
    )


def _forward_loss(setup: TrainingSetup, images: torch.Tensor, masks: torch.Tensor):
    """The step's logits and loss for one batch, in the step's precision and layout."""
    images = images.contiguous(memory_format=setup.numerics.memory_format)
    if setup.cuda_graphs:  # a new step: the previous step's graph outputs may be overwritten
        torch.compiler.cudagraph_mark_step_begin()
    with autocast_for(setup.numerics.precision, setup.device):
        logits = setup.step_model(images)
    return logits, setup.loss_fn(logits, masks)


def update(setup: TrainingSetup, loss: torch.Tensor) -> None:
    """Backward and optimizer step (through the scaler: fp16's loss scaled, steps with inf/NaN gradients
    skipped), the schedule and the moving average."""
    setup.optimizer.zero_grad(set_to_none=True)
    setup.scaler.scale(loss).backward()
    setup.scaler.step(setup.optimizer)
    setup.scaler.update()
    setup.scheduler.step()
    if setup.ema is not None:
        setup.ema.update_parameters(setup.model)


def _train_one_epoch(
    setup: TrainingSetup, epoch: int, config: TrainConfig, distributed: ddp.Distributed | None
) -> _EpochTotals:
    """One pass over ``setup.batches``: a step per batch (forward, loss, backward, optimizer and schedule,
    moving average). With ``distributed``, the totals are summed over all ranks."""
    setup.trained.train()  # the DDP wrapper passes it on; frozen stages stay in eval mode
    loss_sum = torch.zeros((), device=setup.device)
    seen = torch.zeros((), device=setup.device)
    counts = []
    progress = tqdm(
        setup.batches, desc=f"epoch {epoch}/{config.epochs}", disable=None if config.progress else True, leave=False
    )
    for images, masks in progress:
        with tf32_mode(setup.numerics.tf32):
            logits, loss = _forward_loss(setup, images, masks)
            update(setup, loss)
        # Accumulate on the device: no host sync per step.
        loss_sum += loss.detach() * len(images)
        seen += len(images)
        counts.append(confusion_counts(logits.detach() > 0, masks > 0))
    counts = torch.cat(counts)
    if distributed is not None:  # the epoch's numbers over all ranks' shards
        torch.distributed.all_reduce(loss_sum)
        torch.distributed.all_reduce(seen)
        counts = ddp.all_gather_rows(counts, distributed.world_size)
    return _EpochTotals(loss_sum, seen, counts)


def validate(setup: TrainingSetup, val_split: Split, config: TrainConfig) -> dict:
    """Validation loss and metrics of ``setup.evaluated`` (:func:`_evaluate_split`)."""
    # Validation is inference: fp32 on every device, so the best epoch is picked on the evaluate stage's numbers.
    return _evaluate_split(setup.evaluated, val_split, setup.loss_fn, config.batch_size * 2, setup.device)


def _history_row(epoch: int, totals: _EpochTotals, val: dict, lr: float, seconds: float, numerics: Numerics) -> dict:
    """One epoch's row of the history (``_HISTORY_COLUMNS``): ``lr`` is the epoch's first step's, ``seconds``
    its training and validation."""
    return {
        "epoch": epoch,
        **totals.metrics(),
        "val_loss": val["loss"],
        "val_jaccard": val["jaccard"],
        "val_dice": val["dice"],
        "lr": lr,
        "seconds": seconds,
        "precision": numerics.precision,
        "channels_last": numerics.channels_last,
    }


def train_model(
    job: TrainingJob,
    on_epoch: Callable[[dict], None] | None = None,
    checkpoint_extra: dict | None = None,
    distributed: ddp.Distributed | None = None,
) -> TrainResult:
    """Train ``job.model`` at its current unfreeze level.

    Writes the best checkpoint (by validation per-image Jaccard) to ``job.checkpoint_path`` and the per-epoch history
    to ``job.history_path`` (CSV), both atomically at the end of the phase; ``on_epoch`` receives each history row.
    ``distributed``: this process is one rank of a ``torchrun`` job (process group initialised): DDP over global
    batches of ``config.batch_size``; only rank 0 validates, calls ``on_epoch`` and writes. At the end every rank's
    weights are compared; the checkpoint's ``extra.distributed`` records them.
    """
    config = job.config
    setup = _set_up_training(job, distributed)
    main = distributed is None or distributed.is_main
    rows, best = [], None
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        lr = setup.optimizer.param_groups[0]["lr"]  # the epoch's first step's
        totals = _train_one_epoch(setup, epoch, config, distributed)
        if not main:
            continue
        val = validate(setup, job.val_split, config)
        row = _history_row(epoch, totals, val, lr, time.perf_counter() - start, setup.numerics)
        rows.append(row)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        if best is None or val["jaccard"] > best.metrics["jaccard"]:
            # Kept in memory (a copy on the host) and written once at the end: no per-epoch disk I/O.
            checkpoint = make_checkpoint(
                setup.evaluated,
                job.model_config,
                job.train_split.size,
                epoch,
                val,
                checkpoint_extra,
                numerics=setup.numerics.record(),
            )
            best = _BestEpoch(epoch, val, checkpoint)
        if on_epoch is not None:
            on_epoch(row)
    if distributed is not None:
        final = _check_ranks_agree(setup.evaluated, distributed)
        if not main:
            return TrainResult.of_other_rank()
        best.checkpoint["extra"]["distributed"] = final
    return _write_outputs(job, best, rows)


def _write_outputs(job: TrainingJob, best: _BestEpoch, rows: list[dict]) -> TrainResult:
    """Save the best checkpoint (with the phase's settings) and the history."""
    best.checkpoint["train_config"] = _plain(asdict(job.config))
    save_checkpoint(best.checkpoint, job.checkpoint_path)
    history = pd.DataFrame(rows, columns=_HISTORY_COLUMNS)
    atomic.write_text(job.history_path, history.to_csv(index=False))
    return TrainResult(history, best.epoch, best.metrics)


def _check_ranks_agree(module: torch.nn.Module, distributed: ddp.Distributed) -> dict:
    """Give every rank rank 0's BatchNorm statistics, then compare all ranks' weights (a DDP invariant)."""
    ddp.broadcast_buffers(module)
    digests = [None] * distributed.world_size
    torch.distributed.all_gather_object(digests, ddp.state_digest(module))
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks ended with different weights: {digests}")
    log.info("all %d ranks hold identical weights (sha256 %s)", distributed.world_size, digests[0][:16])
    return {"world_size": distributed.world_size, "rank_weight_digests": digests}


def _plain(obj):
    """Config dict with only weights_only-safe values."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj if isinstance(obj, (int, float, str, bool, type(None))) else str(obj)
