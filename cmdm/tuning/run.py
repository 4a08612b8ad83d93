"""A CMDM sweep on Ray Tune: Optuna (TPE) proposes, ASHA stops the weak, the guide's rules steer.

    sweep file (sweep_file.py) ──> Tuner ──> one trial = one function (trial.py `trial_driver`) that runs a
                                    │        Ray TorchTrainer over `cmdm.train.train_loop_per_worker`
                                    │        (the same loop as train_ray.py: DDP, eval, best checkpoint)
                                    ├─ RuleGuidedSearch (search.py): OptunaSearch (seeded multivariate TPE,
                                    │  study in SQLite) whose first points are the guide's stable config and its
                                    │  rule variants, and which queues a remedy trial when a trial is diagnosed
                                    │  (continuing the trial's line from its checkpoint: ForkStopper stops it)
                                    ├─ ASHAScheduler on the trial's best metric so far
                                    └─ TargetStopper: ends the sweep when an evaluation meets every target

Each trial's reports pass through `TrialReportCallback` (Train -> Tune, trial.py): it keeps the trial's history,
runs the trial doctor (doctor.py) on it and adds `diagnosis`, `best_<metric>` and `targets_met`. When the sweep
ends, summary.py writes summary.md / summary.json and report.py writes report/ (index.html, which its
LiveReport callback also rewrites each time a trial ends). What the sweep folder holds: `cmdm.run_files.SweepFiles`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.stopper import CombinedStopper

from cmdm.atomic import atomic_write_text
from cmdm.config import absolute_paths
from cmdm.evaluation.metrics import improves
from cmdm.preflight import check_cluster
from cmdm.prepare import check_data_root, prepare, read_split
from cmdm.ray_cluster import check_ray_token_settings, start_ray
from cmdm.resources import check_fits, cluster_offer, local_offer
from cmdm.run_files import SweepFiles
from cmdm.tuning.report import LiveReport, make_report
from cmdm.tuning.search import ForkStopper, build_searcher, random_space
from cmdm.tuning.space import format_value
from cmdm.tuning.summary import format_summary, runtime_history, summarise, write_summary
from cmdm.tuning.sweep_file import Sweep
from cmdm.tuning.trial import TRIAL_RESOURCE, trial_driver


class TargetStopper(tune.Stopper):
    """Ends the whole sweep once one evaluation has met every target (when the sweep asks for it)."""

    def __init__(self, enabled: bool):
        self.enabled, self.met_by, self.met_at = enabled, None, None

    def __call__(self, trial_id, result):
        if result.get("targets_met") and self.met_by is None:
            self.met_by = trial_id
            if self.enabled:        # the moment the sweep ends: trials still running are cut short by it
                self.met_at = time.time()
            print(f"[targets] trial {trial_id} met every target", flush=True)
        return False

    def stop_all(self):
        return self.enabled and self.met_by is not None


class ResumableASHA(ASHAScheduler):
    """ASHA that rebuilds its rung records when a sweep is resumed.

    Ray Tune does not save the scheduler with the experiment (TuneController drops it from its state; only the
    searcher and the callbacks are restored), so after `Tuner.restore` plain ASHA starts with empty rungs: the
    first trial to reach a rung is compared with nobody and always continues, however bad. Tune calls
    `on_trial_add` for every restored trial, finished ones included; here each trial's own history (the epochs
    and evaluations its logs/runtime.log recorded as they happened: Tune's copy of its results is synced only
    now and then, and may miss the last ones of a killed sweep) is replayed into its bracket, so the rungs are
    what they were when the sweep stopped. A new trial has no history: nothing to replay."""

    def __init__(self, *args, sweep_dir, base_metric: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.trials_dir, self.base_metric = SweepFiles(sweep_dir), base_metric
        self.replayed: dict[str, int] = {}      # trial id -> epochs replayed after a resume (for the log, tests)

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        reports = trial_reports(self.trials_dir.trial(trial.trial_id).log_file, self.base_metric)
        if not reports:
            return
        bracket = self._trial_info[trial.trial_id]
        for report in reports:
            if report.get(self._metric) is not None:
                bracket.on_result(trial, report[self._time_attr], self._metric_op * report[self._metric])
        self.replayed[trial.trial_id] = len(reports)
        if trial.status in ("TERMINATED", "ERROR"):     # it will report nothing more
            del self._trial_info[trial.trial_id]
        print(f"[asha] trial {trial.trial_id}: rung records rebuilt from its {len(reports)} epochs (Ray does not "
              "restore the scheduler)", flush=True)

    def rungs(self) -> list[dict]:
        """Each bracket's rungs: {milestone: {trial_id: recorded value in the metric's own sign}}."""
        return [{milestone: {t: self._metric_op * v for t, v in recorded.items()} for milestone, recorded in b._rungs}
                for b in self._brackets]


def trial_reports(log_file: Path, metric: str) -> list[dict]:
    """A trial's epochs as its runtime.log has them, in the units ASHA reads: epoch, evaluations so far and the
    best `metric` so far (None before the first evaluation); [] for a trial that has not trained."""
    reports, best, evaluations = [], None, 0
    for epoch, row in sorted(runtime_history(log_file).items()):
        if isinstance(row.get(metric), float):
            evaluations += 1
            value = row[metric]
            if improves(metric, value, best):
                best = value
        reports.append({"epoch": epoch, "evaluations": evaluations, f"best_{metric}": best})
    return reports


class TrialClock(tune.Callback):
    """When each trial started and ended, as the driver saw it: a trial's lifetime includes its start-up and
    any epoch cut short when it was stopped (its reports alone would miss both).

    With `path` (the sweep's clock.json) every start, result and end is written down, so a sweep killed
    outright and resumed still counts the time of its earlier runs: `earlier` holds their segments, each
    ending at its last write. A resumed sweep runs the copy of this callback Tune pickled with the
    experiment, so each run starts over in `setup` and the driver reads the result back with `from_file`."""

    def __init__(self, path: Path | None = None):
        self.start, self.end = {}, {}
        self.path, self.t0, self._saved = path, time.time(), 0.0
        self.earlier: list[dict] = []

    @staticmethod
    def segments(path: Path | None) -> list[dict]:
        try:
            return list(json.loads(path.read_text()).get("segments") or []) if path and path.is_file() else []
        except (OSError, ValueError, AttributeError):
            return []

    @classmethod
    def from_file(cls, path: Path):
        """The clock as the run that just ended wrote it: its last segment is the current run."""
        clock, segments = cls(path), cls.segments(path)
        if segments:
            clock.earlier, last = segments[:-1], segments[-1]
            clock.t0 = last["start"]
            clock.start = {t: a for t, (a, b) in last.get("trials", {}).items()}
            clock.end = {t: b for t, (a, b) in last.get("trials", {}).items()}
        return clock

    def setup(self, **info):            # once per run of the sweep, the first one and each resume
        self.start, self.end, self.t0 = {}, {}, time.time()
        self.earlier = self.segments(self.path)
        self._save()

    def _segment(self) -> dict:
        now = time.time()
        return {"start": self.t0, "last": now,
                "trials": {t: [s, self.end.get(t, now)] for t, s in self.start.items()}}

    def _save(self, every: float = 0.0):
        if self.path is None or time.time() - self._saved < every:
            return
        self._saved = time.time()
        atomic_write_text(self.path, json.dumps({"segments": self.earlier + [self._segment()]}, indent=1) + "\n")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.start.setdefault(trial.trial_id, time.time())
        self._save()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._save(every=1.0)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.end.setdefault(trial.trial_id, time.time())
        self._save()

    on_trial_error = on_trial_complete

    def on_experiment_end(self, trials, **info):
        for trial_id in self.start:
            self.end.setdefault(trial_id, time.time())
        self._save()

    def seconds(self, trial_id) -> float | None:
        before = [seg["trials"][trial_id] for seg in self.earlier if trial_id in seg.get("trials", {})]
        if trial_id not in self.start and not before:
            return None
        now = sum(b - a for a, b in before)
        if trial_id in self.start:
            now += self.end.get(trial_id, time.time()) - self.start[trial_id]
        return now

    def wall_seconds(self) -> float:
        """This run's time so far plus that of the runs before the resume (not the time in between)."""
        return sum(seg["last"] - seg["start"] for seg in self.earlier) + time.time() - self.t0


def write_sweep_files(sweep: Sweep) -> None:
    files = SweepFiles(sweep.sweep_dir)
    files.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(files.sweep_yaml, sweep.path.read_text())
    info = {"name": sweep.name, "sweep_file": str(sweep.path.resolve()), "base": str(sweep.base),
            "metric": sweep.metric, "mode": sweep.mode, "targets": [str(t) for t in sweep.targets],
            "space": {k: p.describe() for k, p in sweep.space.items()}, "overrides": sweep.overrides}
    atomic_write_text(files.sweep_json, json.dumps(info, indent=2) + "\n")


def share_dataset(sweep: Sweep, read: dict | None = None, log=print) -> list | None:
    """The base config's train and test splits read once, here, and put in Ray's object store: every trial's
    workers take them from there (no copy on this node; Ray fetches them once per other node) instead of each
    re-reading thousands of files. A list holding the ObjectRef, so that tune.with_parameters passes the
    reference on rather than the data; a trial whose data.* settings differ reads its own files (SplitClips).
    None (each trial reads its files) when the motions would fill more than a quarter of the object store.
    `read`: splits the driver's `prepare` already read from the same config ({split: SplitClips}), not read again."""
    t0 = time.time()
    cfg = absolute_paths(sweep.base_config)
    read = {} if read is None else read
    clips = {split: read_split(cfg, split, read) for split in ("train", "test")}
    size = sum(m.nbytes for c in clips.values() for m in c.motions.values())
    store = min((n["Resources"].get("object_store_memory", 0) for n in ray.nodes() if n["Alive"]), default=0)
    if size > store / 4:
        log(f"Data: each trial reads its own files ({size / 2**20:.0f} MiB of motions is more than a quarter of the "
            f"smallest node's Ray object store, {store / 2**20:.0f} MiB)")
        return None
    ref = ray.put(clips)
    log(f"Data: {sum(len(c.clips) for c in clips.values())} train and test clips read once ({time.time() - t0:.1f} s, "
        f"{size / 2**20:.0f} MiB of motions) and shared with every trial through Ray's object store")
    return [ref]


def make_tuner(sweep: Sweep, *, strategy: str, resume: bool, driver_resources: dict, storage_url: str,
               stopper: TargetStopper, clock: TrialClock, shared_data: list | None = None,
               log=print) -> tune.Tuner:
    """The sweep's Tuner: the searcher and ASHA over the trial driver ("rules"), or Tune's random search with every
    trial run to its end ("random", the baseline); on --resume, the experiment in the sweep folder."""
    files = SweepFiles(sweep.sweep_dir)
    trainable = tune.with_resources(tune.with_parameters(trial_driver, sweep=sweep, shared_data=shared_data),
                                    driver_resources)
    if resume:
        log(f"Resuming {files.tune}: finished trials are kept, unfinished ones continue from their last checkpoint.")
        return tune.Tuner.restore(str(files.tune), trainable=trainable, resume_unfinished=True, resume_errored=True)
    progress = tune.CLIReporter(
        metric_columns={"evaluations": "evals", "epoch": "epoch", "loss": "loss", sweep.metric: sweep.metric,
                        f"best_{sweep.metric}": f"best_{sweep.metric}", "top1": "top1", "top3": "top3",
                        "diagnosis": "diagnosis"},
        parameter_columns={k: k.split(".")[-1] for k in sweep.space}, max_report_frequency=20)
    callbacks = [clock, LiveReport(sweep, asha=strategy != "random")]      # report/index.html as trials end
    # Tune reruns a trial whose node was lost (trial.py re-raises only then: a trial's own error is its result);
    # the rerun resumes from the trial's last.pt
    run_config = tune.RunConfig(name=files.tune.name, storage_path=str(files.root), stop=stopper, callbacks=callbacks,
                                progress_reporter=progress, verbose=1,
                                failure_config=tune.FailureConfig(max_failures=sweep.base_config.ray.lost_node_retries))
    trials = {"num_samples": sweep.num_samples, "max_concurrent_trials": sweep.max_concurrent_trials}
    if strategy == "random":
        search = BasicVariantGenerator(random_state=sweep.seed, max_concurrent=sweep.max_concurrent_trials)
        return tune.Tuner(trainable, param_space=random_space(sweep), run_config=run_config,
                          tune_config=tune.TuneConfig(search_alg=search, **trials))
    searcher, priors = build_searcher(sweep, storage_url, log=log)
    if priors:
        log("Warm start (the guide's rules as first trials): " + "; ".join(
            f"{name}: " + ", ".join(f"{k.split('.')[-1]}={format_value(v)}" for k, v in p.items()) for name, p in priors))
    if searcher.remedy == "continue" and searcher.max_remedies:   # a forked trial's line goes on in its child
        run_config.stop = CombinedStopper(stopper, ForkStopper(searcher))
    sched = sweep.scheduler
    scheduler = ResumableASHA(sweep_dir=sweep.sweep_dir, base_metric=sweep.metric,
                               time_attr=sched.time_attr, metric=f"best_{sweep.metric}", mode=sweep.mode,
                               grace_period=sched.grace_period, reduction_factor=sched.reduction_factor,
                               max_t=sched.max_t + 1)   # a trial reaching max_t ends by itself, not killed on its last report
    return tune.Tuner(trainable, run_config=run_config,
                      tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, **trials))


