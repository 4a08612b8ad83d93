"""A sweep file: which runs Ray Tune should try, and when to stop. Plain data, checked once here.

    name: CMDM-Stable-Sweep            # folder under output_root
    base: ../configs/stable.yaml       # the training config every trial starts from (relative to this file)
    overrides: {training.max_epochs: 200}
    space:                             # dotted config key -> one distribution
      training.lr: {loguniform: [1.0e-5, 1.0e-4]}
      model.dropout: {uniform: [0.05, 0.3]}
      task.train.batch_size: {choice: [16, 32]}
      model.num_heads: {int: [2, 8]}   # inclusive
    num_samples: 24
    max_concurrent_trials: 2
    resources: {num_workers: 1, cpus_per_worker: 8, use_gpu: true, gpus_per_worker: 1}
    scheduler: {time_attr: evaluations, grace_period: 1, reduction_factor: 3, max_t: 10}
    metric: fid
    mode: min
    targets: {fid: "<= 0.25", top1: ">= 0.43"}
    stop_on_targets: true
    priors: true                       # the guide's rule variants are the first trials
    doctor: {remedy: continue}         # a diagnosed trial's remedy trial continues its line from its checkpoint
                                       # (restart: the remedy starts over; off: diagnose only); `rules: [...]`
                                       # limits the rules (e.g. a fine-tune leaves out loss_not_decreasing);
                                       # `doctor: true` = continue, `false` = off, `[rules]` = continue with those
    max_remedies: 4
    seed: 0
    warm_start: [outputs/CMDM-Demo-Sweep]   # earlier sweeps: their finished trials are TPE's first observations

`load_sweep(path, overrides)` returns a `Sweep` or raises `SweepError` with one paragraph naming the file,
the key and the fix. The `resources:` and `scheduler:` sections are dataclasses whose ranges sit next to their
fields, as in cmdm/config.py. Every trial config (base + overrides + a sampled point) is validated by
`cmdm.config` before the sweep starts, at every value a trial can draw (`cmdm.tuning.space.check_points`), and
at each pair of values of two discrete keys (e.g. num_heads with latent_dim).
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import operator
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from cmdm.config import (Config, ConfigError, RayConfig, _brief, _cut, _in_range, _interval, _read_yaml,
                         absolute_paths, bounded, config_to_dict, folder_name_problem, load_config, parse_override,
                         update_config)
from cmdm.evaluation.metrics import LOWER_IS_BETTER
from cmdm.run_files import SweepFiles
from cmdm.tuning.doctor import RULES
from cmdm.tuning.space import KINDS, Param, check_points

METRICS = tuple(LOWER_IS_BETTER)
MAX_CHOICES = 1000         # a longer choice list is refused (every choice is checked)
MAX_PAIRED = 16            # values per key when pairs of discrete keys are checked together
SET_PER_TRIAL = {"name": "each trial is named by its trial id", "output_root": "trials live in <sweep folder>/trials"}
COMPARATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


class SweepError(Exception):
    """A sweep file that cannot run; the message is one paragraph naming the file, key and fix."""


@dataclass(frozen=True)
class Target:
    metric: str
    op: str
    value: float

    def met(self, metrics: Mapping) -> bool:
        v = metrics.get(self.metric)
        return v is not None and isinstance(v, (int, float)) and math.isfinite(v) and COMPARATORS[self.op](v, self.value)

    def __str__(self):
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass
class Scheduler:
    """ASHA's rungs (in `time_attr` units): the first at grace_period, each next one reduction_factor later."""
    time_attr: str = "evaluations"                 # evaluations | epoch
    grace_period: int = bounded(1, ge=1)           # no trial is stopped before this
    reduction_factor: float = bounded(3.0, gt=1)   # each rung keeps 1 / reduction_factor of the trials
    max_t: int = bounded(100, ge=1)                # the last rung (> grace_period)


def _as_ray(name: str):
    """The field of training config key ray.<name>, its default and range: a trial's config gets the value."""
    f = next(f for f in dataclasses.fields(RayConfig) if f.name == name)
    return bounded(f.default, **f.metadata)


