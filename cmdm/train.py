"""One CMDM training run on Ray Train: the loop every worker runs, and the TorchTrainer around it.

`train_loop_per_worker(loop_config)` is plain PyTorch DDP (Ray starts the process group: gloo on CPU,
nccl on GPU) with every feature of the stable recipe: AdamW, linear warmup then cosine/linear/constant
lr, gradient clipping, dropout / drop_path from the model config, optional EMA, evaluation every N
epochs (metrics computed on the embeddings gathered from all workers), best-by-metric checkpoint,
early stopping, a resumable `last.pt`, and a clean stop on a non-finite loss or gradient.

The loop knows nothing of Tune: it calls `ray.train.report(metrics, checkpoint)` once per epoch.
Outputs (the layout users of the guide know):

    outputs/<name>/config.yaml                      the resolved config
    outputs/<name>/logs/runtime.log                 [TRAIN] / [EVAL] / Best model lines
    outputs/<name>/logs/events.out.tfevents.*       TensorBoard: loss, grad, lr, metrics, sample motions
    outputs/<name>/checkpoints/last.pt              model, optimizer, scheduler, EMA, step, RNG
    outputs/<name>/checkpoints/model_best.pt        + best_metrics.json (with the .pt's sha256): a checked pair
    outputs/<name>/ray/                             Ray Train's run folder (its checkpoints, for retries)
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from cmdm.atomic import atomic_torch_save, atomic_write_text
from cmdm.config import Config, absolute_paths, config_from_dict, config_hash, config_to_dict, save_config
from cmdm.data.humanml3d import collate, dataset_from_config
from cmdm.evaluation.metrics import LOWER_IS_BETTER   # which way each metric is better
from cmdm.model.text import load_text_cache
from cmdm.prepare import check_data_root, prepare
from cmdm.ray_cluster import check_ray_token_settings, ray_is_up, start_ray
from cmdm.run_files import CHECKPOINT_VERSION, RunFiles, reconcile_best, save_best



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
        if self.best is None:
            return True
        if LOWER_IS_BETTER[self.metric]:
            return value < self.best - margin
        return value > self.best + margin

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

    def __init__(self, model, diffusion):
        super().__init__()
        self.model, self.diffusion = model, diffusion

    def forward(self, batch):
        cond = self.model.encode_batch(batch, cfg_dropout=True)
        x0 = batch["motion"].to(self.model.device, non_blocking=True)
        mask = batch["mask"].to(self.model.device, non_blocking=True)
        return self.diffusion.training_loss(self.model, x0, cond, mask)


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


class NonFiniteError(RuntimeError):
    pass


# ----------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------

def _since_process_start(t: float) -> str:
    """', N s after its process started' (Ray's worker start-up before the loop runs), when psutil tells."""
    try:
        import psutil
        return f"; the loop began {t - psutil.Process().create_time():.1f} s after its process started"
    except Exception:
        return ""


def train_loop_per_worker(loop_config: dict) -> None:
    """What each Ray worker runs. loop_config: {'config': Config as dict, 'run_dir': abs path,
    'init_from': optional weights path, 'partial': bool}."""
    t_enter = time.time()
    import ray.train
    import ray.train.torch as ray_torch

    from cmdm.diffusion import build_diffusion
    from cmdm.evaluation.generate import embed_generations, eval_indices, merge_shards, score
    from cmdm.evaluation.evaluator import load_evaluator
    from cmdm.model import build_model, load_model_weights

    cfg = config_from_dict(loop_config["config"], source="run config")
    files = RunFiles(loop_config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray_torch.get_device()
    is_main = rank == 0
    log = make_logger(files.log_file if is_main else None)
    tr = cfg.training

    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)

    # -------- data
    t_data = time.time()
    train_set = dataset_from_config(cfg.data, "train", train=True, seed=cfg.seed, progress=is_main)
    test_set = dataset_from_config(cfg.data, "test", train=False, seed=cfg.seed, progress=is_main)
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

    # -------- model, optimiser, schedule
    t_model = time.time()
    model = build_model(cfg).to(device)
    load_text_cache(model, cfg)
    diffusion = build_diffusion(cfg.diffusion)
    step_module = ray_torch.prepare_model(TrainStep(model, diffusion), move_to_device=False) if world > 1 \
        else TrainStep(model, diffusion)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tr.warmup_steps, total_steps, tr.lr_scheduler))
    ema = EMA(model, tr.ema.decay) if tr.ema.enabled else None
    best = BestTracker(tr.best_metric, tr.early_stopping.min_delta)
    step, start_epoch, evaluations = 0, 0, 0
    last_metrics: dict = {}
    stop_reason = None

    # -------- resume from the newest of Ray's checkpoint (a retried worker group, a restored run) and our
    # last.pt (a rerun after a kill); otherwise start from --resume-from weights, if given.
    ray_ckpt = ray.train.get_checkpoint()
    candidates = []
    if ray_ckpt is not None:
        with ray_ckpt.as_directory() as d:
            candidates.append((Path(d) / "last.pt", torch.load(Path(d) / "last.pt", map_location="cpu", weights_only=True)))
    if files.last.is_file():
        candidates.append((files.last, torch.load(files.last, map_location="cpu", weights_only=True)))
    resume_path, state = max(candidates, key=lambda c: c[1]["step"]) if candidates else (None, None)
    if resume_path is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        best.load(state["best"])
        step, start_epoch, evaluations = state["step"], state["epoch"], state["evaluations"]
        last_metrics = state.get("metrics", {})
        stop_reason = state.get("stop_reason") or None
        _set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)], device)
        log.info(f"Resumed from {resume_path} at epoch {start_epoch}, step {step}, "
                 f"lr {scheduler.get_last_lr()[0]:.2e}")
        if is_main:
            reconcile_best(files)
    elif loop_config.get("init_from"):
        report = load_model_weights(model, loop_config["init_from"], strict=not loop_config.get("partial"),
                                    partial=bool(loop_config.get("partial")), verbose=False)
        if ema is not None:
            ema = EMA(model, tr.ema.decay)
        log.info(f"Initialised weights from {report.details()}")

    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(files.logs))
        n_params = sum(p.numel() for p in params)
        log.info(f"Run {cfg.name}: {world} worker(s) on {device.type}, {len(train_set)} train clips, "
                 f"{steps_per_epoch} steps/epoch, {total_steps} steps, {n_params / 1e6:.2f}M trainable parameters")
        log.info(f"Set-up in this worker: {time.time() - t_enter:.1f} s (imports {t_data - t_enter:.1f} s, "
                 f"data {t_model - t_data:.1f} s, model and the rest {time.time() - t_model:.1f} s)"
                 + _since_process_start(t_enter))

    evaluator = None
    eval_idx = eval_indices(test_set, tr.eval_num_samples, seed=cfg.seed)
    fail_at = int(os.environ.get("CMDM_INJECT_FAILURE_AT_STEP", "-1"))

    if stop_reason:
        log.info(f"This run already ended ({stop_reason}) at step {step}: nothing to do.")
    epochs_done = start_epoch
    for epoch in range(start_epoch, tr.max_epochs):
        if stop_reason:
            break
        sampler.set_epoch(epoch)
        step_module.train()
        epoch_loss, epoch_batches, t_epoch = 0.0, 0, time.time()
        grad_sum, grad_max = 0.0, 0.0
        for it, batch in enumerate(loader, start=1):
            if fail_at >= 0 and step == fail_at and ray_ckpt is None and ctx.get_world_rank() == 0:
                raise RuntimeError(os.environ.get("CMDM_INJECT_FAILURE_MESSAGE")
                                   or f"injected failure at step {step} (CMDM_INJECT_FAILURE_AT_STEP)")
            loss = step_module(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad = torch.nn.utils.clip_grad_norm_(params, tr.grad_clip if tr.grad_clip > 0 else float("inf"))
            loss_value = _mean_across(float(loss.detach()), device)
            if not (math.isfinite(loss_value) and math.isfinite(float(grad))):
                stop_reason = "diverged"
                what = "loss" if not math.isfinite(loss_value) else "gradient norm"
                log.info(f"[ERROR] Non-finite {what} at epoch {epoch + 1}, step {step + 1} (loss {loss_value}, "
                         f"grad {float(grad)}). Likely cause: the learning rate is too high or gradients explode. "
                         f"Remedy: lower training.lr (e.g. {tr.lr / 2:.1e}) and clip harder "
                         f"(training.grad_clip=0.5). The best checkpoint so far is kept.")
                break
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            epoch_loss += loss_value
            epoch_batches += 1
            grad_sum, grad_max = grad_sum + float(grad), max(grad_max, float(grad))
            if is_main and (step % tr.log_every_steps == 0 or it == steps_per_epoch):
                lr_now = scheduler.get_last_lr()[0]
                log.info(f"[TRAIN] ==> Epoch: {epoch + 1:3d} | Iter: {it:5d} | Step: {step:7d} | "
                         f"Loss: {loss_value:8.5f} | Grad: {float(grad):6.3f} | LR: {lr_now:.2e}")
                writer.add_scalar("train/loss", loss_value, step)
                writer.add_scalar("train/grad_norm", float(grad), step)
                writer.add_scalar("train/lr", lr_now, step)
            if tr.max_steps and step >= tr.max_steps:
                stop_reason = "max_steps"
                break
        if stop_reason == "diverged":
            break

        avg_loss = epoch_loss / max(1, epoch_batches)
        epoch_seconds = time.time() - t_epoch
        if is_main:
            log.info(f"Epoch {epoch + 1:3d} completed. Avg Loss: {avg_loss:.6f} ({epoch_seconds:.1f} s)")
            writer.add_scalar("train/epoch_loss", avg_loss, step)
        metrics = {"epoch": epoch + 1, "step": step, "loss": avg_loss, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": grad_sum / max(1, epoch_batches), "grad_norm_max": grad_max,
                   "epoch_seconds": epoch_seconds}

        # -------- evaluation
        last_epoch = epoch + 1 == tr.max_epochs or stop_reason == "max_steps"
        if (epoch + 1) % tr.eval_every_epochs == 0 or last_epoch:
            t_eval = time.time()
            if evaluator is None:
                evaluator = load_evaluator(cfg, device=device, progress=is_main)
            with (ema.applied(model) if ema is not None else nullcontext()):
                shard = embed_generations(model, diffusion, test_set, eval_idx[rank::world], evaluator,
                                          sampler=cfg.evaluation.sampler, steps=cfg.evaluation.ddim_steps,
                                          eta=cfg.evaluation.ddim_eta, guidance_scale=cfg.evaluation.guidance_scale,
                                          batch_size=cfg.evaluation.batch_size, seed=cfg.seed)
                model_state = copy.deepcopy(model.state_dict()) if is_main else None
            emb = merge_shards(_gather(shard))
            result = score(emb, rng=np.random.default_rng(cfg.seed)) if is_main else None
            result = _broadcast(result)
            evaluations += 1
            metrics.update({k: v for k, v in result.items() if v is not None})
            metrics["evaluations"] = evaluations
            metrics["eval_seconds"] = time.time() - t_eval
            improved = best.update(result[tr.best_metric], step)
            if is_main:
                log.info(f"[EVAL] FID: {result['fid']:.4f} Top1: {result['top1']:.4f} Top2: {result['top2']:.4f} "
                         f"Top3: {result['top3']:.4f} MM-Dist: {result['mm_dist']:.4f} (Epoch: {epoch + 1}, Step: {step})")
                for k, v in result.items():
                    if v is not None:
                        writer.add_scalar(f"eval/{k}", v, step)
                _log_sample(writer, emb["sample"], step)
                if improved and tr.save_best:
                    record = {**{k: v for k, v in result.items() if v is not None}, "step": step, "epoch": epoch + 1,
                              "best_metric": tr.best_metric, "config_hash": config_hash(cfg)}
                    save_best(files, model_state, record, cfg)
                    log.info(f"✓ Best model saved! {tr.best_metric.upper() if tr.best_metric == 'fid' else tr.best_metric}: "
                             f"{result[tr.best_metric]:.4f} (Step: {step})")
            if tr.early_stopping.enabled and best.bad_evals >= tr.early_stopping.patience:
                stop_reason = "early_stopping"
                if is_main:
                    log.info(f"Early stopping: {tr.best_metric} has not improved by more than "
                             f"{tr.early_stopping.min_delta} for {best.bad_evals} evaluations "
                             f"(best {best.best:.4f} at step {best.best_step}).")
            last_metrics = {k: metrics[k] for k in metrics if k in result or k == "evaluations"}
        metrics.update({k: v for k, v in last_metrics.items() if k not in metrics})
        if best.best is not None:
            metrics[f"best_{tr.best_metric}"] = best.best
        metrics["stop_reason"] = stop_reason or ""

        # -------- checkpoint (every epoch) and report
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema else None,
                 "step": step, "epoch": epoch + 1, "evaluations": evaluations, "best": best.state(),
                 "metrics": last_metrics, "rng": _gather(_rng_state(device)), "config": config_to_dict(cfg),
                 "stop_reason": stop_reason if stop_reason in ("early_stopping", "max_steps") else None,
                 "format": "cmdm-checkpoint", "version": CHECKPOINT_VERSION}
        if is_main:
            atomic_torch_save(state, files.last)
            with tempfile.TemporaryDirectory() as tmp:
                os.link(files.last, Path(tmp) / "last.pt") if _same_fs(files.last, tmp) else \
                    atomic_torch_save(state, Path(tmp) / "last.pt")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        epochs_done = epoch + 1

    if stop_reason == "diverged":
        ray.train.report({**last_metrics, "epoch": epochs_done + 1, "step": step, "stop_reason": "diverged",
                          "evaluations": evaluations, "loss": loss_value, "grad_norm_max": float(grad)})
    if is_main:
        status = {"stop_reason": stop_reason or "finished", "epoch": epochs_done, "step": step, "evaluations": evaluations, "best_metric": tr.best_metric,
                  "best": best.best, "best_step": best.best_step, "last_metrics": last_metrics}
        atomic_write_text(files.status, json.dumps(status, indent=2) + "\n")
        writer.close()


