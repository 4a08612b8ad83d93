"""A CMDM sweep on Ray Tune: Optuna (TPE) proposes, ASHA stops the weak, the guide's rules steer.

    sweep file (cmdm/sweep.py) ──> Tuner ──> one trial = one function (`trial_driver`) that runs a
                                    │        Ray TorchTrainer over `cmdm.train.train_loop_per_worker`
                                    │        (the same loop as train_ray.py: DDP, eval, best checkpoint)
                                    ├─ RuleGuidedSearch: OptunaSearch (seeded multivariate TPE, study in
                                    │  SQLite) whose first points are the guide's stable config and its rule
                                    │  variants, and which queues a remedy trial when a trial is diagnosed
                                    ├─ ASHAScheduler on the trial's best metric so far
                                    └─ TargetStopper: ends the sweep when an evaluation meets every target

Each trial's reports pass through `TrialReportCallback` (Train -> Tune): it keeps the trial's history,
runs the trial doctor (cmdm/doctor.py) on it and adds `diagnosis`, `best_<metric>` and `targets_met`.

Sweep folder (outputs/<sweep name>/):
    sweep.yaml, sweep.json        the sweep file as given, and what `export` needs (metric, mode)
    optuna.db                     the Optuna study (optuna-dashboard sqlite:///.../optuna.db)
    tune/                         Ray Tune's experiment (restore point, per-trial result.json / TensorBoard)
    trials/<trial_id>/            each trial's run folder, same layout as train_ray.py's outputs/<name>/
    summary.md, summary.json      the final table, sorted by the metric (built from the trials' own files
                                  where Tune's state is behind them, e.g. after a crash and --resume)
    clock.json                    when each run of the sweep started and last wrote (the wall time adds them)
    report/                       curves.png, params_vs_<metric>.png, best_trial/*.gif
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

from cmdm.atomic import atomic_write_text, current_umask
from cmdm.config import save_config
from cmdm.sweep import Sweep

TRIAL_RESOURCE = "trial_driver"   # custom resource: a trial's driver holds no CPU, its Train workers do


def best_of(values, mode: str):
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return None
    return min(finite) if mode == "min" else max(finite)


def evaluations_of(history: list[dict]) -> list[dict]:
    """The reports that carry a new evaluation (metrics are carried over between evaluations)."""
    out, seen = [], 0
    for h in history:
        n = h.get("evaluations") or 0
        if n > seen:
            out.append(h)
            seen = n
    return out


def describe_findings(findings) -> str:
    """The `diagnosis` column: rule names, which the searcher reads back to find the remedy."""
    return ", ".join(f.rule.name for f in findings)


def describe_evidence(findings) -> str:
    """The `diagnosis_detail` column: what each detector saw."""
    return "; ".join(f"{f.rule.name}: {f.evidence}" for f in findings)


# ----------------------------------------------------------------------------
# Train -> Tune: one report per epoch, with the doctor's diagnosis
# ----------------------------------------------------------------------------

def _report_callback_class():
    from ray.tune.integration.ray_train import TuneReportCallback

    class TrialReportCallback(TuneReportCallback):
        """Forwards rank 0's report to Tune (metrics are already reduced across workers by the loop), with
        the trial's diagnosis, its best metric so far and whether an evaluation met every target."""

        def __init__(self, sweep_metric: str, mode: str, targets, rules=None):
            super().__init__()
            self.sweep_metric, self.mode, self.targets, self.rules = sweep_metric, mode, tuple(targets), rules
            self.history: list[dict] = []
            self.targets_met = False

        def after_report(self, run_context, metrics, checkpoint):
            from cmdm.doctor import diagnose
            m = dict(metrics[0])
            self.history.append(m)
            evals = evaluations_of(self.history)
            best = best_of([e.get(self.sweep_metric) for e in evals], self.mode)
            if best is not None:
                m[f"best_{self.sweep_metric}"] = best
            if evals and evals[-1] is m and self.targets and all(t.met(m) for t in self.targets):
                self.targets_met = True
            m["targets_met"] = self.targets_met
            findings = diagnose(self.history, rules=self.rules)
            m["diagnosis"] = describe_findings(findings)
            m["diagnosis_detail"] = describe_evidence(findings)
            super().after_report(run_context, [m] + list(metrics[1:]), checkpoint)

    return TrialReportCallback