@dataclass
class Resources:
    """What each trial's TorchTrainer gets: the ray.* keys of every trial's training config."""
    num_workers: int = _as_ray("num_workers")
    cpus_per_worker: float = _as_ray("cpus_per_worker")
    use_gpu: bool = _as_ray("use_gpu")
    gpus_per_worker: float = _as_ray("gpus_per_worker")


RESOURCE_KEYS = tuple(f"ray.{f.name}" for f in dataclasses.fields(Resources))


@dataclass
class Sweep:
    name: str
    path: Path                      # the sweep file
    base: Path                      # the base training config
    overrides: dict
    space: dict[str, Param]
    base_config: Config             # base + overrides + resources (no searched value applied)
    num_samples: int = 16
    max_concurrent_trials: int = 1
    resources: Resources = field(default_factory=Resources)
    scheduler: Scheduler = field(default_factory=Scheduler)
    metric: str = "fid"
    mode: str = "min"
    targets: tuple[Target, ...] = ()
    stop_on_targets: bool = True
    priors: bool = True
    doctor_rules: tuple[str, ...] | None = None   # the rules the doctor applies; None = all of them
    remedy: str = "continue"                      # continue | restart | off (REMEDIES): the sweep file's `doctor:`
    max_remedies: int = 4
    seed: int = 0
    output_root: str = "outputs"
    warm_start: tuple[Path, ...] = ()   # earlier sweep folders whose finished trials seed the study

    @property
    def doctor(self) -> bool:
        """Whether diagnoses become remedy trials (remedy continue or restart)."""
        return self.remedy != "off"

    @property
    def sweep_dir(self) -> Path:
        return Path(self.output_root).expanduser().resolve() / self.name

    def trial_config(self, params: Mapping[str, Any], name: str | None = None, output_root: str | None = None) -> Config:
        """The validated training config of one trial: base + overrides + resources + the sampled point."""
        updates = dict(params)
        if name is not None:
            updates["name"] = name
        if output_root is not None:
            updates["output_root"] = output_root
        return update_config(self.base_config, updates, source=f"{self.path} (trial values)")

    def base_point(self) -> dict:
        """The base config's value of every searched key, clipped into the space."""
        tree = config_to_dict(self.base_config)
        point = {}
        for key, p in self.space.items():
            node = tree
            for part in key.split("."):
                node = node[part]
            point[key] = p.clip(node)
        return point

    def targets_met(self, metrics: Mapping) -> bool:
        return bool(self.targets) and all(t.met(metrics) for t in self.targets)


TOP_KEYS = ({f.name for f in dataclasses.fields(Sweep)} - {"path", "base_config", "doctor_rules", "remedy"}) | \
    {"overrides", "doctor"}

# What the searcher does with a diagnosis: continue the trial's line from its checkpoint with the remedy applied
# (PBT's exploit/explore, driven by the guide's rules), queue the remedy as a fresh trial, or nothing.
REMEDIES = ("continue", "restart", "off")
DOCTOR_KEYS = ("remedy", "rules")
FORK_KEY = "_fork"     # the trial config entry of a remedy trial that continues another's line (search.py, trial.py)


def _err(path, key, what, fix) -> SweepError:
    return SweepError(f"{path}: `{key}` {what}. {fix}")


def _unknown(path, key, name, known, what="is not a known key") -> SweepError:
    """An unknown key `name` where `known` are allowed: the nearest known one, and the list."""
    near = difflib.get_close_matches(_cut(str(name)), sorted(known), n=1, cutoff=0.6)
    hint = f"Did you mean `{near[0]}`? " if near else ""
    return _err(path, key, what, f"{hint}Fix the key name; known keys: {', '.join(sorted(known))}.")


def _problem(exc: ConfigError) -> str:
    """A trial config's error without its own `Fix:` sentence (the sweep gives the fix for the space)."""
    return str(exc).split(" Fix: ")[0].rstrip(".")


def _doctor_mapping(value):
    """Every form of `doctor:` as the mapping form (the others unchanged, for _doctor to refuse)."""
    if value is True:
        return {}
    if value is False:
        return {"remedy": "off"}
    if isinstance(value, list):
        return {"rules": value}
    return value


