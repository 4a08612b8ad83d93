"""One CMDM training run on Ray Train: the loop every worker runs, and the TorchTrainer around it.

`train_loop_per_worker(loop_config)` is plain PyTorch DDP (Ray starts the process group: gloo on CPU,
nccl on GPU) with every feature of the stable recipe: AdamW, linear warmup then cosine/linear/constant
lr, gradient clipping, dropout / drop_path from the model config, optional EMA, evaluation every N
epochs (metrics computed on the embeddings gathered from all workers), best-by-metric checkpoint,
early stopping, a resumable `last.pt`, and a clean stop on a non-finite loss or gradient.

It reads as named phases over one `TrainState` (what changes from step to step; its `state_dict()` is
what last.pt holds):

    build -> resume -> [train_one_epoch -> evaluate (every N epochs) -> save_and_report] until a stop reason

The loop knows nothing of Tune: it calls `ray.train.report(metrics, checkpoint)` once per epoch, and the
run's last report carries how it ended (`TrainState.outcome`), which `run_training` reads from the Result.
Outputs (the layout users of the guide know):

    outputs/<name>/config.yaml                      the resolved config
    outputs/<name>/status.json                      how the run ended (for people and the sweep summary)
    outputs/<name>/logs/runtime.log                 [TRAIN] / [EVAL] / Best model lines
    outputs/<name>/logs/events.out.tfevents.*       TensorBoard: loss, grad, lr, metrics, sample motions
    outputs/<name>/checkpoints/last.pt              model, optimizer, scheduler, EMA, step, RNG
    outputs/<name>/checkpoints/model_best.pt        + best_metrics.json (with the .pt's sha256): a checked pair
    outputs/<name>/ray/                             Ray Train's run folder (its checkpoints, for retries)
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import ray.train
import ray.train.torch as ray_torch
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer
from torch.utils.data import DataLoader, DistributedSampler

from cmdm.atomic import atomic_torch_save, atomic_write_text
from cmdm.checkpoint_file import CheckpointError, read_checkpoint
from cmdm.config import Config, absolute_paths, config_from_dict, config_hash, config_to_dict, save_config
from cmdm.data.humanml3d import collate, dataset_from_config
from cmdm.diffusion import build_diffusion
from cmdm.evaluation.evaluator import Evaluator, load_evaluator
from cmdm.evaluation.generate import TABLE_KEYS, embed_generations, eval_indices, merge_shards, score
from cmdm.evaluation.metrics import improves   # which way each metric is better
from cmdm.model import build_model, load_model_weights
from cmdm.model.checkpoint import check_weights, dit_settings_mismatch, extract_state_dict
from cmdm.model.text import load_text_cache
from cmdm.precision import autocast, resolve_precision
from cmdm.ray_cluster import alive_node_ids, check_ray_token_settings, describe_nodes, lost_nodes, ray_is_up, start_ray
from cmdm.run_files import CHECKPOINT_VERSION, RunFiles, reconcile_best, save_best

IMPORTED_AT = time.time()   # when this module's imports were done in this process (logs/startup.json)


# ----------------------------------------------------------------------------
# Learning-rate schedule, EMA, best tracking
# ----------------------------------------------------------------------------

def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: str) -> float:
    """Multiplier of the base lr at `step`: linear warmup from ~0, then the scheduler over the rest."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress  # linear