def trial_driver(params: dict, sweep: Sweep) -> None:
    """One trial: the sweep's base config + `params`, trained by a TorchTrainer in trials/<trial_id>/."""
    import ray.tune

    from cmdm.doctor import diagnose
    from cmdm.config import absolute_paths
    from cmdm.run_files import RunFiles
    from cmdm.train import make_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = absolute_paths(sweep.trial_config(params, name=trial_id, output_root=str(sweep.sweep_dir / "trials")))
    files = RunFiles(cfg.run_dir)
    save_config(cfg, files.config)
    callback = _report_callback_class()(f"{sweep.metric}", sweep.mode, sweep.targets, sweep.doctor_rules)
    trainer = make_trainer(cfg, files, callbacks=[callback])
    try:
        trainer.fit()
    except Exception as exc:  # a crash, an OOM: report it as this trial's result; the sweep goes on
        error = "".join(traceback.format_exception(exc))
        findings = diagnose([], error, rules=sweep.doctor_rules)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]   # the worker's own error
        atomic_write_text(files.root / "error.txt", error)
        ray.tune.report({"failed": True, "error": (raised or lines)[-1][:200],
                         "diagnosis": describe_findings(findings) or "crashed",
                         "diagnosis_detail": describe_evidence(findings)})


# ----------------------------------------------------------------------------
# The searcher: Optuna TPE + the guide's priors + remedies from the doctor
# ----------------------------------------------------------------------------

def optuna_space(sweep: Sweep) -> dict:
    import optuna
    space = {}
    for key, p in sweep.space.items():
        if p.kind == "choice":
            space[key] = optuna.distributions.CategoricalDistribution(list(p.values))
        elif p.kind == "int":
            space[key] = optuna.distributions.IntDistribution(int(p.low), int(p.high))
        else:
            space[key] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.kind == "loguniform")
    return space


def _search_class():
    from ray.tune.search.optuna import OptunaSearch

    class RuleGuidedSearch(OptunaSearch):
        """OptunaSearch that (1) waits for an evaluation before telling Optuna anything, and (2) turns a
        trial's diagnosis into a remedy point queued in the study, so TPE's next suggestion is the fix."""

        def __init__(self, *args, sweep_space=None, max_remedies=0, log_path=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.sweep_space = sweep_space or {}
            self.max_remedies = max_remedies
            self.remedies: list[dict] = []      # {trial_id, rule, point}
            self.queued: list[dict] = []        # every point queued so far (priors included)
            self.log_path = log_path
            self._trial_params: dict[str, dict] = {}

        def suggest(self, trial_id):
            params = super().suggest(trial_id)
            if params is not None:
                self._trial_params[trial_id] = dict(params)
            return params

        def on_trial_result(self, trial_id, result):
            if isinstance(result.get(self.metric), (int, float)):
                super().on_trial_result(trial_id, result)
            self._consider_remedy(trial_id, result)

        def on_trial_complete(self, trial_id, result=None, error=False):
            if result:
                self._consider_remedy(trial_id, result)
            super().on_trial_complete(trial_id, result, error)

        def queue(self, point: dict) -> bool:
            if any(_same_point(point, q) for q in self.queued):
                return False
            self.queued.append(dict(point))
            self._ot_study.enqueue_trial(point, skip_if_exists=True)
            return True

        def _consider_remedy(self, trial_id, result):
            from cmdm.doctor import RULES, apply_remedy
            names = [n.strip() for n in str(result.get("diagnosis") or "").split(",") if n.strip()]
            done = {(r["trial_id"], r["rule"]) for r in self.remedies}
            rules = {r.name: r for r in RULES}
            params = self._trial_params.get(trial_id)
            for name in names:
                if len(self.remedies) >= self.max_remedies or params is None:
                    return
                if name not in rules or (trial_id, name) in done:
                    continue
                point = apply_remedy(params, rules[name], self.sweep_space)
                if point is None or not self.queue(point):
                    continue
                record = {"trial_id": trial_id, "rule": name, "from": params, "point": point}
                self.remedies.append(record)
                msg = (f"[doctor] trial {trial_id}: {name} ({rules[name].cause}) -> queued "
                       + ", ".join(f"{k}={_fmt(v)}" for k, v in point.items() if point[k] != params.get(k)))
                print(msg, flush=True)
                if self.log_path:
                    with open(self.log_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record) + "\n")

    return RuleGuidedSearch