def _doctor(path, value) -> tuple[str, tuple[str, ...] | None]:
    """`doctor:` -> (remedy, rules). true: continue with every rule; false: off; [rules]: continue with those;
    {remedy: continue | restart | off, rules: [...]}."""
    form = ("Use true, false, a list of rule names, or `doctor: {remedy: continue, rules: [fid_rising]}` "
            f"(remedy: {' | '.join(REMEDIES)})")
    value = _doctor_mapping(value)
    if not isinstance(value, dict):
        raise _err(path, "doctor", f"must be true or false, a list of rule names or a mapping (got {_brief(value)})",
                   form + ".")
    for key in value:
        if key not in DOCTOR_KEYS:
            raise _unknown(path, f"doctor.{_cut(str(key))}", key, DOCTOR_KEYS, "is not a doctor key")
    remedy = value.get("remedy", "continue")
    if remedy is False:       # YAML reads a bare `off` as false
        remedy = "off"
    if remedy not in REMEDIES:
        raise _err(path, "doctor.remedy", f"is {_brief(remedy)}", f"Use one of {', '.join(REMEDIES)}: continue "
                   "the diagnosed trial's line from its checkpoint with the remedy, restart the remedy as a new "
                   "trial, or diagnose only.")
    rules = value.get("rules")
    if rules is not None:
        known = [rule.name for rule in RULES]
        unknown = [n for n in rules if n not in known] if isinstance(rules, list) else [rules]
        if unknown or not rules:
            raise _err(path, "doctor", f"names no rule or unknown rules {_brief(unknown)}",
                       f"{form}; rule names: {', '.join(known)}.")
        rules = tuple(rules)
    return remedy, rules


def _check_space(sweep: Sweep) -> None:
    """Every value a trial can draw gives a valid trial config, alone and paired with another discrete key."""
    path, passing = sweep.path, {}
    for p in sweep.space.values():
        points, failed = check_points(p), []
        for v in points:
            try:
                sweep.trial_config({p.key: v})
            except ConfigError as exc:
                failed.append((v, exc))
        passing[p.key] = [v for v in points if v not in [f[0] for f in failed]]
        if not failed:
            continue
        v, exc = failed[0]
        every = p.kind == "choice" or (p.kind == "int" and len(points) == int(p.high) - int(p.low) + 1)
        bad = ", ".join(_brief(f[0], 20) for f in failed[:8]) + (", ..." if len(failed) > 8 else "")
        head = (f"{path}: `space.{p.key}` ({_cut(p.describe())}) includes {bad}, for which the trial config is "
                f"invalid ({len(failed)} of the {len(points)} values {'it can draw' if every else 'checked'}); "
                f"at {_brief(v, 20)}: {_problem(exc)}")
        if every and passing[p.key]:
            shown = _brief(passing[p.key])
            raise SweepError(f"{head}. Fix: search only the values that pass, `{p.key}: {{choice: {shown}}}`, "
                             "or change the other key the message names.")
        raise SweepError(f"{head}. Fix: {str(exc).split(' Fix: ', 1)[-1].rstrip('.')}; narrow `space.{p.key}` "
                         "to values that pass.")
    discrete = [p for p in sweep.space.values() if p.kind in ("int", "choice")]
    for a, b in itertools.combinations(discrete, 2):
        va, vb = (_spread(passing[a.key]), _spread(passing[b.key]))
        for x, y in itertools.product(va, vb):
            try:
                sweep.trial_config({a.key: x, b.key: y})
            except ConfigError as exc:
                raise SweepError(
                    f"{path}: `space.{a.key}` and `space.{b.key}` can draw {a.key}={_brief(x, 20)} with "
                    f"{b.key}={_brief(y, 20)}, and that trial config is invalid: {_problem(exc)}. Fix: search values "
                    f"that fit together (e.g. fix one of the two keys under `overrides:`, or use choice lists "
                    f"whose every pair passes).") from None


def _spread(values: list) -> list:
    """At most MAX_PAIRED of `values`, evenly spread, the ends included."""
    if len(values) <= MAX_PAIRED:
        return values
    return [values[round(i * (len(values) - 1) / (MAX_PAIRED - 1))] for i in range(MAX_PAIRED)]