class EMA:
    """Exponential moving average of the floating-point weights; evaluation can run with it swapped in."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model):
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v, 1.0 - self.decay)

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, state):
        for k, v in state.items():
            self.shadow[k].copy_(v)

    @contextmanager
    def applied(self, model):
        backup = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(backup, strict=False)


@dataclass
class BestTracker:
    """Best value of the chosen metric and the early-stopping counter (in evaluations)."""
    metric: str
    min_delta: float
    best: float | None = None
    best_step: int = -1
    bad_evals: int = 0

    def better(self, value: float, margin: float = 0.0) -> bool:
        return improves(self.metric, value, self.best, margin)

    def update(self, value: float, step: int) -> bool:
        """Record an evaluation; True when it is a new best. Early stopping counts evaluations that do not
        improve on the best by more than min_delta."""
        self.bad_evals = 0 if self.better(value, self.min_delta) else self.bad_evals + 1
        if self.better(value):
            self.best, self.best_step = value, step
            return True
        return False

    def state(self):
        return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load(self, state):
        self.best, self.best_step, self.bad_evals = state["best"], state["best_step"], state["bad_evals"]


# ----------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------

def make_logger(path: Path | None) -> logging.Logger:
    """runtime.log (+ stdout) on rank 0; other ranks log nothing."""
    logger = logging.getLogger(f"cmdm.train.{os.getpid()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers.clear()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        for handler in (logging.FileHandler(path, encoding="utf-8"), logging.StreamHandler(sys.stdout)):
            handler.setFormatter(fmt)
            logger.addHandler(handler)
    else:
        logger.addHandler(logging.NullHandler())
    return logger


# ----------------------------------------------------------------------------
# Distributed helpers (plain torch.distributed; a single worker needs no process group)
# ----------------------------------------------------------------------------

def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_across(value: float, device) -> float:
    rank, world = _world()
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


def _gather(obj):
    rank, world = _world()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj):
    rank, world = _world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class TrainStep(torch.nn.Module):
    """Conditions + noising + denoising + loss in ONE forward, so DDP sees every trainable parameter
    (the contact encoder and adapters included) inside the call it synchronises."""

    def __init__(self, model, diffusion, compile_denoiser: bool = False):
        super().__init__()
        self.model, self.diffusion = model, diffusion
        # training.compile: the denoiser (the per-step hot path) through torch.compile; the conditions keep Python
        # (caption strings, cached features) and stay eager. The compiled module shares the model's parameters,
        # so checkpoints, the EMA and evaluation keep using `model`.
        self.denoiser = torch.compile(model) if compile_denoiser else model

    def forward(self, batch):
        cond = self.model.encode_batch(batch, cfg_dropout=True)
        x0 = batch["motion"].to(self.model.device, non_blocking=True)
        mask = batch["mask"].to(self.model.device, non_blocking=True)
        return self.diffusion.training_loss(self.denoiser, x0, cond, mask)


def _rng_state(device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------
# The training state: what changes from step to step, and what last.pt holds
# ----------------------------------------------------------------------------

# Stop reasons last.pt keeps: a rerun of such a run has nothing left to do. 'finished' is not kept (a rerun
# with a larger training.max_epochs goes on), nor 'diverged' (last.pt is the epoch before; a rerun retries it).
KEPT_STOP_REASONS = ("early_stopping", "max_steps")


@dataclass
class TrainState:
    """The model, its optimiser, schedule and EMA, and the counters of the run.

    `state_dict()` / `load_state_dict()` are the one place that says what a checkpoint (last.pt) holds."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMA | None
    best: BestTracker
    config: dict                       # the run's config, kept in last.pt so a rerun can say what changed
    device: torch.device
    step: int = 0
    epoch: int = 0                     # epochs completed
    evaluations: int = 0
    last_metrics: dict = field(default_factory=dict)   # the last evaluation's numbers + 'evaluations'
    stop_reason: str | None = None     # None while the run goes on

    def state_dict(self) -> dict:
        """What last.pt holds. Every worker calls it: the RNG states of all workers are gathered into it."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "step": self.step, "epoch": self.epoch, "evaluations": self.evaluations,
                "best": self.best.state(), "metrics": self.last_metrics, "rng": _gather(_rng_state(self.device)),
                "config": self.config,
                "stop_reason": self.stop_reason if self.stop_reason in KEPT_STOP_REASONS else None,
                "format": "cmdm-checkpoint", "version": CHECKPOINT_VERSION}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a last.pt; each worker takes its own RNG state (the last one when there were fewer)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.best.load(state["best"])
        self.step, self.epoch, self.evaluations = state["step"], state["epoch"], state["evaluations"]
        self.last_metrics = state.get("metrics", {})
        self.stop_reason = state.get("stop_reason") or None
        rank, _ = _world()
        _set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)], self.device)

    def outcome(self) -> dict:
        """How the run ended, for its last report: the stop reason, where it stopped (a diverged run: in the
        epoch it did not complete) and its best evaluation (best_<metric> only once there is one)."""
        epoch = self.epoch + 1 if self.stop_reason == "diverged" else self.epoch
        out = {"stop_reason": self.stop_reason, "epoch": epoch,
               "step": self.step, "evaluations": self.evaluations, "best_metric": self.best.metric,
               "best_step": self.best.best_step}
        if self.best.best is not None:
            out[f"best_{self.best.metric}"] = self.best.best
        return out


def run_outcome(last_report: dict) -> dict:
    """A run's last report -> what status.json holds and `run_training` returns."""
    metric = last_report["best_metric"]
    last_eval = {k: last_report[k] for k in TABLE_KEYS if k in last_report}
    return {"stop_reason": last_report["stop_reason"], "epoch": last_report["epoch"], "step": last_report["step"],
            "evaluations": last_report["evaluations"], "best_metric": metric,
            "best": last_report.get(f"best_{metric}"), "best_step": last_report["best_step"],
            "last_metrics": {**last_eval, "evaluations": last_report["evaluations"]} if last_eval else {}}


# ----------------------------------------------------------------------------
# What a worker builds once
# ----------------------------------------------------------------------------

@dataclass
class Worker:
    """One Ray worker's fixed parts: who it is, its data, the step module, its logs; nothing here is checkpointed."""
    cfg: Config
    files: RunFiles
    rank: int
    world: int
    device: torch.device
    log: logging.Logger                     # runtime.log + stdout on rank 0, silent elsewhere
    writer: object | None                   # TensorBoard's SummaryWriter, rank 0 only
    train_set: object
    test_set: object
    sampler: DistributedSampler
    loader: DataLoader
    diffusion: object
    step_module: torch.nn.Module            # TrainStep (DDP-wrapped with more than one worker)
    params: list                            # the trainable parameters (what the gradient clip sees)
    eval_idx: list                          # the fixed test items every evaluation generates for
    ray_checkpoint: object                  # Ray's latest checkpoint of this run, None on a first attempt
    inject_failure: Callable[[int], None]   # tests only: see failure_injection
    precision: str = "fp32"                 # what the forward pass computes in (cmdm.precision)
    evaluator: Evaluator | None = None      # loaded at the first evaluation

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def failure_injection(rank: int, first_attempt: bool) -> Callable[[int], None]:
    """Tests only: with CMDM_INJECT_FAILURE_AT_STEP=N, rank 0 of a first attempt (no Ray checkpoint yet) raises
    at step N (CMDM_INJECT_FAILURE_MESSAGE, or a default), to test retries and the trial doctor. The variables
    are read once, here; without them the step calls a function that does nothing."""
    at = int(os.environ.get("CMDM_INJECT_FAILURE_AT_STEP", "-1"))
    if at < 0 or rank != 0 or not first_attempt:
        return lambda step: None
    message = os.environ.get("CMDM_INJECT_FAILURE_MESSAGE")

    def fail_at(step: int) -> None:
        if step == at:
            raise RuntimeError(message or f"injected failure at step {step} (CMDM_INJECT_FAILURE_AT_STEP)")
    return fail_at


