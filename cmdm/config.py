"""Typed configuration for CMDM: dataclasses + YAML + dotted `key=value` overrides.

A config is built in one place and checked once, here at the edge:

    defaults (the dataclasses below = the stable recipe)
      <- a YAML file that sets only the keys it wants
      <- command-line overrides `key=value`, applied in order
      -> types checked as values arrive, ranges and cross-field rules checked at the end.

Everything after `load_config` can trust the `Config` it gets. A bad value raises `ConfigError`
with one paragraph that names the file (or the command line), the dotted key, what is wrong and
how to fix it. `python -m cmdm.config CONFIG [key=value ...]` prints the resolved YAML.

Allowed ranges live next to the fields, as data (`bounded(default, ge=..., lt=...)`);
the few rules that tie two fields together are in `_check_cross_fields`.
"""

import dataclasses
import difflib
import hashlib
import json
import math
import operator
import os
import sys
import typing
from pathlib import Path
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import yaml


def bounded(default, *, ge=None, gt=None, le=None, lt=None):
    """A dataclass field whose allowed range is kept as data (for lists: the range of each entry)."""
    bounds = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=bounds)
    return field(default=default, metadata=bounds)


# --------------------------------------------------------------------------------------------
# Schema. Field names are the contract other modules read; defaults are the stable recipe.
# --------------------------------------------------------------------------------------------

@dataclass
class DataConfig:
    name: Literal["humanml3d", "synthetic"] = "humanml3d"  # which dataset reader to use
    root: str = "data/HumanML3D"                  # folder in the HumanML3D layout
    min_motion_len: int = bounded(40, ge=1)       # keep clips with min_motion_len <= T < max_motion_len
    max_motion_len: int = bounded(200, ge=1)      # (exclusive) upper length of kept clips
    max_frames: int = bounded(196, ge=1)          # pad every clip to this many frames
    unit_length: int = bounded(4, ge=1)           # crop T down to a multiple of this
    use_contacts: bool = True                     # condition on the contact (affordance) map
    contact_num_points: int = bounded(8192, ge=1)  # scene points per contact map
    contact_sigma: float = bounded(0.8, gt=0)     # width of exp(-0.5 d^2 / sigma^2), metres
    contact_joints: list[int] = bounded([0, 10, 11, 12, 20, 21], ge=0, le=21)  # joints measured
    synthetic_num_clips: int = bounded(2000, ge=1)  # clips generated when name == synthetic and root is missing
    synthetic_seed: int = bounded(0, ge=0)        # seed of the synthetic generator
    synthetic_num_points: int = bounded(1024, ge=1)  # scene points the synthetic generator writes per clip


@dataclass
class LoaderConfig:
    batch_size: int = bounded(32, ge=1)           # per Ray worker (= per GPU)
    num_workers: int = bounded(2, ge=0)           # DataLoader processes per Ray worker


@dataclass
class TaskConfig:
    """afford-motion's naming, kept so the guide's `task.train.batch_size=32` works verbatim."""
    train: LoaderConfig = field(default_factory=LoaderConfig)  # training loader
    test: LoaderConfig = field(default_factory=LoaderConfig)   # evaluation loader (real motions)


@dataclass
class TextModelConfig:
    name: str = "all-minilm-l6-v2"                # built-in offline encoder, or a local dir / hub name (CLIP, BERT)
    max_length: int = bounded(20, ge=1)           # caption tokens kept (CLIP adds sos/eos)
    output: Literal["pooled", "tokens"] = "pooled"  # one pooled vector, or per-token features + mask


@dataclass
class ConditionEmbedderConfig:
    use_cross_attn_pooling: bool = True           # pool condition tokens with learnable latents (Perceiver style)
    num_latents: int = bounded(64, ge=1)          # number of those latents
    fusion_method: Literal["adaln", "cross_attn", "concat"] = "cross_attn"  # dit: conditions only through adaLN (the fork's dit), also by cross-attention in each block, or concatenated to the motion
    contact_num_tokens: int = bounded(128, ge=1)  # tokens out of the point encoder
    contact_dim: int = bounded(256, ge=1)         # width of those tokens before the projection to latent_dim