def _same_point(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) or isinstance(y, float):
            if not math.isclose(float(x), float(y), rel_tol=1e-6):
                return False
        elif x != y:
            return False
    return True


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def build_searcher(sweep: Sweep, storage_url: str | None):
    import optuna
    from cmdm.doctor import prior_points
    priors = prior_points(sweep.base_point(), sweep.space) if sweep.priors else []
    # TPE samples at random until n_startup_trials trials are complete. The warm start is better than random
    # points, so with priors TPE takes over once two of them are in; without, a few random points come first.
    # constant_liar: trials still running count as bad, so parallel suggestions do not pile onto one spot.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=sweep.seed, multivariate=True, constant_liar=sweep.max_concurrent_trials > 1,
            n_startup_trials=2 if priors else min(10, max(3, sweep.num_samples // 4)))
    cls = _search_class()
    searcher = cls(space=optuna_space(sweep), metric=f"best_{sweep.metric}", mode=sweep.mode, sampler=sampler,
                   storage=optuna.storages.RDBStorage(storage_url) if storage_url else None,
                   study_name=sweep.name if storage_url else None,
                   sweep_space=sweep.space, max_remedies=sweep.max_remedies if sweep.doctor else 0,
                   log_path=str(sweep.sweep_dir / "remedies.jsonl"))
    for _, point in priors:
        searcher.queue(point)
    return searcher, priors


def _stopper_class():
    from ray import tune

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

    return TargetStopper


def _clock_class():
    from ray import tune

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

    return TrialClock


# ----------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------

def write_sweep_files(sweep: Sweep) -> None:
    d = sweep.sweep_dir
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "sweep.yaml", sweep.path.read_text())
    info = {"name": sweep.name, "sweep_file": str(sweep.path.resolve()), "base": str(sweep.base),
            "metric": sweep.metric, "mode": sweep.mode, "targets": [str(t) for t in sweep.targets],
            "space": {k: p.describe() for k, p in sweep.space.items()}, "overrides": sweep.overrides}
    atomic_write_text(d / "sweep.json", json.dumps(info, indent=2) + "\n")


def run_sweep(sweep: Sweep, *, address: str = "", resume: bool = False, strategy: str = "rules", log=print) -> dict:
    """Run (or resume) the sweep to its end; returns the summary (also written to the sweep folder).
    strategy "rules": Optuna TPE + priors + doctor + ASHA (the product); "random": random search, every trial
    run to its end (the baseline bench/bench_sweep.py compares against)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")          # our CLIReporter columns (diagnosis included)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # epochs before the first evaluation have no fid
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from cmdm.config import absolute_paths
    from cmdm.prepare import prepare
    from cmdm.ray_cluster import check_ray_token_settings, start_ray

    d = sweep.sweep_dir
    experiment = d / "tune"
    if resume and not tune.Tuner.can_restore(str(experiment)):
        raise SystemExit(f"error: --resume: {experiment} holds no sweep to resume. Run without --resume to start it.")
    if not resume and experiment.exists():
        raise SystemExit(f"error: the sweep folder {d} already holds a sweep. Resume it with --resume, or set another "
                         f"`name:` in {sweep.path} (or delete {d}) to start a new one.")
    from cmdm.resources import check_fits, cluster_offer, local_offer
    from cmdm.prepare import check_data_root
    check_data_root(absolute_paths(sweep.base_config))
    where = f"{sweep.path} (resources)"
    if not address and not ray.is_initialized():   # a local Ray gets this machine: refuse before data and evaluator
        check_fits(sweep.base_config.ray, local_offer(), where=where, prefix="resources.",
                   what="this machine (a local Ray)")
    check_ray_token_settings()
    prepare(absolute_paths(sweep.base_config))     # data + evaluator once, before any trial starts
    write_sweep_files(sweep)

    t_ray = time.time()
    url = start_ray(address, resources={TRIAL_RESOURCE: 1000}, log=log)    # a local Ray on 127.0.0.1 only
    if url:
        log(f"Ray dashboard: {url}  (it asks for the token: ray get-auth-token)")
    ray_start_seconds = time.time() - t_ray
    driver_res = {"CPU": 0, TRIAL_RESOURCE: 1} if ray.cluster_resources().get(TRIAL_RESOURCE) else {"CPU": 0.01}
    check_fits(sweep.base_config.ray, cluster_offer(), where=where, prefix="resources.", what="the Ray cluster",
               extra_cpu=driver_res["CPU"])
    storage_url = f"sqlite:///{d / 'optuna.db'}"
    log(f"Sweep folder: {d}\n  TensorBoard: tensorboard --logdir {d} --host 127.0.0.1\n"
        f"  Optuna:      optuna-dashboard {storage_url}")

    trainable = tune.with_resources(tune.with_parameters(trial_driver, sweep=sweep), driver_res)
    reporter = tune.CLIReporter(
        metric_columns={"evaluations": "evals", "epoch": "epoch", "loss": "loss", sweep.metric: sweep.metric,
                        f"best_{sweep.metric}": f"best_{sweep.metric}", "top1": "top1", "top3": "top3",
                        "diagnosis": "diagnosis"},
        parameter_columns={k: k.split(".")[-1] for k in sweep.space}, max_report_frequency=20)
    stopper = _stopper_class()(sweep.stop_on_targets)
    clock_file = d / "clock.json"          # the wall time counts every run of the sweep
    if not resume:
        atomic_write_text(clock_file, json.dumps({"segments": []}) + "\n")
    clock = _clock_class()(clock_file)
    if resume:
        log(f"Resuming {experiment}: finished trials are kept, unfinished ones continue from their last checkpoint.")
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True)
    elif strategy == "random":
        from ray.tune.search import BasicVariantGenerator
        tuner = tune.Tuner(
            trainable, param_space={k: p.to_tune() for k, p in sweep.space.items()},
            tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(random_state=sweep.seed,
                                                                         max_concurrent=sweep.max_concurrent_trials),
                                        num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent_trials),
            run_config=tune.RunConfig(name="tune", storage_path=str(d), stop=stopper, callbacks=[clock],
                                      progress_reporter=reporter, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=0)))
    else:
        searcher, priors = build_searcher(sweep, storage_url)
        if priors:
            log("Warm start (the guide's rules as first trials): " + "; ".join(
                f"{name}: " + ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in p.items()) for name, p in priors))
        sched = sweep.scheduler
        scheduler = ASHAScheduler(time_attr=sched.time_attr, metric=f"best_{sweep.metric}", mode=sweep.mode,
                                  grace_period=sched.grace_period, reduction_factor=sched.reduction_factor,
                                  max_t=sched.max_t + 1)   # a trial reaching max_t ends by itself, not killed on its last report
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=sweep.num_samples,
                                        max_concurrent_trials=sweep.max_concurrent_trials),
            run_config=tune.RunConfig(name="tune", storage_path=str(d), stop=stopper, callbacks=[clock],
                                      progress_reporter=reporter, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    grid = tuner.fit()
    clock = _clock_class().from_file(clock_file)    # what the callback Tune ran (maybe a restored copy) wrote
    wall = clock.wall_seconds()
    summary = summarise(sweep, grid, wall, clock=clock, targets_met_at=stopper.met_at,
                        asha=strategy != "random")
    summary["ray_start_seconds"] = ray_start_seconds     # before the wall clock above starts; 0 if Ray was up
    write_summary(sweep, summary)
    log(format_summary(summary))
    try:
        make_report(sweep, summary)
        log(f"Report: {d / 'report'}")
    except Exception as exc:  # pictures are a bonus: never lose the summary over them
        log(f"[report] could not draw the report: {exc}")
    return summary


# ----------------------------------------------------------------------------
# Summary, report, export
# ----------------------------------------------------------------------------

def _history(result) -> list[dict]:
    df = result.metrics_dataframe
    if df is None or df.empty:
        return [result.metrics] if result.metrics else []
    return [{k: (None if isinstance(v, float) and math.isnan(v) and k not in ("loss",) else v)
             for k, v in row.items()} for row in df.to_dict("records")]


EPOCH_LINE = re.compile(r"Epoch\s+(\d+) completed\. Avg Loss: (\S+) \((\S+) s\)")
EVAL_LINE = re.compile(r"\[EVAL\] FID: (\S+) Top1: (\S+) Top2: (\S+) Top3: (\S+) MM-Dist: (\S+) "
                       r"\(Epoch: (\d+), Step: (\d+)\)")


def runtime_history(log_file: Path) -> dict[int, dict]:
    """epoch -> what the trial's logs/runtime.log says of it: loss, seconds, and the evaluation if there was one
    (an epoch run again after a resume: its last run)."""
    out: dict[int, dict] = {}
    if not log_file.is_file():
        return out
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        if m := EPOCH_LINE.search(line):
            e = int(m[1])
            out[e] = {"epoch": e, "loss": float(m[2]), "epoch_seconds": float(m[3])}
        elif m := EVAL_LINE.search(line):
            e = int(m[6])
            out.setdefault(e, {"epoch": e}).update(
                {k: float(v) for k, v in zip(("fid", "top1", "top2", "top3", "mm_dist"), m.groups()[:5])})
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def with_trial_files(history: list[dict], run_dir: Path, metric: str) -> tuple[list[dict], dict, dict]:
    """Tune's history of a trial completed by what the trial wrote itself. After a sweep was killed, Tune's
    restored state can predate the trial's last epochs (and a resumed trial that had already finished reports
    nothing new): the epochs runtime.log has beyond Tune's are appended. Returns (history, status.json, the
    best record of the model_best.pt pair (read_best) when it is by `metric`, else {})."""
    from cmdm.run_files import read_best
    status = _read_json(run_dir / "status.json")
    best = read_best(run_dir / "checkpoints") or {}     # the model_best.pt / best_metrics.json pair, checked
    if best.get("best_metric", metric) != metric or not isinstance(best.get(metric), (int, float)):
        best = {}
    history = list(history)
    last_epoch = max([h.get("epoch") or 0 for h in history] or [0])
    evaluations = max([h.get("evaluations") or 0 for h in history] or [0])
    for e, row in sorted(runtime_history(run_dir / "logs" / "runtime.log").items()):
        if e > last_epoch:
            evaluations += "fid" in row
            history.append({**row, "evaluations": evaluations, "from_trial_files": True})
    return history, status, best


def summarise(sweep: Sweep, grid, wall_seconds: float, *, clock=None, targets_met_at: float | None = None,
              asha: bool = True) -> dict:
    """One row per trial, sorted by its best metric. clock (TrialClock) gives each trial's lifetime as the driver
    saw it; targets_met_at, when the sweep stopped because a trial met the targets, tells the trials it cut short
    from those ASHA stopped."""
    rows = []
    for result in grid:
        history = _history(result)
        if not history and not result.config:      # created, then the sweep ended before it started
            continue
        params = {k: (result.config or {}).get(k) for k in sweep.space}
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        run_dir = sweep.sweep_dir / "trials" / trial_id
        history, status, own_best = with_trial_files(history, run_dir, sweep.metric)   # the trial's files rule
        evals = evaluations_of(history)
        diagnoses = []
        for h in history:
            for name in str(h.get("diagnosis") or "").split(","):
                if name.strip() and name.strip() not in diagnoses:
                    diagnoses.append(name.strip())
        failed = bool((result.metrics or {}).get("failed")) or result.error is not None
        best_eval = None
        if evals:
            key = sweep.metric
            finite = [e for e in evals if isinstance(e.get(key), (int, float)) and math.isfinite(e[key])]
            if finite:
                best_eval = (min if sweep.mode == "min" else max)(finite, key=lambda e: e[key])
        if own_best:           # best_metrics.json: what the trial kept as its best (and what export copies)
            best_eval = own_best
        reported_seconds = float(max([h.get("time_total_s") or 0 for h in history] or [0]))
        lifetime = clock.seconds(trial_id) if clock is not None else None
        ended = clock.end.get(trial_id) if clock is not None else None
        if failed:
            end = "failed"
        elif status.get("stop_reason"):
            end = status["stop_reason"]
        elif targets_met_at is not None and (ended is None or ended >= targets_met_at):
            end = "stopped: sweep met its targets"
        else:
            end = "stopped by ASHA" if asha else "stopped"
        rows.append({
            "trial_id": trial_id, "params": params, "end": end,
            "epochs": max([h.get("epoch") or 0 for h in history] + [status.get("epoch") or 0]),
            "evaluations": max(len(evals), status.get("evaluations") or 0),
            "best": {m: best_eval.get(m) for m in ("fid", "top1", "top2", "top3", "mm_dist")} if best_eval else None,
            "best_epoch": best_eval.get("epoch") if best_eval else None,
            "diagnosis": ", ".join(diagnoses), "error": (result.metrics or {}).get("error"),
            "targets_met": bool(best_eval) and sweep.targets_met(best_eval)
                           or any(bool(h.get("targets_met")) for h in history),
            "train_seconds": float(sum(h.get("epoch_seconds") or 0 for h in history)),
            "trial_seconds": float(lifetime) if lifetime is not None else reported_seconds,
            "history": [{k: h.get(k) for k in ("epoch", "evaluations", "loss", "fid", "top1", "top2", "top3",
                                               "targets_met", "timestamp", "epoch_seconds", "eval_seconds")}
                        for h in history],
            "run_dir": str(run_dir),
        })
    sign = 1 if sweep.mode == "min" else -1
    rows.sort(key=lambda r: (r["best"] is None or r["best"].get(sweep.metric) is None,
                             sign * (r["best"] or {}).get(sweep.metric, 0) if r["best"] else 0))
    return {"sweep": sweep.name, "metric": sweep.metric, "mode": sweep.mode,
            "targets": [str(t) for t in sweep.targets], "wall_seconds": wall_seconds,
            "trial_seconds_sum": float(sum(r["trial_seconds"] for r in rows)),
            "best_trial": rows[0]["trial_id"] if rows and rows[0]["best"] else None, "trials": rows}


def format_summary(summary: dict) -> str:
    keys = sorted({k for r in summary["trials"] for k in r["params"]})
    short = [k.split(".")[-1] for k in keys]
    head = ["trial"] + short + ["fid", "top1", "top2", "top3", "epochs", "end", "diagnosis", "targets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["trials"]:
        b = r["best"] or {}
        cells = [r["trial_id"]] + [_fmt(r["params"].get(k)) for k in keys]
        cells += [f"{b[m]:.4f}" if b.get(m) is not None else "-" for m in ("fid", "top1", "top2", "top3")]
        cells += [str(r["epochs"]), r["end"], r["diagnosis"] or "-", "yes" if r["targets_met"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    from cmdm.doctor import RULES, explain
    rules = {rule.name: rule for rule in RULES}
    sick = [(r["trial_id"], name) for r in summary["trials"] for name in (r["diagnosis"] or "").split(", ")
            if name in rules]
    if sick:
        lines += ["", "Diagnoses (the remedy became a queued trial where the space and max_remedies allowed):"]
        lines += [f"- {trial_id}: {explain(rules[name])}" for trial_id, name in sick]
    best = summary["best_trial"]
    tail = [f"\nBest trial: {best}" if best else "\nNo trial reached an evaluation.",
            f"Targets ({', '.join(summary['targets']) or 'none'}): "
            f"{'met' if any(r['targets_met'] for r in summary['trials']) else 'not met'}.",
            f"Wall time {summary['wall_seconds']:.0f} s for {summary['trial_seconds_sum']:.0f} s of trial time."]
    return "\n".join(lines + tail)


def write_summary(sweep: Sweep, summary: dict) -> None:
    d = sweep.sweep_dir
    atomic_write_text(d / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    atomic_write_text(d / "summary.md", f"# Sweep {sweep.name}: sorted by best {sweep.metric} ({sweep.mode})\n\n"
                      + format_summary(summary) + "\n")


def make_report(sweep: Sweep, summary: dict, num_gifs: int = 3) -> Path:
    """curves.png (metric and loss per trial), params_vs_<metric>.png, best_trial/*.gif."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = sweep.sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    trials = summary["trials"]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in trials:
        ev = [h for h in r["history"] if h.get(sweep.metric) is not None]
        ev = {h["evaluations"]: h for h in ev if h.get("evaluations")}
        if ev:
            ax1.plot(list(ev), [h[sweep.metric] for h in ev.values()], marker="o", label=r["trial_id"])
        ax2.plot([h["epoch"] for h in r["history"] if h.get("loss") is not None],
                 [h["loss"] for h in r["history"] if h.get("loss") is not None], marker="o", label=r["trial_id"])
    ax1.set(xlabel="evaluation", ylabel=sweep.metric, title=f"{sweep.metric} per trial")
    ax2.set(xlabel="epoch", ylabel="train loss", title="loss per trial", yscale="log")
    if sweep.metric == "fid":
        ax1.set_yscale("log")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    _save_fig(fig, out / "curves.png")

    keys = list(sweep.space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["params"][key], r["best"][sweep.metric]) for r in trials
               if r["best"] and r["best"].get(sweep.metric) is not None]
        if pts:
            xs = [p[0] for p in pts] if sweep.space[key].kind != "choice" else [str(p[0]) for p in pts]
            ax.scatter(xs, [p[1] for p in pts])
        if sweep.space[key].kind == "loguniform":
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=f"best {sweep.metric}")
    fig.tight_layout()
    _save_fig(fig, out / f"params_vs_{sweep.metric}.png")

    best = summary.get("best_trial")
    ckpt = sweep.sweep_dir / "trials" / str(best) / "checkpoints" / "model_best.pt"
    if best and ckpt.is_file():
        render_samples(ckpt, out / "best_trial", num_gifs)
    return out


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def render_samples(checkpoint: Path, out_dir: Path, k: int = 3) -> list[Path]:
    """GIFs of k test captions generated by a checkpoint (DDIM, the config's sampler settings)."""
    import torch
    from cmdm.data.humanml3d import collate, dataset_from_config
    from cmdm.evaluation.generate import load_for_evaluation
    from cmdm.skeleton import recover_from_ric
    from cmdm.viz import save_gif
    cfg, model, diffusion = load_for_evaluation(str(checkpoint), None)
    test_set = dataset_from_config(cfg.data, "test", train=False, seed=cfg.seed, progress=False)
    batch = collate([test_set[i] for i in range(min(k, len(test_set)))])
    model.eval()
    with torch.no_grad():
        cond = model.encode_batch(batch)
        x0 = diffusion.sample(model, cond, batch["mask"], sampler=cfg.evaluation.sampler,
                              steps=cfg.evaluation.ddim_steps, guidance_scale=cfg.evaluation.guidance_scale,
                              progress=False, generator=torch.Generator().manual_seed(cfg.seed))
    feats = test_set.denormalize(x0.float())
    paths = []
    for i in range(len(batch["text"])):
        n = int(batch["length"][i])
        joints = recover_from_ric(feats[i, :n].numpy().astype(np.float32))
        paths.append(save_gif(joints, out_dir / f"sample_{i}.gif", title=batch["text"][i][:60]))
    return paths


class ExportError(Exception):
    """`tune_ray.py export` cannot run: the message says which file or folder and what to do."""


def read_sweep_info(sweep_dir: Path) -> dict:
    """sweep.json of a sweep folder (what tune_ray.py wrote when the sweep started), checked."""
    info_file = sweep_dir / "sweep.json"
    if not info_file.is_file():
        raise ExportError(f"{sweep_dir} is not a sweep folder (no sweep.json). Give the folder tune_ray.py "
                          "printed as 'Sweep folder', e.g. outputs/CMDM-Demo-Sweep.")
    try:
        info = json.loads(info_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        info, problem = None, f"cannot be read as JSON ({err})"
    else:
        problem = "is not a JSON object with 'metric' and 'mode'"
    if isinstance(info, dict) and info.get("metric") in ("fid", "top1", "top2", "top3") \
            and info.get("mode") in ("min", "max"):
        return info
    raise ExportError(f"{info_file} {problem}: it must hold at least {{\"metric\": \"fid\", \"mode\": \"min\"}} "
                      "(metric one of fid, top1, top2, top3; mode min or max). tune_ray.py writes it when the sweep "
                      "starts: rerun `python tune_ray.py SWEEP.yaml --resume` with the sweep's file to rewrite it, or "
                      "restore those two keys by hand from the sweep file's metric and mode.")


def find_best_trial(sweep_dir: Path) -> tuple[Path, dict]:
    """The trial folder whose model_best.pt is best by the sweep's metric (works on unfinished sweeps).

    Each trial's record comes from `read_best`: best_metrics.json when it is the pair of the model_best.pt
    beside it (same sha256), else the record inside model_best.pt, so a crash between the two writes never
    ranks a trial by metrics its weights do not have."""
    from cmdm.run_files import read_best
    info = read_sweep_info(sweep_dir)
    metric, mode = info["metric"], info["mode"]
    candidates = []
    for checkpoints in sorted((sweep_dir / "trials").glob("*/checkpoints")):
        rec = read_best(checkpoints)
        v = rec.get(metric) if rec else None
        if isinstance(v, (int, float)) and math.isfinite(v):
            candidates.append((v if mode == "min" else -v, checkpoints.parent, rec))
    if not candidates:
        raise ExportError(f"no trial in {sweep_dir / 'trials'} has a readable model_best.pt yet (no evaluation "
                          "finished): nothing to export. Wait for the sweep's first evaluation, or resume it with "
                          "`python tune_ray.py SWEEP.yaml --resume`.")
    _, run_dir, rec = min(candidates, key=lambda c: c[0])
    return run_dir, rec