def process_started_at() -> float | None:
    """When this process was created (Unix time): psutil's create time, else Linux's /proc; None elsewhere."""
    try:
        import psutil
        return psutil.Process().create_time()
    except ImportError:
        pass
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])   # field 22: starttime
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def record_startup(files: RunFiles, t_enter: float, t_built: float) -> str:
    """logs/startup.json (rank 0): when this worker's process was created, when cmdm.train had been imported in
    it, when the loop began and when build() ended (what bench/bench_trial_startup.py splits a trial's start into);
    returns the log's '; the loop began N s after its process started' (or '' where that is unknown)."""
    created = process_started_at()
    record = {"pid": os.getpid(), "process_created": created, "imported": IMPORTED_AT, "loop_entered": t_enter,
              "built": t_built}
    atomic_write_text(files.startup, json.dumps(record, indent=1) + "\n")
    return f"; the loop began {t_enter - created:.1f} s after its process started" if created else ""


def tensorboard_writer(files: RunFiles):
    """Rank 0's TensorBoard writer; imported here, not with this module, so that the processes which only
    need the loop's name (a sweep trial's driver, Ray Train's controller) and ranks > 0 skip TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(files.logs))


def build(cfg: Config, files: RunFiles, shared_data: list | None = None) -> tuple[Worker, TrainState]:
    """Data, model, diffusion, optimiser, lr schedule, EMA and logs of this worker, seeded per rank.
    `shared_data`: [ObjectRef] of a sweep's train/test clips (cmdm.tuning.run.share_dataset), else read here."""
    t_enter = time.time()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray_torch.get_device()
    tr = cfg.training
    log = make_logger(files.log_file if rank == 0 else None)
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)

    # -------- data
    clips = ray.get(shared_data[0]) if shared_data else {}      # read-only arrays in Ray's object store
    train_set = dataset_from_config(cfg.data, "train", train=True, seed=cfg.seed, progress=rank == 0,
                                    clips=clips.get("train"))
    test_set = dataset_from_config(cfg.data, "test", train=False, seed=cfg.seed, progress=rank == 0,
                                   clips=clips.get("test"))
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    loader = DataLoader(train_set, batch_size=cfg.task.train.batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=cfg.task.train.num_workers, drop_last=True,
                        persistent_workers=cfg.task.train.num_workers > 0, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"task.train.batch_size={cfg.task.train.batch_size} x {world} workers is larger than the "
                         f"{len(train_set)} training clips: lower the batch size")
    total_steps = tr.max_steps or tr.max_epochs * steps_per_epoch

    # -------- model, diffusion, optimiser, schedule, EMA
    t_model = time.time()
    model = build_model(cfg).to(device)
    load_text_cache(model, cfg)
    diffusion = build_diffusion(cfg.diffusion)
    step_module = TrainStep(model, diffusion, compile_denoiser=tr.compile)
    if world > 1:
        step_module = ray_torch.prepare_model(step_module, move_to_device=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay,
                                  fused=device.type == "cuda")    # one kernel for every parameter on a GPU
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tr.warmup_steps, total_steps, tr.lr_scheduler))
    ema = EMA(model, tr.ema.decay) if tr.ema.enabled else None
    state = TrainState(model, optimizer, scheduler, ema, BestTracker(tr.best_metric, tr.early_stopping.min_delta),
                       config_to_dict(cfg), device)

    ray_checkpoint = ray.train.get_checkpoint()
    worker = Worker(cfg, files, rank, world, device, log, tensorboard_writer(files) if rank == 0 else None,
                    train_set, test_set, sampler, loader, diffusion, step_module, params,
                    eval_idx=eval_indices(test_set, tr.eval_num_samples, seed=cfg.seed), ray_checkpoint=ray_checkpoint,
                    inject_failure=failure_injection(rank, first_attempt=ray_checkpoint is None),
                    precision=resolve_precision(tr.precision, device))
    n_params = sum(p.numel() for p in params)
    log.info(f"Run {cfg.name}: {world} worker(s) on {device.type} ({worker.precision}), {len(train_set)} train clips, "
             f"{steps_per_epoch} steps/epoch, {total_steps} steps, {n_params / 1e6:.2f}M trainable parameters; "
             f"rank 0 on Ray node {ray.get_runtime_context().get_node_id()[:12]}")
    t_built = time.time()
    since = record_startup(files, t_enter, t_built) if rank == 0 else ""
    shared = "" if train_set.read_files or test_set.read_files else ", the sweep's copy in Ray's object store"
    log.info(f"Set-up in this worker: {t_built - t_enter:.1f} s (data {t_model - t_enter:.1f} s{shared}, "
             f"model and the rest {t_built - t_model:.1f} s)" + since)
    return worker, state


# ----------------------------------------------------------------------------
# The phases
# ----------------------------------------------------------------------------