def _same_fs(a: Path, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _log_sample(writer, sample, step) -> None:
    """One generated motion as a strip of stick-figure frames (and its real counterpart) in TensorBoard."""
    if sample is None:
        return
    from cmdm.skeleton import recover_from_ric
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
    from cmdm.model.checkpoint import CheckpointError, read_checkpoint
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
    from cmdm.model import build_model
    from cmdm.model.checkpoint import (CheckpointError, check_weights, dit_settings_mismatch, extract_state_dict,
                                       read_checkpoint)
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


def make_trainer(cfg: Config, files: RunFiles, *, init_from: str | None = None, partial: bool = False,
                 callbacks=()):
    """The TorchTrainer of one run (train_ray.py) or one sweep trial: workers and their resources, Ray's
    checkpoints under files.ray (what a retried worker group resumes from), worker-failure retries."""
    import ray.train
    from ray.train.torch import TorchTrainer
    per_worker = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        per_worker["GPU"] = cfg.ray.gpus_per_worker or 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config_to_dict(cfg), "run_dir": str(files.root),
                           "init_from": init_from, "partial": partial},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name="train", storage_path=str(files.ray), callbacks=list(callbacks),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures)),
    )


def run_training(cfg: Config, *, init_from: str | None = None, partial: bool = False) -> dict:
    """Run one training to its end; returns the final metrics (with 'stop_reason') and the run folder."""
    from cmdm.resources import check_fits, cluster_offer, local_offer
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
    if url:
        print(f"Ray dashboard: {url}  (it asks for the token: ray get-auth-token)")
    print(f"Run folder: {files.root}  (TensorBoard: tensorboard --logdir {files.logs} --host 127.0.0.1)")

    trainer = make_trainer(cfg, files, init_from=init_from, partial=partial)
    if files.status.exists():
        files.status.unlink()
    trainer.fit()
    status = json.loads(files.status.read_text())
    status["run_dir"] = str(files.root)
    return status
