"""What one run's output folder and one sweep's folder hold, and the best pair (model_best.pt +
best_metrics.json) read and written as one checked unit: train_ray.py runs, sweep trials, the summary and export
all go through here.

    <run>/config.yaml                      the resolved config
    <run>/logs/runtime.log                 [TRAIN] / [EVAL] / Best model lines
    <run>/logs/events.out.tfevents.*       TensorBoard
    <run>/logs/startup.json                when the worker's process started, imported cmdm.train, built its parts
    <run>/checkpoints/last.pt              the training state (cmdm.train.TrainState), for reruns
    <run>/checkpoints/model_best.pt        + best_metrics.json (with the .pt's sha256): a checked pair
    <run>/ray/                             Ray Train's run folder (its checkpoints, for retries)
    <run>/status.json, error.txt           how the run ended; a sweep trial's traceback when it crashed

    <sweep>/sweep.yaml, sweep.json         the sweep file as given, and what `export` needs (metric, mode)
    <sweep>/optuna.db                      the Optuna study (optuna-dashboard sqlite:///.../optuna.db)
    <sweep>/tune/                          Ray Tune's experiment (restore point, per-trial result.json / TensorBoard)
    <sweep>/trials/<trial_id>/             each trial's run folder, the layout above
    <sweep>/remedies.jsonl                 each remedy trial the doctor queued, and why (and what it continues)
    <sweep>/forks/<parent>-<rule>.pt       the diagnosed trial's checkpoint its remedy trial continues from,
                                           as it was at the diagnosis (`doctor: {remedy: continue}`)
    <sweep>/clock.json                     when each run of the sweep started and last wrote (the wall time adds them)
    <sweep>/summary.md, summary.json       the final table, sorted by the metric
    <sweep>/report/                        curves.png, params_vs_<metric>.png, best_trial/*.gif
    <sweep>/best/                          `tune_ray.py export`'s default destination
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cmdm.atomic import atomic_write_bytes, atomic_write_text, torch_bytes
from cmdm.config import Config, config_to_dict

CHECKPOINT_VERSION = 1


class RunFiles:
    """Paths of one run's output folder."""

    def __init__(self, run_dir):
        self.root = Path(run_dir)
        self.logs = self.root / "logs"
        self.checkpoints = self.root / "checkpoints"
        self.log_file = self.logs / "runtime.log"
        self.startup = self.logs / "startup.json"     # when rank 0's process started, imported, built (train.py)
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "model_best.pt"
        self.best_json = self.checkpoints / "best_metrics.json"
        self.config = self.root / "config.yaml"
        self.status = self.root / "status.json"      # how the run ended, for the driver and for people
        self.node_lost = self.root / "node_lost.log"  # each Ray node lost while the run / trial trained
        self.error = self.root / "error.txt"         # a sweep trial's traceback, when it crashed
        self.ray = self.root / "ray"


class SweepFiles:
    """Paths of one sweep's folder; `trial(trial_id)` is a trial's run folder."""

    def __init__(self, sweep_dir):
        self.root = Path(sweep_dir)
        self.sweep_yaml = self.root / "sweep.yaml"
        self.sweep_json = self.root / "sweep.json"
        self.optuna_db = self.root / "optuna.db"
        self.tune = self.root / "tune"
        self.trials = self.root / "trials"
        self.remedies = self.root / "remedies.jsonl"
        self.forks = self.root / "forks"
        self.clock = self.root / "clock.json"
        self.summary_md = self.root / "summary.md"
        self.summary_json = self.root / "summary.json"
        self.report = self.root / "report"
        self.export = self.root / "best"

    def trial(self, trial_id: str) -> RunFiles:
        return RunFiles(self.trials / trial_id)

    def trial_runs(self) -> list[RunFiles]:
        """Every trial folder there is, in name order."""
        return [RunFiles(p) for p in sorted(self.trials.glob("*")) if p.is_dir()]


def save_best(files: RunFiles, model_state: dict, record: dict, cfg: Config) -> None:
    """model_best.pt first (it embeds the metrics), then best_metrics.json, which is the same record plus the
    sha256 of the model_best.pt it describes: each rename is atomic, a reader (`read_best`) tells whether the
    two belong together, and after a crash between the renames the .pt's own record is the truth."""
    data = torch_bytes({"model": model_state, "config": config_to_dict(cfg), "metrics": record,
                        "format": "cmdm-checkpoint", "version": CHECKPOINT_VERSION})
    atomic_write_bytes(files.best, data)
    atomic_write_text(files.best_json, best_json_text(record, hashlib.sha256(data).hexdigest()))


def best_json_text(record: dict, checkpoint_sha256: str) -> str:
    return json.dumps({**record, "checkpoint_sha256": checkpoint_sha256}, indent=2) + "\n"


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_best(checkpoints_dir) -> dict | None:
    """The record of checkpoints_dir/model_best.pt, or None when there is no readable model_best.pt.

    best_metrics.json is used when its `checkpoint_sha256` is the hash of the model_best.pt beside it;
    otherwise (a crash between the two writes, a json of an older best, a missing or broken json) the
    record embedded in model_best.pt is returned. The result carries the `checkpoint_sha256` it was
    checked against, so a copy of the pair can be checked again."""
    best, best_json = Path(checkpoints_dir) / "model_best.pt", Path(checkpoints_dir) / "best_metrics.json"
    if not best.is_file():
        return None
    sha = file_sha256(best)
    try:
        on_disk = json.loads(best_json.read_text())
    except (OSError, ValueError):
        on_disk = None
    if isinstance(on_disk, dict) and on_disk.get("checkpoint_sha256") == sha:
        return on_disk
    from cmdm.checkpoint_file import CheckpointError, read_checkpoint     # torch: only on this path
    try:
        obj = read_checkpoint(best)
    except CheckpointError:
        return None
    record = obj.get("metrics") if isinstance(obj, dict) else None
    return {**record, "checkpoint_sha256": sha} if isinstance(record, dict) else None


def reconcile_best(files: RunFiles) -> dict | None:
    """The best record as model_best.pt holds it; rewrites best_metrics.json when it does not match the .pt."""
    record = read_best(files.checkpoints)
    if record is None:
        return None
    try:
        on_disk = json.loads(files.best_json.read_text())
    except (OSError, ValueError):
        on_disk = None
    if on_disk != record:
        atomic_write_text(files.best_json, json.dumps(record, indent=2) + "\n")
    return {k: v for k, v in record.items() if k != "checkpoint_sha256"}