@dataclass
class ContactModelConfig:
    # point_transformer: afford-motion's SceneMapEncoder (Point Transformer enc1..enc4, their names, so
    #   their state dicts load); data.contact_num_points / 64 tokens of width planes[-1].
    # compact: this project's small encoder (farthest points + kNN groups + one attention layer), for
    #   CPU demos; its tokens are condition_embedder.contact_num_tokens x contact_dim.
    arch: Literal["point_transformer", "compact"] = "point_transformer"
    planes: list[int] = bounded([32, 64, 128, 256], ge=1)  # point_transformer widths of enc1..enc4
    blocks: list[int] = bounded([2, 2, 2, 2], ge=1)        # layers per stage (1 transition + blocks - 1)


@dataclass
class ModelConfig:
    arch: Literal["trans_enc", "dit", "dit_cross"] = "dit"  # denoiser body: afford-motion's encoder, or the guide's fork's DiT / DiT with contact cross-attention
    latent_dim: int = bounded(512, ge=1)          # transformer width
    num_layers: list[int] = bounded([1, 1, 1, 1, 1], ge=0)  # layers per stage; total layers = sum
    num_heads: int = bounded(8, ge=1)             # attention heads (must divide latent_dim)
    dim_feedforward: int = bounded(1024, ge=1)    # MLP hidden width
    dropout: float = bounded(0.15, ge=0, lt=1)    # dropout in attention and MLP
    dit_drop_path: float = bounded(0.05, ge=0, lt=1)  # stochastic depth of DiT blocks
    dit_use_cross_attn_pooling: bool = True       # dit pools the contact tokens by learned-query cross-attention (else their mean)
    text_drop_prob: float = bounded(0.1, ge=0, lt=1)     # classifier-free dropout of the text condition
    contact_drop_prob: float = bounded(0.1, ge=0, lt=1)  # classifier-free dropout of the contact condition
    text_model: TextModelConfig = field(default_factory=TextModelConfig)  # frozen text encoder
    condition_embedder: ConditionEmbedderConfig = field(default_factory=ConditionEmbedderConfig)  # text + contact -> tokens
    contact_model: ContactModelConfig = field(default_factory=ContactModelConfig)  # contact map encoder


@dataclass
class DiffusionConfig:
    steps: int = bounded(1000, ge=1)              # diffusion timesteps T
    noise_schedule: Literal["cosine", "linear"] = "cosine"  # beta schedule
    prediction: Literal["x0", "eps"] = "x0"       # what the denoiser predicts (CMDM: x0)


@dataclass
class EMAConfig:
    enabled: bool = False                         # keep an exponential moving average of the weights
    decay: float = bounded(0.9999, gt=0, lt=1)    # EMA decay per step


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True                          # stop when best_metric stops improving
    patience: int = bounded(5, ge=1)              # evaluations without improvement before stopping
    min_delta: float = bounded(0.01, ge=0)        # smallest change that counts as an improvement


@dataclass
class TrainingConfig:
    lr: float = bounded(3e-5, gt=0)               # peak AdamW learning rate (after warmup)
    weight_decay: float = bounded(1e-4, ge=0)     # AdamW weight decay
    grad_clip: float = bounded(1.0, ge=0)         # max global grad norm; 0 = off
    warmup_steps: int = bounded(2000, ge=0)       # linear warmup from 0 to lr
    lr_scheduler: Literal["cosine", "constant", "linear"] = "cosine"  # decay after warmup
    max_epochs: int = bounded(3000, ge=1)         # epoch cap
    max_steps: int = bounded(0, ge=0)             # optimiser-step cap; 0 = no step cap
    log_every_steps: int = bounded(100, ge=1)     # one [TRAIN] log line every N steps
    eval_every_epochs: int = bounded(20, ge=1)    # run the evaluator every N epochs
    eval_num_samples: int = bounded(500, ge=1)    # test captions generated per evaluation
    save_best: bool = True                        # keep checkpoints/model_best.pt of the best evaluation
    best_metric: Literal["fid", "top1", "top2", "top3"] = "fid"  # metric that decides "best" (fid: lower)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # forward pass in; auto = bf16 on GPUs that have it, else fp32
    compile: bool = False                         # torch.compile the denoiser of the training step (slower on the CPU demo)
    ema: EMAConfig = field(default_factory=EMAConfig)  # weight averaging
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)  # stop on plateau


