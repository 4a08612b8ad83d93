"""The searcher: Optuna's TPE (through Ray Tune's OptunaSearch) + the guide's priors + remedies from the doctor.

`build_searcher(sweep, storage_url)` is the product's searcher: seeded multivariate TPE whose study lives in
SQLite, which starts from the finished trials of the sweeps named in `warm_start:` (`warm_start_trials`, added
to the study as completed trials), whose first points are the guide's stable config and its rule variants
(`prior_points`, less those a warm-start sweep already ran), and which queues a remedy point when a trial
reports a diagnosis. `random_space(sweep)` is the space of the random-search
baseline (bench/bench_sweep.py).

With `doctor: {remedy: continue}` (the default) a remedy trial continues the diagnosed trial's line, as PBT's
exploit/explore does, on Tune's own mechanisms: the searcher snapshots the parent's checkpoint (the rule's
`continue_from`: model_best.pt or last.pt) into <sweep>/forks/, the suggestion of the remedy point carries it in
the trial config's `_fork` entry (not an Optuna parameter; trial.py hands it to the training loop, which continues
from it with the child's own hyperparameters), and `ForkStopper` stops the parent, whose line goes on in the child.
A rule without a checkpoint to continue from (out of memory, a crash, a parent at its last epoch) restarts.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass

import optuna
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from cmdm.checkpoint_file import CheckpointError, read_checkpoint
from cmdm.run_files import SweepFiles
from cmdm.tuning.doctor import RULES, Rule, apply_remedy, prior_points
from cmdm.tuning.space import format_value
from cmdm.tuning.sweep_file import FORK_KEY, Sweep


class RuleGuidedSearch(OptunaSearch):
    """OptunaSearch that (1) waits for an evaluation before telling Optuna anything, and (2) turns a
    trial's diagnosis into a remedy point queued in the study, so TPE's next suggestion is the fix."""

    def __init__(self, *args, sweep_space=None, max_remedies=0, log_path=None, remedy="restart", sweep_dir=None,
                 max_epochs=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sweep_space = sweep_space or {}
        self.max_remedies = max_remedies
        self.remedies: list[dict] = []      # {trial_id, rule, from, point, fork}
        self.queued: list[dict] = []        # every point queued so far (priors included)
        self.log_path = log_path
        self.remedy = remedy                # continue | restart (sweep_file.REMEDIES; off: max_remedies is 0)
        self.sweep_dir = sweep_dir
        self.max_epochs = max_epochs          # the trials' training.max_epochs (unless the space searches it)
        self.pending_forks: list[dict] = []   # forks whose remedy point Optuna has not suggested yet
        self.forked: dict[str, str] = {}      # parent trial id -> rule: its line goes on in a remedy trial
        self.declined: set[tuple[str, str]] = set()   # (trial id, rule) whose remedy point was queued before
        self._trial_params: dict[str, dict] = {}

    def suggest(self, trial_id):
        params = super().suggest(trial_id)
        if params is not None:
            self._trial_params[trial_id] = dict(params)
            fork = next((f for f in self.pending_forks if _same_point(f["point"], params)), None)
            if fork is not None:           # the remedy point of a fork: this trial continues the parent's line
                self.pending_forks.remove(fork)
                params = {**params, FORK_KEY: {k: v for k, v in fork.items() if k != "point"}}
                print(f"[doctor] trial {trial_id} continues trial {fork['parent']} from step {fork['step']} "
                      f"({fork['rule']})", flush=True)
        return params

    def stops(self, trial_id, result) -> bool:
        """Whether this result makes the trial a parent whose line goes on in a remedy trial (ForkStopper then
        stops it). Tune asks its stopper before it tells the searcher, so the diagnosis is considered here."""
        self._consider_remedy(trial_id, result)
        return trial_id in self.forked

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
            if point is None:
                continue
            if not self.queue(point):         # a prior or another trial's remedy: it runs (or ran) anyway
                if (trial_id, name) not in self.declined:
                    self.declined.add((trial_id, name))
                    moved = ", ".join(f"{k}={format_value(v)}" for k, v in point.items() if v != params.get(k))
                    print(f"[doctor] trial {trial_id}: {name} ({rules[name].cause}); its remedy {moved} was "
                          "queued before (a prior or another trial's remedy), nothing new queued", flush=True)
                continue
            record = {"trial_id": trial_id, "rule": name, "from": params, "point": point}
            moved = ", ".join(f"{k}={format_value(v)}" for k, v in point.items() if point[k] != params.get(k))
            msg = f"[doctor] trial {trial_id}: {name} ({rules[name].cause}) -> queued {moved}"
            if self.remedy == "continue":
                fork, why = fork_checkpoint(self.sweep_dir, trial_id, rules[name],
                                            point.get("training.max_epochs", self.max_epochs))
                record["fork"] = fork
                if fork is not None:
                    changes = {k: [params.get(k), v] for k, v in point.items() if v != params.get(k)}
                    self.pending_forks.append({**fork, "changes": changes, "point": point})
                    self.forked[trial_id] = name
                    msg += (f", continuing its line from its {fork['kind']} checkpoint (step {fork['step']}, epoch "
                            f"{fork['epoch']}); trial {trial_id} is stopped")
                else:
                    msg += f", as a new trial ({why})"
            self.remedies.append(record)
            print(msg, flush=True)
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")


class ForkStopper(tune.Stopper):
    """Stops a trial once the searcher has continued its line in a remedy trial: as in PBT's exploit, the line
    goes on in the child (with the remedy), not in both. ASHA and the other stoppers are unchanged."""

    def __init__(self, searcher: RuleGuidedSearch):
        self.searcher = searcher

    def __call__(self, trial_id, result):
        return self.searcher.stops(trial_id, result)

    def stop_all(self):
        return False


def fork_checkpoint(sweep_dir, parent: str, rule: Rule, max_epochs: int | None) -> tuple[dict | None, str]:
    """The checkpoint a remedy trial continues `parent`'s line from, snapshotted now into <sweep>/forks/ (a hard
    link where it can: the parent goes on writing its own files until it is stopped), with where it stands:
    {parent, rule, kind, checkpoint, step, epoch}. None and why when there is nothing to continue from: the rule
    starts over, the parent has no checkpoint (yet), or its checkpoint is at the child's last epoch (max_epochs)."""
    if rule.continue_from is None or sweep_dir is None:
        return None, f"{rule.name} starts over"
    files, run = SweepFiles(sweep_dir), SweepFiles(sweep_dir).trial(parent)
    kind = "best" if rule.continue_from == "best" and run.best.is_file() else "last"   # no best yet: its last
    source = run.best if kind == "best" else run.last
    target = files.forks / f"{parent}-{rule.name}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        checkpoint = read_checkpoint(target)
        where = checkpoint["metrics"] if kind == "best" else checkpoint    # model_best.pt: its record says
        step, epoch = int(where["step"]), int(where["epoch"])
    except FileNotFoundError:
        return None, f"trial {parent} has no {source.name} yet"
    except (CheckpointError, KeyError, TypeError, ValueError) as exc:
        target.unlink(missing_ok=True)
        return None, f"its {source.name} cannot be read ({str(exc)[:100]})"
    if max_epochs is not None and epoch >= max_epochs:
        target.unlink()
        return None, f"its {source.name} is at epoch {epoch} of {max_epochs}: no epoch left to continue"
    return {"parent": parent, "rule": rule.name, "kind": kind, "checkpoint": str(target), "step": step,
            "epoch": epoch}, ""


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
                                log_path=str(SweepFiles(sweep.sweep_dir).remedies), remedy=sweep.remedy,
                                sweep_dir=str(sweep.sweep_dir), max_epochs=sweep.base_config.training.max_epochs)
    for trial in earlier:
        searcher.observe(trial)
    for _, point in priors:
        searcher.queue(point)
    return searcher, priors