def resume(worker: Worker, state: TrainState, init_from: str | None, partial: bool, fork: dict | None = None) -> None:
    """Continue from the newest of Ray's checkpoint (a retried worker group, a restored run) and our last.pt
    (a rerun after a kill); otherwise continue another run's line (`fork`, a sweep's remedy trial), or start
    from --resume-from weights, if given."""
    candidates = []
    if worker.ray_checkpoint is not None:
        with worker.ray_checkpoint.as_directory() as d:
            if (Path(d) / "last.pt").is_file():   # the last report of a run that diverged in its first epoch has none
                candidates.append((Path(d) / "last.pt", read_checkpoint(Path(d) / "last.pt")))
    if worker.files.last.is_file():
        candidates.append((worker.files.last, read_checkpoint(worker.files.last)))
    if candidates:
        path, checkpoint = max(candidates, key=lambda c: c[1]["step"])
        state.load_state_dict(checkpoint)
        worker.log.info(f"Resumed from {path} at epoch {state.epoch}, step {state.step}, "
                        f"lr {state.scheduler.get_last_lr()[0]:.2e}")
        if worker.is_main:
            reconcile_best(worker.files)
    elif fork:
        continue_line(worker, state, fork)
    elif init_from:
        report = load_model_weights(state.model, init_from, strict=not partial, partial=partial, verbose=False)
        if state.ema is not None:
            state.ema = EMA(state.model, worker.cfg.training.ema.decay)
        worker.log.info(f"Initialised weights from {report.details()}")


def continue_line(worker: Worker, state: TrainState, fork: dict) -> None:
    """A sweep's remedy trial continuing a diagnosed trial's line (`doctor: {remedy: continue}`): the parent's
    checkpoint, then this run's own hyperparameters. From a last.pt (kind "last"): the whole state (weights,
    optimizer moments, lr-schedule position, EMA, step, epoch, RNG). From a model_best.pt (kind "best", overfitting):
    the weights it evaluated and the step and epoch of that evaluation; the optimizer moments start at zero, as
    model_best.pt holds weights only. Then the lr is this run's training.lr through the schedule at the restored
    step, the weight decay this run's (dropout and the gradient clip come from its config anyway), and the best,
    the evaluations and early stopping are this run's own: the sweep judges the child's values by what they do."""
    tr = worker.cfg.training
    checkpoint = read_checkpoint(fork["checkpoint"])
    if fork["kind"] == "last":
        parent_lr = checkpoint["scheduler"]["base_lrs"][0]
        state.load_state_dict(checkpoint)
        kept = "weights, optimizer moments, lr schedule position, EMA, RNG"
    else:
        parent_lr = checkpoint["config"]["training"]["lr"]
        load_model_weights(state.model, fork["checkpoint"], strict=True, verbose=False)
        if state.ema is not None:
            state.ema = EMA(state.model, tr.ema.decay)
        state.step, state.epoch = int(checkpoint["metrics"]["step"]), int(checkpoint["metrics"]["epoch"])
        kept = ("the weights it evaluated and the lr schedule position; the optimizer moments start at zero "
                "(model_best.pt holds weights only)")
    state.best = BestTracker(tr.best_metric, tr.early_stopping.min_delta)
    state.evaluations, state.last_metrics, state.stop_reason = 0, {}, None
    # This run's hyperparameters from here on: LambdaLR's lr at step s is base_lr * factor(s).
    scheduler, groups = state.scheduler, state.optimizer.param_groups
    scheduler.base_lrs, scheduler.last_epoch = [tr.lr] * len(groups), state.step
    for group, factor in zip(groups, (f(state.step) for f in scheduler.lr_lambdas)):
        group.update(initial_lr=tr.lr, lr=tr.lr * factor, weight_decay=tr.weight_decay)
    scheduler._last_lr = [group["lr"] for group in groups]     # what get_last_lr() returns until the next step
    worker.log.info(f"Continued trial {fork['parent']}'s line from {fork['checkpoint']} at epoch {state.epoch}, step "
                    f"{state.step}: {kept}. From here on this run's values: base lr {parent_lr:.3g} -> {tr.lr:.3g} "
                    f"(lr now {groups[0]['lr']:.2e}), weight_decay {tr.weight_decay:g}, dropout "
                    f"{worker.cfg.model.dropout:g}, grad_clip {tr.grad_clip:g}; {tr.max_epochs - state.epoch} "
                    f"epoch(s) left of {tr.max_epochs}.")


def train_one_epoch(worker: Worker, state: TrainState) -> dict:
    """One pass over the training data; returns the epoch's numbers. Stops early at training.max_steps
    (stop_reason 'max_steps'), or on a non-finite loss or gradient ('diverged': that step is not taken, and
    what is returned is its loss and gradient norm)."""
    tr = worker.cfg.training
    worker.sampler.set_epoch(state.epoch)
    worker.step_module.train()
    losses, grads, t_epoch = [], [], time.time()
    for it, batch in enumerate(worker.loader, start=1):
        worker.inject_failure(state.step)
        loss, grad = forward_backward(worker, state, batch)
        if not (math.isfinite(loss) and math.isfinite(grad)):
            stop_diverged(worker, state, loss, grad)
            return {"loss": loss, "grad_norm_max": grad}
        optimizer_step(state)
        losses.append(loss)
        grads.append(grad)
        log_step(worker, state, it, loss, grad)
        if tr.max_steps and state.step >= tr.max_steps:
            state.stop_reason = "max_steps"
            break
    state.epoch += 1
    avg_loss, seconds = sum(losses) / max(1, len(losses)), time.time() - t_epoch
    if worker.is_main:
        worker.log.info(f"Epoch {state.epoch:3d} completed. Avg Loss: {avg_loss:.6f} ({seconds:.1f} s)")
        worker.writer.add_scalar("train/epoch_loss", avg_loss, state.step)
    return {"epoch": state.epoch, "step": state.step, "loss": avg_loss, "lr": state.scheduler.get_last_lr()[0],
            "grad_norm": sum(grads) / max(1, len(grads)), "grad_norm_max": max(grads, default=0.0),
            "epoch_seconds": seconds}