@dataclass
class EvaluationConfig:
    sampler: Literal["ddpm", "ddim"] = "ddim"     # ancestral DDPM (all steps) or DDIM
    ddim_steps: int = bounded(50, ge=1)           # DDIM steps (<= diffusion.steps)
    ddim_eta: float = bounded(0.0, ge=0)          # DDIM noise; 0 = deterministic
    guidance_scale: float = bounded(1.0, ge=0)    # classifier-free guidance; 1 = no guidance
    replications: int = bounded(1, ge=1)          # repeats of the whole evaluation (reported as mean +- CI)
    batch_size: int = bounded(32, ge=1)           # captions per generation batch (R-precision uses 32)
    evaluator_dir: str = "data/t2m_evaluator"     # finest.tar + meta for HumanML3D; built/cached for synthetic
    glove_dir: str = "data/glove"                 # our_vab_{data.npy,words.pkl,idx.pkl}


@dataclass
class RayConfig:
    num_workers: int = bounded(1, ge=1)           # Ray Train workers (one process each)
    use_gpu: bool = False                         # give each worker a GPU
    cpus_per_worker: float = bounded(1.0, gt=0)   # CPUs reserved per worker
    gpus_per_worker: float = bounded(0.0, ge=0)   # GPUs per worker; 0 with use_gpu -> 1 per worker
    address: str = ""                             # "" = start a local Ray for the job; "auto" or host:port to join
    max_failures: int = bounded(0, ge=-1)         # worker-failure retries from the last checkpoint; -1 = forever
    lost_node_retries: int = bounded(3, ge=0)     # reruns from last.pt when a Ray node dies (not the run's fault)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # workers over nodes


@dataclass
class Config:
    name: str = "CMDM-Stable"                     # run name -> <output_root>/<name>
    output_root: str = "outputs"                  # parent of all run folders
    seed: int = bounded(2024, ge=0)               # global seed (torch, numpy, random)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def run_dir(self) -> str:
        """Where this run writes logs/ and checkpoints/."""
        return os.path.join(self.output_root, self.name)


class ConfigError(Exception):
    """A bad configuration. The message is one paragraph: where, which key, what is wrong, the fix."""


# Flat view of the schema, built once: dotted key -> (annotated type, field metadata).
# A section (a nested dataclass) maps to its class, so "is this a section?" is one lookup.
def _walk(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, typ = prefix + f.name, hints[f.name]
        yield key, typ, f.metadata
        if dataclasses.is_dataclass(typ):
            yield from _walk(typ, key + ".")


_SCHEMA = {key: (typ, meta) for key, typ, meta in _walk(Config)}
_LEAVES = [k for k, (t, _) in _SCHEMA.items() if not dataclasses.is_dataclass(t)]


def _is_section(key: str) -> bool:
    return key == "" or dataclasses.is_dataclass(_SCHEMA[key][0])


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------

def _type_name(typ) -> str:
    if typing.get_origin(typ) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(typ))
    if typing.get_origin(typ) is list:
        return {int: "a list of integers"}[typing.get_args(typ)[0]]
    if dataclasses.is_dataclass(typ):
        return "a section"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[typ]


SHOW_CHARS = 80    # the longest value an error message prints
SHOW_DEPTH = 3     # the deepest nesting of a list or mapping it prints


def _brief(value, limit: int = SHOW_CHARS, depth: int = SHOW_DEPTH) -> str:
    """repr(value) cut to `limit` characters and `depth` levels, written piece by piece and stopped as soon as
    the limit is reached: a few hundred bytes of YAML aliases (or a pickle of shared lists) make values whose
    whole repr is gigabytes, so it is never built."""
    out, size = [], 0

    def put(text: str) -> bool:
        nonlocal size
        out.append(text[:limit + 1 - size])
        size += len(text)
        return size <= limit

    def walk(v, level: int) -> bool:
        if isinstance(v, (list, tuple, dict)):
            opening, closing = "{}" if isinstance(v, dict) else "()" if isinstance(v, tuple) else "[]"
            if level >= depth:
                return put(f"{opening}...{closing}" if len(v) else opening + closing)
            if not put(opening):
                return False
            for i, item in enumerate(v.items() if isinstance(v, dict) else v):
                if i and not put(", "):
                    return False
                if isinstance(v, dict):
                    if not (walk(item[0], level + 1) and put(": ") and walk(item[1], level + 1)):
                        return False
                elif not walk(item, level + 1):
                    return False
            return put(closing)
        if isinstance(v, str):
            return put(repr(v[:limit + 1]))
        if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 128:
            return put(f"<an integer of {v.bit_length()} bits>")   # repr of a huge int is slow, or refused
        if v is None or isinstance(v, (bool, int, float)):
            return put(repr(v))
        return put(f"<{type(v).__name__}>")

    if walk(value, 0):
        return "".join(out)
    return "".join(out)[:limit] + "..."