EXPORT_FILES = ("model_best.pt", "best_metrics.json", "config.yaml", "SOURCE.txt")


def export_best(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Copy the best trial's model_best.pt, best_metrics.json and config.yaml to `out`, as one unit.

    The files are written into a temp folder beside `out` that is then renamed to `out`: a failure
    half-way leaves the previous export (or nothing), never one trial's weights beside another's config.
    An existing `out` is replaced only when it is an earlier export (SOURCE.txt and nothing but the
    export's files); anything else is refused, never deleted."""
    from cmdm.run_files import best_json_text, file_sha256
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    run_dir, rec = find_best_trial(sweep_dir)
    out = Path(out).expanduser().resolve() if out else sweep_dir / "best"
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: its folder {out.parent} does not exist. Create it first, or give a "
                          "destination inside an existing folder.")
    if out.exists():
        names = {p.name for p in out.iterdir()} if out.is_dir() else None
        if names is None or (names and ("SOURCE.txt" not in names or not names <= set(EXPORT_FILES))):
            raise ExportError(f"--out {out} exists and is not an earlier export of tune_ray.py (which holds only "
                              f"{', '.join(EXPORT_FILES)}): it is not replaced. Give another --out, or move it aside.")
    for attempt in range(3):
        config = run_dir / "config.yaml"
        if not config.is_file():
            raise ExportError(f"{config} is missing: trial {run_dir.name} has weights but no config to build "
                              f"them with. Nothing was exported; restore the file, or evaluate "
                              f"{run_dir / 'checkpoints' / 'model_best.pt'} directly with python -m cmdm.evaluate.")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            shutil.copyfile(run_dir / "checkpoints" / "model_best.pt", tmp / "model_best.pt")
            sha = file_sha256(tmp / "model_best.pt")
            if sha != rec.get("checkpoint_sha256"):   # the trial wrote a new best meanwhile: rank again
                run_dir, rec = find_best_trial(sweep_dir)
                continue
            (tmp / "best_metrics.json").write_text(best_json_text(
                {k: v for k, v in rec.items() if k != "checkpoint_sha256"}, sha))
            shutil.copyfile(config, tmp / "config.yaml")
            (tmp / "SOURCE.txt").write_text(f"exported from trial {run_dir.name} of {sweep_dir}\n")
            os.chmod(tmp, 0o777 & ~current_umask())   # mkdtemp makes it 0700; mkdir would not
            _swap_in(tmp, out)
            return out
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    raise ExportError(f"the best trial's model_best.pt in {sweep_dir / 'trials'} kept changing while it was "
                      "exported (the sweep is running): nothing was exported; run the export again.")


def _swap_in(new: Path, out: Path) -> None:
    """Rename the finished folder `new` to `out`; an earlier export at `out` is set aside first and removed
    once the new one is in place (between the two renames `out` does not exist: old or nothing, never a mix)."""
    if not out.exists():
        os.rename(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rename(out, old / out.name)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old / out.name, out)    # put the earlier export back
        os.rmdir(old)
        raise
    shutil.rmtree(old)
