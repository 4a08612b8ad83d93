"""The searcher: Optuna's TPE (through Ray Tune's OptunaSearch) + the guide's priors + remedies from the doctor.

`build_searcher(sweep, storage_url)` is the product's searcher: seeded multivariate TPE whose study lives in
SQLite, which starts from the finished trials of the sweeps named in `warm_start:` (`warm_start_trials`, added
to the study as completed trials), whose first points are the guide's stable config and its rule variants
(`prior_points`, less those a warm-start sweep already ran), and which queues a remedy point when a trial
reports a diagnosis. `random_space(sweep)` is the space of the random-search
baseline (bench/bench_sweep.py).
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass

import optuna
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from cmdm.run_files import SweepFiles
from cmdm.tuning.doctor import RULES, apply_remedy, prior_points
from cmdm.tuning.space import format_value
from cmdm.tuning.sweep_file import Sweep


class RuleGuidedSearch(OptunaSearch):
    """OptunaSearch that (1) waits for an evaluation before telling Optuna anything, and (2) turns a
    trial's diagnosis into a remedy point queued in the study, so TPE's next suggestion is the fix."""

    def __init__(self, *args, sweep_space=None, max_remedies=0, log_path=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sweep_space = sweep_space or {}
        self.max_remedies = max_remedies
        self.remedies: list[dict] = []      # {trial_id, rule, from, point}
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

    def observe(self, trial: "EarlierTrial") -> None:
        """An earlier sweep's finished trial, told to the study as completed (with its own keys only: a trial of a
        sweep that searched fewer keys is a valid Optuna trial too)."""
        self._ot_study.add_trial(optuna.trial.create_trial(
            params=trial.params, distributions={k: self._space[k] for k in trial.params}, value=trial.value,
            user_attrs={"warm_start": trial.source}))

    def queue(self, point: dict) -> bool:
        if any(_same_point(point, q) for q in self.queued):
            return False
        self.queued.append(dict(point))
        self._ot_study.enqueue_trial(point, skip_if_exists=True)
        return True

    def _consider_remedy(self, trial_id, result):
        """Queue the remedy of each rule the trial's report names (`diagnosis`), once per trial and rule."""
        done = {(r["trial_id"], r["rule"]) for r in self.remedies}
        rules = {r.name: r for r in RULES}
        params = self._trial_params.get(trial_id)
        for name in result.get("diagnosis") or ():
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
                   + ", ".join(f"{k}={format_value(v)}" for k, v in point.items() if point[k] != params.get(k)))
            print(msg, flush=True)
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")


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


@dataclass(frozen=True)
class EarlierTrial:
    """A finished trial of an earlier sweep: its searched values and best metric, and where it came from."""
    params: dict
    value: float
    source: str          # <sweep folder>/<trial id>


def warm_start_trials(sweep: Sweep) -> tuple[list[EarlierTrial], list[str]]:
    """The finished trials of the sweeps in `sweep.warm_start` that fit this sweep's space (their searched keys
    are this sweep's or a subset of them, each value inside this sweep's range), and one note per earlier sweep
    saying what was taken and what was left out, and why. load_sweep checked each folder's summary.json."""
    trials, notes = [], []
    for folder in sweep.warm_start:
        rows = json.loads(SweepFiles(folder).summary_json.read_text())["trials"]
        taken, unfinished, misfits = [], 0, []
        for row in rows:
            value = (row.get("best") or {}).get(sweep.metric)
            if row.get("end") == "failed" or not isinstance(value, (int, float)) or not math.isfinite(value):
                unfinished += 1
                continue
            params = {k: v for k, v in (row.get("params") or {}).items() if v is not None}
            why = _misfit(params, sweep.space)
            if why:
                misfits.append(f"{row.get('trial_id')}: {why}")
                continue
            taken.append(EarlierTrial(params, float(value), f"{folder}/{row.get('trial_id')}"))
        note = f"Warm start from {folder}: {len(taken)} finished trial(s) added to the study"
        if unfinished:
            note += f"; {unfinished} without an evaluation (or failed) left out"
        if misfits:
            note += f"; {len(misfits)} outside this sweep's space left out (" + "; ".join(misfits[:3]) + \
                    (", ..." if len(misfits) > 3 else "") + ")"
        notes.append(note + ".")
        trials += taken
    return trials, notes


def _misfit(params: dict, space: dict) -> str | None:
    """Why an earlier trial's values do not fit this space (None when they do)."""
    if not params:
        return "it searched no key"
    for key, value in params.items():
        p = space.get(key)
        if p is None:
            return f"it searched {key}, which this sweep does not"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = (p.contains(value) if p.kind == "choice" else
                number and p.contains(value) and (p.kind != "int" or float(value).is_integer()))
        if not fits:
            return f"{key}={format_value(value)} is outside {p.describe()}"
    return None


def optuna_space(sweep: Sweep) -> dict:
    space = {}
    for key, p in sweep.space.items():
        if p.kind == "choice":
            space[key] = optuna.distributions.CategoricalDistribution(list(p.values))
        elif p.kind == "int":
            space[key] = optuna.distributions.IntDistribution(int(p.low), int(p.high))
        else:
            space[key] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.kind == "loguniform")
    return space


def random_space(sweep: Sweep) -> dict:
    """The space as Tune's own sampling domains, for the random-search baseline."""
    space = {}
    for key, p in sweep.space.items():
        if p.kind == "loguniform":
            space[key] = tune.loguniform(p.low, p.high)
        elif p.kind == "uniform":
            space[key] = tune.uniform(p.low, p.high)
        elif p.kind == "int":
            space[key] = tune.randint(int(p.low), int(p.high) + 1)   # randint's upper bound is exclusive
        else:
            space[key] = tune.choice(list(p.values))
    return space


def build_searcher(sweep: Sweep, storage_url: str | None, log=print):
    """The searcher and the warm-start points it queued (name, point), in the order they run. The finished
    trials of the `warm_start:` sweeps are in its study before it suggests anything; a prior one of them
    already ran is not queued again."""
    earlier, notes = warm_start_trials(sweep)
    for note in notes:
        log(note)
    priors = prior_points(sweep.base_point(), sweep.space) if sweep.priors else []
    ran = [(name, point) for name, point in priors if any(_same_point(point, t.params) for t in earlier)]
    if ran:
        log("Priors an earlier sweep already ran, not run again: " + ", ".join(name for name, _ in ran) + ".")
        priors = [(name, point) for name, point in priors if (name, point) not in ran]
    # TPE samples at random until n_startup_trials trials are complete. The warm start is better than random
    # points, so with priors TPE takes over once two of them are in; without, a few random points come first.
    # constant_liar: trials still running count as bad, so parallel suggestions do not pile onto one spot.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=sweep.seed, multivariate=True, constant_liar=sweep.max_concurrent_trials > 1,
            n_startup_trials=2 if priors else min(10, max(3, sweep.num_samples // 4)))
    searcher = RuleGuidedSearch(space=optuna_space(sweep), metric=f"best_{sweep.metric}", mode=sweep.mode,
                                sampler=sampler,
                                storage=optuna.storages.RDBStorage(storage_url) if storage_url else None,
                                study_name=sweep.name if storage_url else None,
                                sweep_space=sweep.space, max_remedies=sweep.max_remedies if sweep.doctor else 0,
                                log_path=str(SweepFiles(sweep.sweep_dir).remedies))
    for trial in earlier:
        searcher.observe(trial)
    for _, point in priors:
        searcher.queue(point)
    return searcher, priors
