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
    doctor: true                       # diagnosed trials get a remedy trial (or a list of the rules to use,
                                       # e.g. a fine-tune leaves out loss_not_decreasing)
    max_remedies: 4
    seed: 0

`load_sweep(path, overrides)` returns a `Sweep` or raises `SweepError` with one paragraph naming the file,
the key and the fix. Every trial config (base + overrides + a sampled point) is validated by
`cmdm.config` before the sweep starts, at the corners of the space.
"""
from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence


from cmdm.config import Config, ConfigError, _read_yaml, load_config, parse_override, update_config

METRICS = ("fid", "top1", "top2", "top3", "mm_dist", "loss")
KINDS = ("loguniform", "uniform", "int", "choice")
COMPARATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


class SweepError(Exception):
    """A sweep file that cannot run; the message is one paragraph naming the file, key and fix."""


@dataclass(frozen=True)
class Param:
    """One searched key: loguniform/uniform [low, high], int [low, high] (inclusive) or choice [values]."""
    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    values: tuple = ()

    def clip(self, value):
        """The nearest value this parameter allows (bounds clamped, ints rounded, nearest choice)."""
        if self.kind == "choice":
            if value in self.values:
                return value
            numeric = [v for v in self.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if isinstance(value, (int, float)) and numeric:
                return min(numeric, key=lambda v: abs(math.log(v / value)) if v > 0 and value > 0 else abs(v - value))
            return self.values[0]
        value = min(max(value, self.low), self.high)
        return int(round(value)) if self.kind == "int" else float(value)

    def contains(self, value) -> bool:
        if self.kind == "choice":
            return value in self.values
        return self.low <= value <= self.high

    def to_tune(self):
        from ray import tune
        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "int":
            return tune.randint(int(self.low), int(self.high) + 1)   # randint's upper bound is exclusive
        return tune.choice(list(self.values))

    def describe(self) -> str:
        return f"{self.kind} {list(self.values)}" if self.kind == "choice" else f"{self.kind} [{self.low:g}, {self.high:g}]"


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
    time_attr: str = "evaluations"   # evaluations | epoch
    grace_period: int = 1
    reduction_factor: float = 3
    max_t: int = 100


@dataclass
class Resources:
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    gpus_per_worker: float = 0.0


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
    doctor: bool = True
    doctor_rules: tuple[str, ...] | None = None   # the rules the doctor applies; None = all of them
    max_remedies: int = 4
    seed: int = 0
    output_root: str = "outputs"

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
        from cmdm.config import config_to_dict
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


TOP_KEYS = {f.name for f in dataclasses.fields(Sweep)} - {"path", "base_config", "space", "targets", "resources",
                                                          "scheduler", "output_root"} | {
    "space", "targets", "resources", "scheduler"}


def _err(path, key, what, fix) -> SweepError:
    return SweepError(f"{path}: `{key}` {what}. {fix}")


def _param(path, key, spec) -> Param:
    example = "e.g. `training.lr: {loguniform: [1.0e-5, 1.0e-4]}` or `task.train.batch_size: {choice: [16, 32]}`"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise _err(path, f"space.{key}", f"must be a one-entry mapping {{kind: values}} with kind one of "
                   f"{', '.join(KINDS)} (got {spec!r})", f"Write it as {example}.")
    kind, values = next(iter(spec.items()))
    if kind not in KINDS:
        raise _err(path, f"space.{key}", f"has unknown kind `{kind}`", f"Use one of {', '.join(KINDS)}: {example}.")
    if not isinstance(values, list) or not values:
        raise _err(path, f"space.{key}.{kind}", "must be a non-empty list", f"Write it as {example}.")
    if kind == "choice":
        return Param(key, kind, values=tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise _err(path, f"space.{key}.{kind}", f"must be two numbers [low, high] (got {values!r})",
                   f"Write it as {example}.")
    low, high = values
    if not low < high:
        raise _err(path, f"space.{key}.{kind}", f"needs low < high (got [{low}, {high}])", "Swap or widen the bounds.")
    if kind == "loguniform" and low <= 0:
        raise _err(path, f"space.{key}.loguniform", f"needs low > 0 (got {low})",
                   "Use a positive lower bound, or `uniform` for a range that includes 0.")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise _err(path, f"space.{key}.int", f"needs integer bounds (got {values!r})", "Use whole numbers.")
    return Param(key, kind, float(low), float(high))


def _target(path, metric, text) -> Target:
    if metric not in METRICS:
        raise _err(path, f"targets.{metric}", "is not a metric the evaluation reports",
                   f"Use one of {', '.join(METRICS)}.")
    parts = str(text).split()
    if len(parts) != 2 or parts[0] not in COMPARATORS:
        raise _err(path, f"targets.{metric}", f"must read like \"<= 0.25\" or \">= 0.43\" (got {text!r})",
                   "Quote it: `fid: \"<= 0.25\"`.")
    try:
        value = float(parts[1])
    except ValueError:
        raise _err(path, f"targets.{metric}", f"has a threshold that is not a number ({parts[1]!r})",
                   "Write a number after the comparison.") from None
    return Target(metric, parts[0], value)


def _section(path, key, raw, cls):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise _err(path, key, f"must be a mapping (got {raw!r})", f"Write it as `{key}: {{...}}`.")
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in names:
            raise _err(path, f"{key}.{k}", "is not a known key", f"Known keys: {', '.join(names)}.")
    obj = cls(**raw)
    for f in dataclasses.fields(cls):
        v = getattr(obj, f.name)
        want = type(f.default)
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            setattr(obj, f.name, float(v))
        elif not isinstance(v, want) or isinstance(v, bool) != (want is bool):
            raise _err(path, f"{key}.{f.name}", f"must be {want.__name__} (got {v!r})", f"Default: {f.default!r}.")
    return obj


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
    base_overrides = dict(raw.get("overrides") or {})
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError as exc:
            raise SweepError(f"command line: {exc}") from None
        section, _, sub = key.partition(".")
        if section == "base" and sub:
            base_overrides[sub] = value
        elif section in ("resources", "scheduler", "targets", "space") and sub:
            raw[section] = {**(raw.get(section) or {}), sub: value}
        else:
            raw[key] = value
    unknown = set(raw) - TOP_KEYS - {"overrides", "output_root"}
    if unknown:
        raise _err(path, sorted(unknown)[0], "is not a sweep key",
                   f"Known keys: {', '.join(sorted(TOP_KEYS | {'overrides', 'output_root'}))}; training keys go "
                   "under `overrides:`.")
    for required in ("name", "base", "space", "metric", "mode"):
        if required not in raw:
            raise _err(path, required, "is missing", "See sweeps/stable.yaml for a complete example.")

    base = (path.parent / str(raw["base"])).resolve()
    if not base.is_file():
        raise _err(path, "base", f"points to {base}, which does not exist",
                   "Give the training config's path relative to the sweep file (e.g. ../configs/stable.yaml).")
    if not isinstance(raw["space"], dict) or not raw["space"]:
        raise _err(path, "space", "must map dotted config keys to distributions",
                   "e.g. `space: {training.lr: {loguniform: [1.0e-5, 1.0e-4]}}`.")
    space = {k: _param(path, k, v) for k, v in raw["space"].items()}
    if raw["metric"] not in METRICS:
        raise _err(path, "metric", f"is `{raw['metric']}`", f"Use one of {', '.join(METRICS)}.")
    if raw["mode"] not in ("min", "max"):
        raise _err(path, "mode", f"is `{raw['mode']}`", "Use min (fid, mm_dist, loss) or max (top1/2/3).")
    targets = tuple(_target(path, m, t) for m, t in (raw.get("targets") or {}).items())
    resources = _section(path, "resources", raw.get("resources"), Resources)
    scheduler = _section(path, "scheduler", raw.get("scheduler"), Scheduler)
    if scheduler.time_attr not in ("evaluations", "epoch"):
        raise _err(path, "scheduler.time_attr", f"is `{scheduler.time_attr}`",
                   "Use `evaluations` (rungs counted in evaluations) or `epoch`.")
    if scheduler.grace_period < 1 or scheduler.reduction_factor <= 1 or scheduler.max_t <= scheduler.grace_period:
        raise _err(path, "scheduler", f"needs grace_period >= 1, reduction_factor > 1 and max_t > grace_period "
                   f"(got {dataclasses.asdict(scheduler)})", "Fix the numbers.")

    sweep = Sweep(name=str(raw["name"]), path=path, base=base, overrides=base_overrides, space=space,
                  base_config=None, resources=resources, scheduler=scheduler, metric=raw["metric"],
                  mode=raw["mode"], targets=targets)
    for key in ("num_samples", "max_concurrent_trials", "max_remedies", "seed"):
        if key in raw:
            v = raw[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key in ("seed", "max_remedies") else 1):
                raise _err(path, key, f"must be a whole number >= {0 if key in ('seed', 'max_remedies') else 1} "
                           f"(got {v!r})", "Fix the value.")
            setattr(sweep, key, v)
    if isinstance(raw.get("doctor"), list):          # doctor: [rule, ...] -> on, with those rules only
        from cmdm.doctor import RULES
        known = [rule.name for rule in RULES]
        unknown = [n for n in raw["doctor"] if n not in known]
        if unknown or not raw["doctor"]:
            raise _err(path, "doctor", f"names no rule or unknown rules {unknown}", f"Use true, false or a list of "
                       f"rule names from: {', '.join(known)}.")
        sweep.doctor, sweep.doctor_rules = True, tuple(raw["doctor"])
        raw = {k: v for k, v in raw.items() if k != "doctor"}
    for key in ("stop_on_targets", "priors", "doctor"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise _err(path, key, f"must be true or false (got {raw[key]!r})", "Fix the value.")
            setattr(sweep, key, raw[key])
    # Trials run in their own folders (Tune changes the working directory): every path becomes absolute here.
    sweep.output_root = str(Path(str(raw.get("output_root", sweep.output_root))).expanduser().resolve())

    # The base training config, then every corner of the space, must pass cmdm.config's checks.
    try:
        cfg = load_config(str(base))
        res = {"ray.num_workers": resources.num_workers, "ray.cpus_per_worker": resources.cpus_per_worker,
               "ray.use_gpu": resources.use_gpu, "ray.gpus_per_worker": resources.gpus_per_worker}
        cfg = update_config(cfg, {**base_overrides, **res}, source=f"{path} (overrides/resources)")
        if raw["metric"] in ("fid", "top1", "top2", "top3"):   # model_best.pt = best by the sweep's metric
            cfg = update_config(cfg, {"training.best_metric": raw["metric"]}, source=f"{path} (metric)")
        from cmdm.train import absolute_paths
        sweep.base_config = absolute_paths(cfg)
        for p in space.values():
            for v in (p.values if p.kind == "choice" else (p.low, p.high)):
                sweep.trial_config({p.key: int(v) if p.kind == "int" else v})
    except ConfigError as exc:
        raise SweepError(f"{path}: a trial config would be invalid: {exc}") from None
    if sweep.max_concurrent_trials > sweep.num_samples:
        sweep.max_concurrent_trials = sweep.num_samples
    return sweep