def forward_backward(worker: Worker, state: TrainState, batch) -> tuple[float, float]:
    """The batch's loss (averaged over workers) and its clipped gradient norm; the gradients are left in place."""
    tr = worker.cfg.training
    with autocast(worker.precision, worker.device):
        loss = worker.step_module(batch)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad = torch.nn.utils.clip_grad_norm_(worker.params, tr.grad_clip if tr.grad_clip > 0 else float("inf"))
    return _mean_across(float(loss.detach()), worker.device), float(grad)


def optimizer_step(state: TrainState) -> None:
    """Take the step: the weights, the lr schedule, the EMA, the step counter."""
    state.optimizer.step()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update(state.model)
    state.step += 1


def log_step(worker: Worker, state: TrainState, it: int, loss: float, grad: float) -> None:
    """A [TRAIN] line and TensorBoard scalars every training.log_every_steps steps and at the end of an epoch."""
    if worker.is_main and (state.step % worker.cfg.training.log_every_steps == 0 or it == len(worker.loader)):
        lr = state.scheduler.get_last_lr()[0]
        worker.log.info(f"[TRAIN] ==> Epoch: {state.epoch + 1:3d} | Iter: {it:5d} | Step: {state.step:7d} | "
                        f"Loss: {loss:8.5f} | Grad: {grad:6.3f} | LR: {lr:.2e}")
        worker.writer.add_scalar("train/loss", loss, state.step)
        worker.writer.add_scalar("train/grad_norm", grad, state.step)
        worker.writer.add_scalar("train/lr", lr, state.step)


def stop_diverged(worker: Worker, state: TrainState, loss: float, grad: float) -> None:
    state.stop_reason = "diverged"
    tr = worker.cfg.training
    what = "loss" if not math.isfinite(loss) else "gradient norm"
    worker.log.info(f"[ERROR] Non-finite {what} at epoch {state.epoch + 1}, step {state.step + 1} (loss {loss}, "
                    f"grad {grad}). Likely cause: the learning rate is too high or gradients explode. "
                    f"Remedy: lower training.lr (e.g. {tr.lr / 2:.1e}) and clip harder "
                    f"(training.grad_clip=0.5). The best checkpoint so far is kept.")


def evaluation_due(worker: Worker, state: TrainState) -> bool:
    """Every training.eval_every_epochs epochs, and after the last one."""
    tr = worker.cfg.training
    return state.epoch % tr.eval_every_epochs == 0 or state.epoch == tr.max_epochs or state.stop_reason == "max_steps"


def evaluate(worker: Worker, state: TrainState) -> dict:
    """Generate for the fixed test items (each worker its share, with the EMA weights when there are), score the
    gathered embeddings on rank 0; a new best is saved as model_best.pt; early stopping counts here.
    Returns the evaluation's numbers."""
    cfg, tr, ev = worker.cfg, worker.cfg.training, worker.cfg.evaluation
    t_eval = time.time()
    if worker.evaluator is None:
        worker.evaluator = load_evaluator(cfg, device=worker.device)
    with (state.ema.applied(state.model) if state.ema is not None else nullcontext()):
        shard = embed_generations(state.model, worker.diffusion, worker.test_set,
                                  worker.eval_idx[worker.rank::worker.world], worker.evaluator,
                                  sampler=ev.sampler, steps=ev.ddim_steps, eta=ev.ddim_eta,
                                  guidance_scale=ev.guidance_scale, batch_size=ev.batch_size, seed=cfg.seed)
        evaluated_weights = copy.deepcopy(state.model.state_dict()) if worker.is_main else None
    emb = merge_shards(_gather(shard))
    result = _broadcast(score(emb, rng=np.random.default_rng(cfg.seed)) if worker.is_main else None)
    state.evaluations += 1
    numbers = {k: v for k, v in result.items() if v is not None}
    metrics = {**numbers, "evaluations": state.evaluations, "eval_seconds": time.time() - t_eval}
    improved = state.best.update(result[tr.best_metric], state.step)
    if worker.is_main:
        log_evaluation(worker, state, result, emb["sample"])
        if improved and tr.save_best:
            record = {**numbers, "step": state.step, "epoch": state.epoch, "best_metric": tr.best_metric,
                      "config_hash": config_hash(cfg), "evaluator": worker.evaluator.fingerprint()}
            save_best(worker.files, evaluated_weights, record, cfg)
            worker.log.info(f"✓ Best model saved! {tr.best_metric.upper() if tr.best_metric == 'fid' else tr.best_metric}: "
                            f"{result[tr.best_metric]:.4f} (Step: {state.step})")
    if tr.early_stopping.enabled and state.best.bad_evals >= tr.early_stopping.patience:
        state.stop_reason = "early_stopping"
        worker.log.info(f"Early stopping: {tr.best_metric} has not improved by more than "
                        f"{tr.early_stopping.min_delta} for {state.best.bad_evals} evaluations "
                        f"(best {state.best.best:.4f} at step {state.best.best_step}).")
    state.last_metrics = {**numbers, "evaluations": state.evaluations}
    return metrics