def _param(path, key, spec) -> Param:
    example = "e.g. `training.lr: {loguniform: [1.0e-5, 1.0e-4]}` or `task.train.batch_size: {choice: [16, 32]}`"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise _err(path, f"space.{key}", f"must be a one-entry mapping {{kind: values}} with kind one of "
                   f"{', '.join(KINDS)} (got {_brief(spec)})", f"Write it as {example}.")
    kind, values = next(iter(spec.items()))
    if kind not in KINDS:
        near = difflib.get_close_matches(_cut(str(kind)), KINDS, n=1)
        raise _err(path, f"space.{key}", f"has unknown kind `{_cut(str(kind))}`",
                   (f"Did you mean `{near[0]}`? " if near else "") + f"Use one of {', '.join(KINDS)}: {example}.")
    if not isinstance(values, list) or not values:
        raise _err(path, f"space.{key}.{kind}", "must be a non-empty list", f"Write it as {example}.")
    if kind == "choice":
        if len(values) > MAX_CHOICES:
            raise _err(path, f"space.{key}.choice", f"has {len(values)} values, more than the {MAX_CHOICES} a sweep "
                       "checks", "Use an `int` or `uniform` range instead of listing the values.")
        return Param(key, kind, values=tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise _err(path, f"space.{key}.{kind}", f"must be two numbers [low, high] (got {_brief(values)})",
                   f"Write it as {example}.")
    if not all(math.isfinite(v) for v in values):
        raise _err(path, f"space.{key}.{kind}", f"must be two finite numbers (got {_brief(values)})",
                   "Write finite bounds, e.g. [1.0e-5, 1.0e-4].")
    low, high = values
    if not low < high:
        raise _err(path, f"space.{key}.{kind}", f"needs low < high (got [{low}, {high}])", "Swap or widen the bounds.")
    if kind == "loguniform" and low <= 0:
        raise _err(path, f"space.{key}.loguniform", f"needs low > 0 (got {low})",
                   "Use a positive lower bound, or `uniform` for a range that includes 0.")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise _err(path, f"space.{key}.int", f"needs integer bounds (got {_brief(values)})", "Use whole numbers.")
    return Param(key, kind, float(low), float(high))


def _better(metric: str) -> str:
    return "lower" if LOWER_IS_BETTER[metric] else "higher"


def _target(path, metric, text) -> Target:
    if metric not in METRICS:
        near = difflib.get_close_matches(_cut(str(metric)), METRICS, n=1)
        raise _err(path, f"targets.{_cut(str(metric))}", "is not a metric the evaluation reports",
                   (f"Did you mean `{near[0]}`? " if near else "") + f"Use one of {', '.join(METRICS)}.")
    parts = str(text).split() if isinstance(text, str) else []
    if len(parts) != 2 or parts[0] not in COMPARATORS:
        raise _err(path, f"targets.{metric}", f"must read like \"<= 0.25\" or \">= 0.43\" (got {_brief(text)})",
                   "Quote it: `fid: \"<= 0.25\"`.")
    try:
        value = float(parts[1])
    except ValueError:
        raise _err(path, f"targets.{metric}", f"has a threshold that is not a number ({_brief(parts[1])})",
                   "Write a number after the comparison.") from None
    if not math.isfinite(value):
        raise _err(path, f"targets.{metric}", f"has the threshold {parts[1]}, which is not a finite number (a "
                   "comparison with nan is never true, one with inf always or never)",
                   f"Write a finite number, e.g. `{metric}: \"{'<=' if LOWER_IS_BETTER[metric] else '>='} "
                   f"{0.25 if LOWER_IS_BETTER[metric] else 0.43}\"`.")
    want = ("<=", "<") if LOWER_IS_BETTER[metric] else (">=", ">")
    if parts[0] not in want:
        raise _err(path, f"targets.{metric}", f"reads `{parts[0]} {parts[1]}`, but {metric} is better when "
                   f"{_better(metric)}: the target would be met by poor trials (and could stop the sweep on them)",
                   f"Write `{metric}: \"{want[0]} {parts[1]}\"`.")
    if metric.startswith("top") and not 0 <= value <= 1:
        raise _err(path, f"targets.{metric}", f"has the threshold {value:g}, but R-precision lies in [0, 1]",
                   f"Give a fraction, e.g. `{metric}: \">= 0.43\"`.")
    if LOWER_IS_BETTER[metric] and metric != "loss" and value < 0:
        raise _err(path, f"targets.{metric}", f"has the threshold {value:g}, but {metric} is never negative",
                   f"Give a threshold >= 0, e.g. `{metric}: \"<= 0.25\"`.")
    return Target(metric, parts[0], value)


def _section(path, key, raw, cls):
    """The mapping `raw` of section `key` as a `cls`: known keys only, each of its field's type and range."""
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise _err(path, key, f"must be a mapping (got {_brief(raw)})", f"Write it as `{key}: {{...}}`.")
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in names:
            raise _unknown(path, f"{key}.{_cut(str(k))}", k, names)
    obj, types = cls(**raw), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        v, want = getattr(obj, f.name), types[f.name]
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
            setattr(obj, f.name, v)
        elif not isinstance(v, want) or isinstance(v, bool) != (want is bool):
            raise _err(path, f"{key}.{f.name}", f"must be {want.__name__} (got {_brief(v)})", f"Default: {f.default!r}.")
        if not _in_range(v, f.metadata):
            raise _err(path, f"{key}.{f.name}", f"= {_brief(v)} is outside the allowed range {_interval(f.metadata)}",
                       f"Set it within {_interval(f.metadata)}; default: {f.default!r}.")
    return obj


def _warm_start(path, value, metric: str, own_folder: Path) -> tuple[Path, ...]:
    """The earlier sweep folders of `warm_start:`, each checked to hold a finished sweep by the same metric
    (its trials are read when the sweep starts, cmdm.tuning.search.warm_start_trials)."""
    example = "e.g. `warm_start: [outputs/CMDM-Demo-Sweep]`"
    where = "relative paths are from the working directory, like output_root"
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _err(path, "warm_start", f"must be a list of earlier sweep folders (got {_brief(value)})",
                   f"Write it as {example}.")
    folders = []
    for entry in value:
        folder = Path(entry).expanduser().resolve()
        files = SweepFiles(folder)
        named = f"names {_cut(entry)} ({_cut(str(folder))})"
        if not folder.is_dir():
            raise _err(path, "warm_start", f"{named}, which is not a folder",
                       f"Give the folder of an earlier sweep, <output_root>/<its name> ({example}); {where}.")
        if folder == own_folder:
            raise _err(path, "warm_start", f"{named}, which is this sweep's own folder",
                       "Remove it: a sweep resumed with --resume keeps its own trials.")
        if folder in folders:
            raise _err(path, "warm_start", f"names {_cut(entry)} twice", "List each earlier sweep once.")
        if not files.sweep_json.is_file():
            raise _err(path, "warm_start", f"{named}, which holds no sweep.json: it is not a sweep folder "
                       "tune_ray.py wrote", f"Give the folder of an earlier sweep, <output_root>/<its name> ({example}).")
        if not files.summary_json.is_file():
            raise _err(path, "warm_start", f"{named}, whose sweep has not finished (it has no summary.json, which "
                       "a sweep writes when it ends)", "Finish it with `python tune_ray.py <its sweep file> --resume`, "
                       "or remove it from warm_start.")
        try:
            summary = json.loads(files.summary_json.read_text())
        except (OSError, ValueError) as exc:
            summary = exc
        if not isinstance(summary, dict) or not isinstance(summary.get("trials"), list):
            raise _err(path, "warm_start", f"{named}, whose summary.json is not a sweep summary",
                       "Remove it from warm_start, or run that sweep again to rewrite its summary.")
        if summary.get("metric") != metric:
            raise _err(path, "warm_start", f"{named}, a sweep ranked by {_brief(summary.get('metric'))}, but this "
                       f"sweep is ranked by {metric}: its values would mislead the search",
                       f"Warm-start only from sweeps with `metric: {metric}`.")
        folders.append(folder)
    return tuple(folders)


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """Read and check a sweep file; `overrides` are `key=value` on the sweep's own keys (e.g. num_samples=4)
    or, with a `base.` prefix, on the training config (e.g. base.training.max_epochs=2)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: sweep file not found. Pass an existing sweep YAML, e.g. sweeps/demo.yaml "
                         "(embedded dataset) or sweeps/stable.yaml (HumanML3D).")
    try:
        raw = _read_yaml(str(path))
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: a sweep file must be a YAML mapping (name, base, space, ...).")
    raw = dict(raw)
    if not isinstance(raw.get("overrides") or {}, dict):
        raise _err(path, "overrides", f"must be a mapping of training config keys (got {_brief(raw['overrides'])})",
                   "Write it as `overrides: {training.max_epochs: 200}`.")
    base_overrides = dict(raw.get("overrides") or {})
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError as exc:
            raise SweepError(f"command line: {exc}") from None
        section, _, sub = key.partition(".")
        if section == "base" and sub:
            base_overrides[sub] = value
        elif section == "doctor" and sub:         # doctor.remedy=restart on top of any form of `doctor:`
            doctor = _doctor_mapping(raw.get("doctor", True))
            raw["doctor"] = {**doctor, sub: value} if isinstance(doctor, dict) else doctor
        elif section in ("resources", "scheduler", "targets", "space") and sub:
            if not isinstance(raw.get(section) or {}, dict):
                raise _err(path, section, f"must be a mapping (got {_brief(raw[section])})", f"Write `{section}: {{...}}`.")
            raw[section] = {**(raw.get(section) or {}), sub: value}
        else:
            raw[key] = value
    unknown = sorted(set(raw) - TOP_KEYS, key=str)
    if unknown:
        err = _unknown(path, _cut(str(unknown[0])), unknown[0], TOP_KEYS, "is not a sweep key")
        raise SweepError(f"{err} Training config keys go under `overrides:`.")
    for required in ("name", "base", "space", "metric", "mode"):
        if required not in raw:
            raise _err(path, required, "is missing", "See sweeps/stable.yaml for a complete example.")
    name = str(raw["name"]) if isinstance(raw["name"], (str, int)) and not isinstance(raw["name"], bool) else None
    problem = "is not a name" if name is None else folder_name_problem(name)
    if problem:
        raise _err(path, "name", f"= {_brief(raw['name'])} {problem} (the sweep folder is <output_root>/<name>)",
                   "Fix: give a plain folder name, e.g. `name: CMDM-Demo-Sweep` (or name=CMDM-Demo-Sweep on the "
                   "command line); set `output_root:` to put the sweep somewhere else.")

    base = (path.parent / str(raw["base"])).resolve()
    if not base.is_file():
        raise _err(path, "base", f"points to {_cut(str(base))}, which does not exist",
                   "Give the training config's path relative to the sweep file (e.g. ../configs/stable.yaml).")
    if not isinstance(raw["space"], dict) or not raw["space"]:
        raise _err(path, "space", "must map dotted config keys to distributions",
                   "e.g. `space: {training.lr: {loguniform: [1.0e-5, 1.0e-4]}}`.")
    for key in raw["space"]:
        if not isinstance(key, str):
            raise _err(path, f"space.{_brief(key)}", "is not a dotted config key", "e.g. `training.lr`.")
        if key in SET_PER_TRIAL:
            raise _err(path, f"space.{key}", f"cannot be searched: {SET_PER_TRIAL[key]}",
                       "Remove it from `space:`; the sweep's own `name:` and `output_root:` place its folder.")
    space = {k: _param(path, k, v) for k, v in raw["space"].items()}
    for key in base_overrides:
        why = (SET_PER_TRIAL.get(key) or (f"`resources.{key[4:]}` sets it for every trial"
                                          if key in RESOURCE_KEYS else None))
        if why:
            raise _err(path, f"overrides.{key}", f"would be silently replaced: {why}",
                       f"Set `resources.{key[4:]}`." if key in RESOURCE_KEYS else
                       "Set the sweep's own `name:` / `output_root:` instead.")
    metric, mode = raw["metric"], raw["mode"]
    if not isinstance(metric, str) or metric not in METRICS:
        near = difflib.get_close_matches(_cut(str(metric)), METRICS, n=1)
        raise _err(path, "metric", f"is {_brief(metric)}", (f"Did you mean `{near[0]}`? " if near else "")
                   + f"Use one of {', '.join(METRICS)}.")
    lower = ", ".join(m for m in METRICS if LOWER_IS_BETTER[m])
    higher = ", ".join(m for m in METRICS if not LOWER_IS_BETTER[m])
    if mode not in ("min", "max"):
        raise _err(path, "mode", f"is {_brief(mode)}", f"Use min ({lower}) or max ({higher}).")
    want = "min" if LOWER_IS_BETTER[metric] else "max"
    if mode != want:
        raise _err(path, "mode", f"is `{mode}`, but {metric} is better when {_better(metric)}: the sweep would rank "
                   "its worst trial first, and ASHA would stop the best ones",
                   f"Fix: set `mode: {want}` for `metric: {metric}` (min for {lower}; max for {higher}).")
    if not isinstance(raw.get("targets") or {}, dict):
        raise _err(path, "targets", f"must be a mapping of metrics to thresholds (got {_brief(raw['targets'])})",
                   "Write it as `targets: {fid: \"<= 0.25\", top1: \">= 0.43\"}`.")
    targets = tuple(_target(path, m, t) for m, t in (raw.get("targets") or {}).items())
    resources = _section(path, "resources", raw.get("resources"), Resources)
    scheduler = _section(path, "scheduler", raw.get("scheduler"), Scheduler)
    if scheduler.time_attr not in ("evaluations", "epoch"):
        raise _err(path, "scheduler.time_attr", f"is {_brief(scheduler.time_attr)}",
                   "Use `evaluations` (rungs counted in evaluations) or `epoch`.")
    if scheduler.max_t <= scheduler.grace_period:
        raise _err(path, "scheduler.max_t", f"= {scheduler.max_t} is not above scheduler.grace_period = "
                   f"{scheduler.grace_period} (ASHA's last rung must come after its first)",
                   "Raise max_t or lower grace_period.")

    sweep = Sweep(name=name, path=path, base=base, overrides=base_overrides, space=space,
                  base_config=None, resources=resources, scheduler=scheduler, metric=metric,
                  mode=mode, targets=targets)
    for key in ("num_samples", "max_concurrent_trials", "max_remedies", "seed"):
        if key in raw:
            v = raw[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key in ("seed", "max_remedies") else 1):
                raise _err(path, key, f"must be a whole number >= {0 if key in ('seed', 'max_remedies') else 1} "
                           f"(got {_brief(v)})", "Fix the value.")
            setattr(sweep, key, v)
    if "doctor" in raw:
        sweep.remedy, sweep.doctor_rules = _doctor(path, raw["doctor"])
    for key in ("stop_on_targets", "priors"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise _err(path, key, f"must be true or false (got {_brief(raw[key])})", "Fix the value.")
            setattr(sweep, key, raw[key])
    if not isinstance(raw.get("output_root", ""), str):
        raise _err(path, "output_root", f"must be a folder path (got {_brief(raw['output_root'])})",
                   "e.g. `output_root: outputs`.")
    # Trials run in their own folders (Tune changes the working directory): every path becomes absolute here.
    sweep.output_root = str(Path(str(raw.get("output_root", sweep.output_root))).expanduser().resolve())
    if "warm_start" in raw:
        sweep.warm_start = _warm_start(path, raw["warm_start"], metric, sweep.sweep_dir)

    # The base training config, then every value the space can draw, must pass cmdm.config's checks.
    try:
        cfg = load_config(str(base))
        res = {f"ray.{k}": v for k, v in dataclasses.asdict(resources).items()}
        cfg = update_config(cfg, {**base_overrides, **res}, source=f"{path} (overrides/resources)")
        if metric in ("fid", "top1", "top2", "top3"):   # model_best.pt = best by the sweep's metric
            if base_overrides.get("training.best_metric", metric) != metric:
                raise _err(path, "overrides.training.best_metric", f"is {_brief(base_overrides['training.best_metric'])}"
                           f", but each trial keeps its model_best.pt by the sweep's metric ({metric})",
                           "Remove it from `overrides:` (or set `metric:` to it).")
            cfg = update_config(cfg, {"training.best_metric": metric}, source=f"{path} (metric)")
        sweep.base_config = absolute_paths(cfg)
    except ConfigError as exc:
        raise SweepError(f"{path}: a trial config would be invalid: {exc}") from None
    _check_space(sweep)
    if sweep.max_concurrent_trials > sweep.num_samples:
        sweep.max_concurrent_trials = sweep.num_samples
    return sweep