def _cut(text: str, limit: int = 2 * SHOW_CHARS) -> str:
    """A text from the user (a key, a parser's message) cut for an error message."""
    return text if len(text) <= limit else text[:limit] + "..."


def _show(value) -> str:
    """A value as the user wrote it, with its YAML type: `'abc' (string)`; cut to a few dozen characters."""
    if value is None:
        return "null (empty)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (boolean)"
    kind = {int: "integer", float: "number", str: "string",
            list: "list", dict: "mapping"}.get(type(value), type(value).__name__)
    return f"{_brief(value)} ({kind})"


def _example(key: str) -> str:
    """`key=<default>` for the Fix sentence, in the form a shell user would type."""
    default = _get(config_to_dict(Config()), key)
    text = json.dumps(default, separators=(",", ":")) if isinstance(default, (bool, list)) else str(default)
    return f"{key}={text}"


def _sections_keys(section: str) -> str:
    children = [k for k in _SCHEMA if k.rpartition(".")[0] == section]
    return ", ".join(children)


def _unknown_key(key: str, source: str) -> ConfigError:
    """Unknown dotted key: say if a parent is a value, else suggest the nearest valid key."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent in _SCHEMA and not _is_section(parent):
            typ = _SCHEMA[parent][0]
            return ConfigError(
                f"{source}: {parent} is a value ({_type_name(typ)}), not a section, so {key} does not "
                f"exist. Fix: set it directly, e.g. {_example(parent)}.")
    key = _cut(key)
    guess = difflib.get_close_matches(key, list(_SCHEMA), n=1, cutoff=0.6)
    if not guess:  # match the leaf name alone, e.g. `lr_schedulr` -> training.lr_scheduler
        by_leaf = {}
        for k in _SCHEMA:
            by_leaf.setdefault(k.rpartition(".")[2], k)
        leaf = difflib.get_close_matches(parts[-1], list(by_leaf), n=1, cutoff=0.6)
        guess = [by_leaf[leaf[0]]] if leaf else []
    parent = ".".join(parts[:-1])
    while parent and parent not in _SCHEMA:
        parent = parent.rpartition(".")[0]
    hint = f"did you mean {guess[0]}?" if guess else "no key has a similar name."
    where = f"the keys under {parent} are" if parent else "the top-level keys are"
    return ConfigError(f"{source}: unknown key {key}; {hint} Fix the key name; "
                       f"{where}: {_sections_keys(parent)}.")


# --------------------------------------------------------------------------------------------
# Values: type-checked as they arrive (so the error can name their source)
# --------------------------------------------------------------------------------------------

def _coerce(key: str, value, source: str, raw: str | None = None):
    """Check one leaf value against its annotated type; return it in canonical form.

    `raw` is the override text as typed: a string field takes it verbatim (so `name=2024`
    is the string "2024", not an integer), which YAML alone cannot tell.
    """
    typ = _SCHEMA[key][0]

    def bad(why=""):
        return ConfigError(f"{source}: {key} must be {_type_name(typ)}, got {_show(value)}{why}. "
                           f"Fix: give {_type_name(typ)}, e.g. {_example(key)}.")

    if isinstance(value, dict):
        raise ConfigError(f"{source}: {key} is a value ({_type_name(typ)}), not a section, so it cannot "
                          f"take the keys {_brief(list(value))[1:-1]}. Fix: set it directly, "
                          f"e.g. {_example(key)}.")
    if typing.get_origin(typ) is Literal:
        choices = typing.get_args(typ)
        if isinstance(value, str) and value in choices:
            return value
        near = difflib.get_close_matches(_cut(value), choices, n=1) if isinstance(value, str) else []
        raise ConfigError(f"{source}: {key} must be {_type_name(typ)}, got {_show(value)}"
                          + (f"; did you mean {near[0]!r}?" if near else ".")
                          + f" Fix: pick one of the choices, e.g. {key}={choices[0]}.")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if typ is float:
        # PyYAML (YAML 1.1) reads `3e-5` as a string: it wants a dot, as in `3.0e-5`.
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise bad() from None
        if isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number):
            return float(number)
        raise bad()
    if typ is str:
        if isinstance(value, str):
            return value
        if raw is not None and not isinstance(value, (list, dict)):
            return raw
        raise bad(" (quote it in YAML, e.g. '2024')")
    if typing.get_origin(typ) is list:
        item = typing.get_args(typ)[0]
        if not isinstance(value, (list, tuple)):
            raise bad()
        for i, v in enumerate(value):
            if not isinstance(v, item) or isinstance(v, bool):
                raise bad(f"; entry {i} is {_show(v)}")
        return list(value)
    raise TypeError(f"no coercion for {typ!r}")  # a schema type this module does not handle


def _get(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def _set(tree: dict, key: str, value, source: str, origin: dict, raw: str | None = None):
    """Write `value` at dotted `key` of the nested dict `tree`, after checking key and type.

    A mapping given for a section is merged key by key, so a YAML file (or an override
    like `training.ema={enabled: true}`) only changes what it names. `origin` remembers
    where each leaf was last set, for the messages of the final checks.
    """
    if key not in _SCHEMA and key != "":
        raise _unknown_key(key, source)
    if _is_section(key):
        if not isinstance(value, dict):
            what = f"{key} is a section" if key else "the top level of a config is a mapping"
            raise ConfigError(f"{source}: {what}, not a value, got {_show(value)}. Fix: set its keys "
                              f"one by one ({_sections_keys(key)}), e.g. {_example(_first_leaf(key))}.")
        for sub, v in value.items():
            if not isinstance(sub, str):
                raise ConfigError(f"{source}: key {_brief(sub)} under {key or 'the top level'} is not a name. "
                                  f"Fix: use one of {_sections_keys(key)}.")
            _set(tree, f"{key}.{sub}" if key else sub, v, source, origin)
        return
    parent, _, leaf = key.rpartition(".")
    (_get(tree, parent) if parent else tree)[leaf] = _coerce(key, value, source, raw)
    origin[key] = source


def _first_leaf(section: str) -> str:
    return next(k for k in _LEAVES if k.startswith(f"{section}." if section else ""))


# --------------------------------------------------------------------------------------------
# Final checks: ranges (data, from the fields) and the rules that tie fields together
# --------------------------------------------------------------------------------------------

def _interval(b: Mapping) -> str:
    lo = f"[{b['ge']}" if "ge" in b else f"({b['gt']}" if "gt" in b else "(-inf"
    hi = f"{b['le']}]" if "le" in b else f"{b['lt']})" if "lt" in b else "inf)"
    return f"{lo}, {hi}"


_COMPARE = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


def _in_range(v, bounds: Mapping) -> bool:
    return all(_COMPARE[name](v, limit) for name, limit in bounds.items())


def _check_ranges(tree: dict, origin: dict):
    for key in _LEAVES:
        bounds = _SCHEMA[key][1]
        if not bounds:
            continue
        value = _get(tree, key)
        for v in value if isinstance(value, list) else [value]:
            if not _in_range(v, bounds):
                what = f"has the entry {v}, which is" if isinstance(value, list) else f"= {v} is"
                raise ConfigError(f"{origin.get(key, 'defaults')}: {key} {what} outside the allowed range "
                                  f"{_interval(bounds)}. Fix: set {key} within {_interval(bounds)}, "
                                  f"e.g. {_example(key)}.")


def folder_name_problem(name: str) -> str | None:
    """Why `name` cannot be a run (or sweep) folder inside its output_root, or None when it can.

    The folder is <output_root>/<name>: an absolute name or a `..` would put it (and what the run writes or
    resumes) somewhere else, and an empty one would be output_root itself. Sub-folders (`ablation/lr`) stay
    inside and are allowed."""
    if not name.strip():
        return "is empty, so the run folder would be output_root itself"
    if "\0" in name or any(ord(c) < 32 for c in name):
        return "contains a control character"
    if os.path.isabs(name):
        return "is an absolute path, so the folder would escape output_root"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "contains `..`, so the folder would escape output_root"
    if "" in parts or "." in parts:
        return "has an empty or `.` path component"
    return None


def _check_cross_fields(cfg: Config, origin: dict):
    """Rules that tie two fields together; each names both keys and where they were set."""
    def fail(keys, problem, fix):
        where = " and ".join(dict.fromkeys(origin[k] for k in keys if k in origin)) or "defaults"
        raise ConfigError(f"{where}: {problem}. Fix: {fix}.")

    problem = folder_name_problem(cfg.name)
    if problem:
        fail(["name"], f"name = {_show(cfg.name)} {problem} (the run folder is <output_root>/<name>, "
             f"output_root = {_cut(cfg.output_root)!r})", "give a plain folder name, e.g. name=CMDM-Stable or "
             "--name CMDM-Stable; to write somewhere else, set output_root=/that/folder")
    m, d, e = cfg.model, cfg.data, cfg.evaluation
    if not m.num_layers or sum(m.num_layers) == 0:
        fail(["model.num_layers"], f"model.num_layers = {m.num_layers} gives no layers at all",
             "use at least one layer, e.g. model.num_layers=[1,1,1,1,1]")
    if m.latent_dim % m.num_heads:
        fail(["model.latent_dim", "model.num_heads"],
             f"model.latent_dim = {m.latent_dim} is not divisible by model.num_heads = {m.num_heads}",
             "make model.latent_dim a multiple of model.num_heads, e.g. 512 with 8 heads")
    if m.arch == "dit_cross" and not d.use_contacts:
        fail(["model.arch", "data.use_contacts"], "model.arch = 'dit_cross' cross-attends the contact tokens "
             "but data.use_contacts is false", "set data.use_contacts=true, or use model.arch=dit")
    if m.arch == "dit" and m.dit_use_cross_attn_pooling and d.use_contacts and m.latent_dim % 8:
        fail(["model.latent_dim", "model.dit_use_cross_attn_pooling"],
             f"model.latent_dim = {m.latent_dim} is not a multiple of 8 (the contact pooling attention has 8 heads)",
             "use a multiple of 8, e.g. model.latent_dim=512, or model.dit_use_cross_attn_pooling=false")
    if e.ddim_steps > cfg.diffusion.steps:
        fail(["evaluation.ddim_steps", "diffusion.steps"],
             f"evaluation.ddim_steps = {e.ddim_steps} exceeds diffusion.steps = {cfg.diffusion.steps}",
             "set evaluation.ddim_steps <= diffusion.steps, e.g. evaluation.ddim_steps=50")
    if d.min_motion_len >= d.max_motion_len:
        fail(["data.min_motion_len", "data.max_motion_len"],
             f"data.min_motion_len = {d.min_motion_len} is not below data.max_motion_len = {d.max_motion_len}",
             "keep data.min_motion_len < data.max_motion_len, e.g. 40 and 200")
    if d.max_frames < d.min_motion_len:
        fail(["data.max_frames", "data.min_motion_len"],
             f"data.max_frames = {d.max_frames} is shorter than data.min_motion_len = {d.min_motion_len}",
             "set data.max_frames >= data.min_motion_len, e.g. data.max_frames=196")
    if cfg.training.eval_num_samples < e.batch_size:
        fail(["training.eval_num_samples", "evaluation.batch_size"],
             f"training.eval_num_samples = {cfg.training.eval_num_samples} is smaller than one R-precision batch "
             f"(evaluation.batch_size = {e.batch_size})",
             "evaluate at least one batch, e.g. training.eval_num_samples=500 (the metrics use batches of 32)")
    cm, ce = m.contact_model, m.condition_embedder
    if d.use_contacts and cm.arch == "point_transformer":
        if len(cm.planes) != 4 or len(cm.blocks) != 4:
            fail(["model.contact_model.planes", "model.contact_model.blocks"],
                 f"model.contact_model.planes = {cm.planes} and blocks = {cm.blocks} must list 4 stages each "
                 "(the Point Transformer has enc1..enc4)", "use planes=[32,64,128,256] and blocks=[2,2,2,2] "
                 "(afford-motion's)")
        tokens = d.contact_num_points // 64
        if ce.contact_num_tokens != tokens or ce.contact_dim != cm.planes[-1]:
            fail(["model.condition_embedder.contact_num_tokens", "model.condition_embedder.contact_dim",
                  "data.contact_num_points", "model.contact_model.planes"],
                 f"the point_transformer contact encoder gives data.contact_num_points / 64 = {tokens} tokens "
                 f"of width planes[-1] = {cm.planes[-1]}, but model.condition_embedder says "
                 f"contact_num_tokens = {ce.contact_num_tokens}, contact_dim = {ce.contact_dim}",
                 f"set model.condition_embedder.contact_num_tokens={tokens} and "
                 f"model.condition_embedder.contact_dim={cm.planes[-1]}, or model.contact_model.arch=compact")
    if d.use_contacts and not d.contact_joints:
        fail(["data.contact_joints", "data.use_contacts"], "data.contact_joints is empty while "
             "data.use_contacts is true", "list joints, e.g. data.contact_joints=[0,10,11,12,20,21], "
             "or set data.use_contacts=false")


def _build(cls, tree: dict):
    hints = typing.get_type_hints(cls)
    return cls(**{name: _build(typ, tree[name]) if dataclasses.is_dataclass(typ) else tree[name]
                  for name, typ in hints.items()})


def _finish(tree: dict, origin: dict) -> Config:
    _check_ranges(tree, origin)
    cfg = _build(Config, tree)
    _check_cross_fields(cfg, origin)
    return cfg


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def _split_override(text: str) -> tuple[str, str]:
    key, sep, raw = str(text).partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"command line: {text!r} is not an override of the form key=value. "
                          f"Fix: write it as dotted.key=value, e.g. training.lr=3e-5.")
    return key, raw.strip()


def _unquote(value):
    """Strip quotes a shell left in (`model.arch="'dit'"` -> dit)."""
    while isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value


def _parse_value(raw: str):
    if raw == "":
        return ""
    try:
        return _unquote(yaml.load(raw, Loader=_Loader))
    except (yaml.YAMLError, ValueError):  # e.g. `[1,1` : keep the text, the type check will say what is wrong
        return raw


def parse_override(text: str) -> tuple[str, Any]:
    """`training.lr=3e-5` -> ("training.lr", "3e-5"): the value is read as YAML, so the guide's
    forms work as typed (`model.num_layers=[1,1,1,1,1]`, `model.arch='dit'`). Types are checked
    against the schema later, when the override is applied (a float field takes "3e-5")."""
    key, raw = _split_override(text)
    return key, _parse_value(raw)


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class _TooBigError(yaml.composer.ComposerError):
    pass


MAX_YAML_BYTES = 1 << 20     # a config or sweep file is a few KB
MAX_YAML_DEPTH = 32          # mappings and lists nested this deep at most (ours: 4)
MAX_YAML_VALUES = 10_000     # values in a file once every alias (*name) is expanded (ours: ~100)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML would silently keep the last one), nesting deeper than
    MAX_YAML_DEPTH (PyYAML's composer recurses, so a few hundred `[` would end in a RecursionError) and more than
    MAX_YAML_VALUES values with aliases expanded (a "billion laughs" file of a few hundred bytes whose value,
    walked or printed, is gigabytes). Sizes are counted as nodes are composed, one sum per node."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth, self._sizes = 0, {}

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _TooBigError(None, None, f"mappings or lists nested more than {MAX_YAML_DEPTH} levels deep",
                                   self.peek_event().start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) not in self._sizes:           # an alias returns a node already counted: reuse its size
            if isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._sizes[id(child)][1] for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._sizes[id(k)][1] + self._sizes[id(v)][1] for k, v in node.value)
            else:
                size = 1
            self._sizes[id(node)] = (node, size)
        if self._sizes[id(node)][1] > MAX_YAML_VALUES:
            raise _TooBigError(None, None, f"more than {MAX_YAML_VALUES} values once its aliases (*name) are "
                               "expanded (nested aliases multiply)", node.start_mark)
        return node

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise _DuplicateKeyError(
                    None, None, f"duplicate key {_brief(key)} (the first would be silently lost)",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(MAX_YAML_BYTES + 1)
        if len(text) > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: the file is over {MAX_YAML_BYTES // 1024} KB, far larger than any config "
                              "or sweep file (a few KB). Fix: pass the YAML config itself, e.g. configs/stable.yaml.")
        data = yaml.load(text, Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (looked in {os.path.abspath(path)}). "
                          f"Fix: pass an existing YAML file, e.g. configs/stable.yaml.") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror}). "
                          f"Fix: pass a readable YAML file, e.g. configs/stable.yaml.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (it is not UTF-8). "
                          f"Fix: pass a YAML file, e.g. configs/stable.yaml.") from None
    except ValueError as exc:   # e.g. an integer of more than 4300 digits (Python refuses to convert it)
        raise ConfigError(f"{path}: a value cannot be read ({_cut(str(exc))}). "
                          f"Fix: write numbers of a sensible size, as in configs/stable.yaml.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = f" ({exc.context})" if getattr(exc, "context", None) else ""
        fix = ("merge the two entries into one" if isinstance(exc, _DuplicateKeyError) else
               "write the values out plainly: a config needs a few levels of `key: value` and no nested aliases "
               "(&name / *name)" if isinstance(exc, _TooBigError) else
               "check that line and the one above it (indentation, a missing ':' or an unclosed quote or "
               "bracket are the usual causes)")
        label = "YAML file refused" if isinstance(exc, _TooBigError) else "YAML syntax error"
        raise ConfigError(f"{path}{at}: {label}: {_cut(what)}{_cut(context)}. Fix: {fix}.") from None
    if data is None:  # an empty file sets nothing
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, model:, "
                          f"training:, ...), got {_show(data)}. Fix: write `section:` lines with "
                          f"indented `key: value` pairs, as in configs/stable.yaml.")
    return data


def load_config(path: str | None, overrides: Sequence[str] = ()) -> Config:
    """defaults <- YAML file (only the keys it sets) <- `key=value` overrides in order; validated."""
    tree, origin = config_to_dict(Config()), {}
    if path is not None:
        _set(tree, "", _read_yaml(path), str(path), origin)
    for text in overrides:
        key, raw = _split_override(text)
        _set(tree, key, _parse_value(raw), f"command line (`{text}`)", origin, raw=_unquote(raw))
    return _finish(tree, origin)


def load_config_or_exit(path: str | None, overrides: Sequence[str] = ()) -> Config:
    """`load_config` for CLIs: a bad config prints `error: <paragraph>` and exits with code 2."""
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (a deep copy): for YAML, JSON, Ray's param_space and checkpoints."""
    return dataclasses.asdict(cfg)