def log_evaluation(worker: Worker, state: TrainState, result: dict, sample) -> None:
    worker.log.info(f"[EVAL] FID: {result['fid']:.4f} Top1: {result['top1']:.4f} Top2: {result['top2']:.4f} "
                    f"Top3: {result['top3']:.4f} MM-Dist: {result['mm_dist']:.4f} "
                    f"(Epoch: {state.epoch}, Step: {state.step})")
    for k, v in result.items():
        if v is not None:
            worker.writer.add_scalar(f"eval/{k}", v, state.step)
    _log_sample(worker.writer, sample, state.step)


def epoch_report(state: TrainState, metrics: dict) -> dict:
    """The epoch's numbers + the last evaluation's (carried between evaluations) + the best so far + stop_reason
    ('' while the run goes on); the run's last report also carries its outcome."""
    report = {**metrics, **{k: v for k, v in state.last_metrics.items() if k not in metrics}}
    if state.best.best is not None:
        report[f"best_{state.best.metric}"] = state.best.best
    report["stop_reason"] = state.stop_reason or ""
    if state.stop_reason:
        report.update(state.outcome())
    return report


def save_and_report(worker: Worker, state: TrainState, metrics: dict) -> None:
    """last.pt (every epoch: what a rerun resumes), then the report with last.pt as its Ray checkpoint."""
    checkpoint = state.state_dict()          # on every worker: it gathers their RNG states
    if worker.is_main:
        atomic_torch_save(checkpoint, worker.files.last)
    report(worker, metrics, worker.files.last)