def run_sweep(sweep: Sweep, *, address: str = "", resume: bool = False, strategy: str = "rules", log=print) -> dict:
    """Run (or resume) the sweep to its end; returns the summary (also written to the sweep folder).
    strategy "rules": Optuna TPE + priors + doctor + ASHA (the product); "random": random search, every trial
    run to its end (the baseline bench/bench_sweep.py compares against)."""
    # Read by Ray when the sweep runs (and by the processes the local Ray starts), so set before start_ray.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")          # our CLIReporter columns (diagnosis included)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # epochs before the first evaluation have no fid
    files = SweepFiles(sweep.sweep_dir)
    if resume and not tune.Tuner.can_restore(str(files.tune)):
        raise SystemExit(f"error: --resume: {files.tune} holds no sweep to resume. Run without --resume to start it.")
    if not resume and files.tune.exists():
        raise SystemExit(f"error: the sweep folder {files.root} already holds a sweep. Resume it with --resume, or set "
                         f"another `name:` in {sweep.path} (or delete {files.root}) to start a new one.")
    check_data_root(absolute_paths(sweep.base_config))
    where = f"{sweep.path} (resources)"
    if not address and not ray.is_initialized():   # a local Ray gets this machine: refuse before data and evaluator
        check_fits(sweep.base_config.ray, local_offer(), where=where, prefix="resources.",
                   what="this machine (a local Ray)")
    check_ray_token_settings()
    read = prepare(absolute_paths(sweep.base_config))   # data + evaluator once, before any trial starts
    write_sweep_files(sweep)

    t_ray = time.time()
    url = start_ray(address, resources={TRIAL_RESOURCE: 1000}, log=log)    # a local Ray on 127.0.0.1 only
    if url:
        log(f"Ray dashboard: {url}  (it asks for the token: ray get-auth-token)")
    ray_start_seconds = time.time() - t_ray
    driver_res = {"CPU": 0, TRIAL_RESOURCE: 1} if ray.cluster_resources().get(TRIAL_RESOURCE) else {"CPU": 0.01}
    check_fits(sweep.base_config.ray, cluster_offer(), where=where, prefix="resources.", what="the Ray cluster",
               extra_cpu=driver_res["CPU"])
    check_cluster(absolute_paths(sweep.base_config), files.root, log=log)   # every node sees the same files
    storage_url = f"sqlite:///{files.optuna_db}"
    log(f"Sweep folder: {files.root}\n  Report:      {files.report / 'index.html'} (rewritten as trials end)\n"
        f"  TensorBoard: tensorboard --logdir {files.root} --host 127.0.0.1")
    if importlib.util.find_spec("optuna_dashboard"):      # pip install '.[dashboard]'
        log(f"  Optuna:      optuna-dashboard {storage_url} --host 127.0.0.1")

    stopper = TargetStopper(sweep.stop_on_targets)
    if not resume:                         # the wall time counts every run of the sweep
        atomic_write_text(files.clock, json.dumps({"segments": []}) + "\n")
    tuner = make_tuner(sweep, strategy=strategy, resume=resume, driver_resources=driver_res, storage_url=storage_url,
                       stopper=stopper, clock=TrialClock(files.clock), shared_data=share_dataset(sweep, read, log=log),
                       log=log)
    grid = tuner.fit()
    clock = TrialClock.from_file(files.clock)    # what the callback Tune ran (maybe a restored copy) wrote
    summary = summarise(sweep, grid, clock.wall_seconds(), clock=clock, targets_met_at=stopper.met_at,
                        asha=strategy != "random")
    summary["ray_start_seconds"] = ray_start_seconds     # before the wall clock above starts; 0 if Ray was up
    write_summary(sweep, summary)
    log(format_summary(summary))
    try:
        make_report(sweep, summary)
        log(f"Report: {files.report / 'index.html'}")
    except Exception as exc:  # pictures are a bonus: never lose the summary over them
        log(f"[report] could not draw the report: {exc}")
    return summary