def config_from_dict(d: Mapping, source: str = "<dict>") -> Config:
    """Validated Config from a (possibly partial) nested dict; unset keys take the defaults."""
    tree, origin = config_to_dict(Config()), {}
    _set(tree, "", dict(d), source, origin)
    return _finish(tree, origin)


def update_config(cfg: Config, updates: Mapping[str, Any], source: str = "<updates>") -> Config:
    """A new validated Config with dotted keys replaced, e.g. {"training.lr": 1e-4} (for sweeps)."""
    tree, origin = config_to_dict(cfg), {}
    for key, value in updates.items():
        _set(tree, key, value, source, origin)
    return _finish(tree, origin)


class _Dumper(yaml.SafeDumper):
    """Block-style YAML in schema order, with short lists inline: `num_layers: [1, 1, 1, 1, 1]`."""


_Dumper.add_representer(
    list, lambda dumper, v: dumper.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def config_to_yaml(cfg: Config) -> str:
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def save_config(cfg: Config, path: str) -> None:
    """Write the config as YAML atomically (temp file in the same folder + rename)."""
    from cmdm.atomic import atomic_write_text
    atomic_write_text(path, f"# CMDM config, config_hash {config_hash(cfg)}\n{config_to_yaml(cfg)}")


def config_hash(cfg: Config) -> str:
    """First 12 hex of the sha256 of the canonical JSON: identifies a recipe next to its checkpoint."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


USAGE = "usage: python -m cmdm.config CONFIG.yaml [key=value ...]   (prints the resolved config)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    path, overrides = (None, argv) if "=" in argv[0] else (argv[0], argv[1:])
    cfg = load_config_or_exit(path, overrides)
    sys.stdout.write(f"# config_hash {config_hash(cfg)}\n{config_to_yaml(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def absolute_paths(cfg: Config) -> Config:
    """Workers may run in another directory (or on another node): hand them absolute paths."""
    return update_config(cfg, {
        "output_root": str(Path(cfg.output_root).expanduser().resolve()),
        "data.root": str(Path(cfg.data.root).expanduser().resolve()),
        "evaluation.evaluator_dir": str(Path(cfg.evaluation.evaluator_dir).expanduser().resolve()),
        "evaluation.glove_dir": str(Path(cfg.evaluation.glove_dir).expanduser().resolve()),
    }, source="resolved paths")