def report(worker: Worker, metrics: dict, last_pt: Path) -> None:
    """ray.train.report on every worker. Rank 0 attaches last_pt (a hard link when it can) as Ray's checkpoint,
    what a retried worker group resumes from; an empty one when there is no last.pt yet. Every report of rank 0
    carries a checkpoint because Ray's Result.metrics is the report of the latest checkpoint."""
    if not worker.is_main:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if last_pt.is_file():
            if _same_fs(last_pt, tmp):
                os.link(last_pt, Path(tmp) / "last.pt")
            else:
                shutil.copyfile(last_pt, Path(tmp) / "last.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def parameters_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_replicas(worker: Worker, state: TrainState) -> None:
    """With several workers: DDP keeps one model, so every worker must hold the same parameters bit for bit at
    the end; the log says so (with the hash), or which workers differ."""
    if worker.world < 2:
        return
    hashes = _gather(parameters_sha256(state.model))
    if len(set(hashes)) == 1:
        worker.log.info(f"DDP: the {worker.world} workers hold identical parameters (sha256 {hashes[0][:16]})")
    else:
        worker.log.warning("DDP: the workers' parameters differ: " +
                           ", ".join(f"rank {r}: {h[:16]}" for r, h in enumerate(hashes)))


def finish(worker: Worker, state: TrainState, last_report: dict) -> None:
    """The replicas compared, status.json (how the run ended, for people and the sweep summary) and the
    TensorBoard file closed."""
    check_replicas(worker, state)
    if worker.is_main:
        atomic_write_text(worker.files.status, json.dumps(run_outcome(last_report), indent=2) + "\n")
        worker.writer.close()


# ----------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------

def train_loop_per_worker(loop_config: dict) -> None:
    """What each Ray worker runs. loop_config: {'config': Config as dict, 'run_dir': abs path,
    'init_from': optional weights path, 'partial': bool, 'fork': optional line to continue (continue_line),
    'shared_data': optional [ObjectRef] of a sweep's clips (build)}."""
    cfg = config_from_dict(loop_config["config"], source="run config")
    worker, state = build(cfg, RunFiles(loop_config["run_dir"]), loop_config.get("shared_data"))
    resume(worker, state, loop_config.get("init_from"), bool(loop_config.get("partial")), loop_config.get("fork"))

    if state.stop_reason or state.epoch >= cfg.training.max_epochs:     # a rerun of a run that has ended
        if state.stop_reason:
            worker.log.info(f"This run already ended ({state.stop_reason}) at step {state.step}: nothing to do.")
        state.stop_reason = state.stop_reason or "finished"
        last_report = {**state.last_metrics, **state.outcome()}
        save_and_report(worker, state, last_report)

    while state.stop_reason is None:
        metrics = train_one_epoch(worker, state)
        if state.stop_reason == "diverged":     # no last.pt of half an epoch: the report keeps the epoch before's
            last_report = {**state.last_metrics, **state.outcome(), **metrics}
            report(worker, last_report, worker.files.last)
            break
        if evaluation_due(worker, state):
            metrics.update(evaluate(worker, state))
        if state.stop_reason is None and state.epoch == cfg.training.max_epochs:
            state.stop_reason = "finished"
        last_report = epoch_report(state, metrics)
        save_and_report(worker, state, last_report)

    finish(worker, state, last_report)


def _same_fs(a: Path, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _log_sample(writer, sample, step) -> None:
    """One generated motion as a strip of stick-figure frames (and its real counterpart) in TensorBoard."""
    if sample is None:
        return
    from cmdm.skeleton import recover_from_ric     # imported at the first evaluation only
    from cmdm.viz import render_motion_frames
    for tag, feats in (("generated", sample["features"]), ("real", sample["real"])):
        joints = recover_from_ric(np.asarray(feats, np.float32))
        frames = render_motion_frames(joints, title=sample["text"][:60], every=max(1, len(joints) // 6), size=200)
        strip = np.concatenate(list(frames[:6]), axis=1)                     # (H, 6W, 3)
        writer.add_image(f"samples/{tag}", strip, step, dataformats="HWC")
    writer.add_text("samples/caption", sample["text"], step)


# ----------------------------------------------------------------------------
# The driver: prepare data and evaluator once, start (or join) Ray, run the TorchTrainer
# ----------------------------------------------------------------------------

class RunError(Exception):
    """A run that must not start (its folder's last.pt, its --resume-from weights): one paragraph, the fix."""


def check_rerun(cfg: Config, files: RunFiles) -> list[str]:
    """A rerun under the same name resumes its last.pt: refuse when it cannot be read or the model differs
    (the weights would not fit), and return the other keys that changed so the caller can say so."""
    if not files.last.is_file():
        return []
    try:
        state = read_checkpoint(files.last)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or "step" not in state:
            raise CheckpointError(f"checkpoint {str(files.last)!r} is not a last.pt of this trainer "
                                  "(no 'model' and 'step' entries)")
    except CheckpointError as err:
        raise RunError(
            f"{err} A run with the same name resumes from {files.last}, and this one cannot be read, so nothing "
            f"was started and the file was left as it is. Move it aside (or delete it yourself) to start "
            f"{files.root} over, or pass another --name to keep this run as it is.") from None
    old = state.get("config") if isinstance(state.get("config"), dict) else {}
    new = config_to_dict(cfg)
    changed = sorted(f"{sec}.{k}" for sec in new if isinstance(new[sec], dict)
                     for k in new[sec] if (old.get(sec) or {}).get(k) != new[sec][k])
    model_changed = [k for k in changed if k.startswith(("model.", "diffusion."))]
    if model_changed:
        raise RunError(
            f"{files.last} was trained with another model ({', '.join(model_changed)} differ). A run "
            f"with the same name resumes its last checkpoint: choose another --name, or delete {files.root} "
            "to start over.")
    return changed


def check_init_from(cfg: Config, init_from: str | None, partial: bool) -> None:
    """--resume-from must be a file of weights that fit this config's model (all of them, or with --partial
    at least one key): checked in the driver before any data is prepared or any worker starts."""
    if init_from is None:
        if partial:
            raise RunError("--partial only changes how --resume-from weights load: give --resume-from "
                           "CHECKPOINT with it, or leave --partial out.")
        return

    def refuse(err, fix=""):
        detail = " ".join(str(err).replace("Pass partial=True", "Pass --partial").split()).rstrip(".")
        return RunError(f"--resume-from {init_from}: {detail}.{fix} Give a model_best.pt / last.pt of this model "
                        "(or afford-motion's weights of the same architecture).")

    try:
        state = extract_state_dict(read_checkpoint(init_from), init_from)
        need = [] if partial else dit_settings_mismatch(state, cfg.model)
    except CheckpointError as err:
        raise refuse(err) from None
    if need:   # say which settings a DiT checkpoint (the guide's fork's layout) was built with
        raise RunError(f"--resume-from {init_from}: this DiT checkpoint was built with other model settings than "
                       f"the config gives; it needs {' '.join(need)}. Fix: add these overrides to the command, "
                       "or pass --partial to load only the keys that match.")
    builtin = cfg.model.text_model.name.lower() == "all-minilm-l6-v2"
    model = build_model(cfg, load_text_encoder=not builtin)   # the built-in text model's width is known
    try:
        check_weights(model, state, strict=not partial, partial=partial)
    except CheckpointError as err:
        hint = not partial and "No key matched" not in str(err)
        raise refuse(err, " With --partial only the keys whose names and shapes match load." if hint else "") \
            from None


class CMDMTrainer(TorchTrainer):
    """TorchTrainer without Train V2's DatasetsCallback when the run hands it no Ray Datasets (ours never does: the
    workers read the clips themselves). That callback starts a DatasetManager actor for every run even then, one
    more process importing ray.train and ray.data, and the worker group waits for it: ~4 s of each sweep trial's
    start on 2 cores (bench/bench_trial_startup.py). It overrides a private method of Ray's (ray is pinned to
    2.60.x; tests/test_train_parts.py fails if it moves); every other callback is Ray's own, in Ray's order."""

    def _create_default_callbacks(self):
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
        callbacks = super()._create_default_callbacks()
        return [c for c in callbacks if not (isinstance(c, DatasetsCallback) and not self.datasets)]


def make_trainer(cfg: Config, files: RunFiles, *, init_from: str | None = None, partial: bool = False,
                 callbacks=(), fork: dict | None = None, shared_data: list | None = None):
    """The TorchTrainer of one run (train_ray.py) or one sweep trial: workers and their resources, Ray's
    checkpoints under files.ray (what a retried worker group resumes from), worker-failure retries. `fork`: the
    line a sweep's remedy trial continues ({kind, checkpoint, parent, ...}, see continue_line); `shared_data`: a
    sweep's [ObjectRef] of its train/test clips (build)."""
    per_worker = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        per_worker["GPU"] = cfg.ray.gpus_per_worker or 1
    return CMDMTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config_to_dict(cfg), "run_dir": str(files.root),
                           "init_from": init_from, "partial": partial, "fork": fork, "shared_data": shared_data},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                               resources_per_worker=per_worker,
                                               placement_strategy=cfg.ray.placement_strategy),
        run_config=ray.train.RunConfig(
            name="train", storage_path=str(files.ray), callbacks=list(callbacks),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures)),
    )


def run_training(cfg: Config, *, init_from: str | None = None, partial: bool = False) -> dict:
    """Run one training to its end; returns how it ended (`run_outcome` of its last report) and the run folder."""
    from cmdm.preflight import check_cluster       # the driver's checks: no Train worker imports them
    from cmdm.prepare import check_data_root, prepare
    from cmdm.resources import ResourceError, check_fits, cluster_offer, local_offer
    cfg = absolute_paths(cfg)
    where = "the config (ray.* keys)"
    check_data_root(cfg)
    if not cfg.ray.address and not ray_is_up():      # before data and evaluator: a local Ray gets this machine
        check_fits(cfg.ray, local_offer(), where=where, prefix="ray.", what="this machine (a local Ray)")
    files = RunFiles(cfg.run_dir)
    check_ray_token_settings()
    changed = check_rerun(cfg, files)
    check_init_from(cfg, init_from, partial)
    if changed:
        print(f"Resuming {files.root} with changed settings: {', '.join(changed)}")
    prepare(cfg)
    save_config(cfg, files.config)

    url = start_ray(cfg.ray.address, num_cpus=None)
    check_fits(cfg.ray, cluster_offer(), where=where, prefix="ray.", what="the Ray cluster")
    check_cluster(cfg, cfg.output_root)      # on a cluster: every node sees the same output_root, data, evaluator
    if url:
        print(f"Ray dashboard: {url}  (it asks for the token: ray get-auth-token)")
    print(f"Run folder: {files.root}  (TensorBoard: tensorboard --logdir {files.logs} --host 127.0.0.1)")

    if files.status.exists():      # the worker writes a new one at the end; a failed run leaves none
        files.status.unlink()
    reruns = 0
    while True:       # a rerun after a lost node resumes from last.pt (the resume phase), as a rerun by hand would
        trainer = make_trainer(cfg, files, init_from=init_from, partial=partial)
        nodes = alive_node_ids()
        try:
            result = trainer.fit()     # its metrics: the run's last report (every report carries a checkpoint)
            break
        except ray.train.TrainingFailedError as err:
            lost = lost_nodes(nodes)
            if not lost or reruns >= cfg.ray.lost_node_retries:
                raise TrainingFailed(describe_failure(err, lost, files, cfg.ray, reruns)) from err
            record_lost_node(files, lost, err)
            try:
                check_fits(cfg.ray, cluster_offer(), where=where, prefix="ray.", what="the nodes left")
            except ResourceError as short:
                raise TrainingFailed(describe_failure(err, lost, files, cfg.ray, reruns, room=str(short))) from err
            reruns += 1
            print(f"Ray node {describe_nodes(lost)} was lost at step {last_step(files)}: rerunning from "
                  f"{files.last} on the nodes left ({reruns} of ray.lost_node_retries={cfg.ray.lost_node_retries})",
                  flush=True)
    return {**run_outcome(result.metrics), "run_dir": str(files.root), "lost_node_reruns": reruns}


class TrainingFailed(Exception):
    """The run stopped on a worker's error or a lost node, after Ray Train's retries (ray.max_failures)."""


def worker_error_line(exc: BaseException) -> str:
    """The line of a Ray Train failure that names the worker's own error (e.g. 'RuntimeError: ...')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return (raised or lines)[-1]


def last_step(files: RunFiles) -> int | None:
    """The step of the run's last.pt (what a rerun or a retry resumes from); None without a readable one."""
    try:
        return int(read_checkpoint(files.last)["step"]) if files.last.is_file() else None
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None


def record_lost_node(files: RunFiles, lost: list[dict], err: BaseException) -> None:
    """One line in the run's node_lost.log: when, which node, at which step of last.pt, and what the workers raised."""
    with open(files.node_lost, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} lost node {describe_nodes(lost)} at step "
                f"{last_step(files)}: {type(err).__name__}\n")


def describe_failure(err: BaseException, lost: list[dict], files: RunFiles, ray_cfg, reruns: int = 0,
                     room: str = "") -> str:
    """One paragraph: what stopped the run, what is kept, how to go on."""
    step = last_step(files)
    kept = (f"its last checkpoint {files.last} (step {step}) is kept: rerun the same command to resume from it"
            if step is not None else "it had no checkpoint yet: rerunning starts it again")
    if lost:
        if room:       # check_fits' paragraph already says what to change: no second fix after it
            why = f"(after {reruns} rerun(s)) and the nodes left cannot hold the run: {room.rstrip('.')}"
            fix = ""
        elif ray_cfg.lost_node_retries:
            why = f"again after {reruns} rerun(s) (ray.lost_node_retries = {ray_cfg.lost_node_retries}, all spent)"
            fix = "Raise ray.lost_node_retries if the cluster loses nodes this often."
        else:
            why = "(ray.lost_node_retries = 0: no rerun)"
            fix = ("To ride out a lost node, set ray.lost_node_retries=3 (the run is rerun from last.pt on the "
                   "nodes left, when they have room).")
        return (f"training stopped: Ray node {describe_nodes(lost)} was lost during the run {why} (its workers died "
                f"with it; the others then failed with: {worker_error_line(err)[:200]}); {kept}. {fix}").rstrip()
    n = ray_cfg.max_failures
    tries = f"after {n} retr{'y' if n == 1 else 'ies'} (ray.max_failures)" if n else "(ray.max_failures = 0: no retry)"
    return (f"training stopped {tries} on an error in a worker: {worker_error_line(err)[:300]}. The worker's "
            f"traceback is above and its log in {files.log_file}; {kept}.")
