"""Load denoiser weights saved by this project's trainer or by afford-motion's.

Accepted inputs: a path or an already loaded object that is
  * a raw state_dict (afford-motion saves `model{step:06d}.pt` this way), or
  * a dict holding one under 'model' (this project's trainer), 'state_dict', 'model_state_dict'
    or 'ema' (tried in that order; the first that is a state dict wins).
Key prefixes of wrapped models (`module.` from DDP/torchrun, `_orig_mod.` from torch.compile)
are removed. Keys that never belong in this model's state_dict are skipped and counted as
`ignored`: frozen text / scene encoders (afford-motion's filter: text_model, clip_model,
bert_model, scene_model) and the model's non-persistent buffers (the sinusoidal tables
afford-motion saves as `timestep_embedder.pe`, `positional_encoder.pe`).

Modes:
  strict (default)  every model key present with the right shape and nothing left over, or
                    CheckpointError listing what differs;
  strict=False      missing / unexpected keys allowed, a shape mismatch is still an error;
  partial=True      load every key whose name and shape match, report the rest; for fine-tuning
                    from another architecture's checkpoint (the guide starts from a
                    `model_best.pt`), or afford-motion's weights into a model built with
                    the compact contact encoder (model.contact_model.arch=compact).
afford-motion's trans_enc state dicts (raw or `module.`-prefixed) load strictly into a model built
with model.contact_model.arch=point_transformer, use_cross_attn_pooling=false and a 512-d CLIP
text model (tests/test_pointtransformer.py).
Files are read by `cmdm.checkpoint_file.read_checkpoint` (torch.load(weights_only=True)): tensors and plain
containers only.
"""

import os
from dataclasses import dataclass, field

import torch

from cmdm.checkpoint_file import CheckpointError, read_checkpoint

IGNORED_PREFIXES = ("text_model.", "clip_model.", "bert_model.", "scene_model.", "text_encoder.")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
CONTAINER_KEYS = ("model", "state_dict", "model_state_dict", "ema")


@dataclass
class LoadReport:
    source: str
    matched: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)   # (key, checkpoint shape, model shape)
    ignored: list = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.source}: matched {len(self.matched)} | missing {len(self.missing)} | "
                f"unexpected {len(self.unexpected)} | shape-mismatched {len(self.mismatched)} | "
                f"ignored {len(self.ignored)} (frozen encoders, recomputed buffers)")

    def details(self, limit: int = 10) -> str:
        lines = [self.summary()]
        for name, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                more = f" ... (+{len(items) - limit})" if len(items) > limit else ""
                lines.append(f"  {name}: {', '.join(items[:limit])}{more}")
        for key, ck, mk in self.mismatched[:limit]:
            lines.append(f"  shape mismatch: {key} checkpoint {tuple(ck)} vs model {tuple(mk)}")
        return "\n".join(lines)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def extract_state_dict(obj, source: str = "<object>") -> dict:
    """The model state_dict inside a checkpoint object (see module docstring)."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in CONTAINER_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        shown = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(f"{source}: no model state_dict found (top-level keys: {shown or 'none'}); "
                              f"expected a state_dict or a dict with one of {CONTAINER_KEYS}")
    raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a model state_dict")


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _non_persistent_buffers(model: torch.nn.Module) -> set:
    names = set()
    for mod_name, mod in model.named_modules():
        for b in getattr(mod, "_non_persistent_buffers_set", ()):
            names.add(f"{mod_name}.{b}" if mod_name else b)
    return names


def load_model_weights(model: torch.nn.Module, path_or_state, strict: bool = True,
                       partial: bool = False, verbose: bool | None = None) -> LoadReport:
    """Load weights into `model` (see module docstring); returns a LoadReport.

    The report's counts are printed in partial mode (or when verbose=True).
    """
    report, to_load = _match_weights(model, path_or_state, strict, partial)
    getattr(model, "module", model).load_state_dict(to_load, strict=False)
    if verbose or (verbose is None and partial):
        print(report.summary())
    return report


def check_weights(model: torch.nn.Module, path_or_state, strict: bool = True, partial: bool = False) -> LoadReport:
    """What `load_model_weights` would report, or the CheckpointError it would raise, without loading:
    for CLIs that check --resume-from before they prepare data or start workers."""
    return _match_weights(model, path_or_state, strict, partial)[0]


def _match_weights(model, path_or_state, strict, partial):
    if isinstance(path_or_state, (str, os.PathLike)):
        source = os.fspath(path_or_state)
        obj = read_checkpoint(source)
    else:
        source, obj = "<state_dict>", path_or_state
    state = extract_state_dict(obj, source)

    model = getattr(model, "module", model)
    target = model.state_dict()
    skip = _non_persistent_buffers(model)
    report = LoadReport(source)
    to_load = {}
    for raw_key, value in state.items():
        key = _strip_prefixes(raw_key)
        if key.startswith(IGNORED_PREFIXES) or (key in skip and key not in target):
            report.ignored.append(raw_key)
        elif key not in target:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
        else:
            to_load[key] = value
            report.matched.append(key)
    report.missing = [k for k in target if k not in to_load and k not in {m[0] for m in report.mismatched}]

    if not partial:
        problems = report.mismatched or (strict and (report.missing or report.unexpected))
        if problems:
            hint = ("" if report.matched else " No key matched: is this a checkpoint of this model?")
            raise CheckpointError(
                f"weights do not fit the model{' (strict)' if strict else ''}.{hint}\n{report.details()}\n"
                f"Pass partial=True to load only the matching keys (e.g. fine-tuning across archs).")
    if not to_load:
        raise CheckpointError(f"{source}: no key of the checkpoint fits this model\n{report.details()}")

    return report, to_load


def dit_settings(state: dict) -> dict | None:
    """The model settings a DiT state dict (the guide's fork's `dit` / `dit_cross` layout, or
    ours) was built with, read off its keys and shapes as dotted config keys; None when the
    state dict holds no DiT. Settings its tensors cannot tell apart are left out (e.g. 'adaln'
    and 'concat' fusion share one layout)."""
    state = {_strip_prefixes(k): v for k, v in state.items()}
    if "dit_blocks.0.adaLN_modulation.1.weight" not in state or "motion_adapter.weight" not in state:
        return None
    cross = "dit_blocks.0.self_attn.in_proj_weight" in state
    pooled = "cond_embedder.contact_query" in state
    depth = len({k.split(".")[1] for k in state if k.startswith("dit_blocks.")})
    out = {"model.arch": "dit_cross" if cross and not pooled else "dit",
           "model.latent_dim": state["motion_adapter.weight"].shape[0],
           "model.num_layers": depth,
           "model.dim_feedforward": state["dit_blocks.0.mlp.fc1.weight"].shape[0]}
    if out["model.arch"] == "dit":
        if "contact_adapter.weight" in state:
            out["model.dit_use_cross_attn_pooling"] = pooled
        if pooled:
            out["model.condition_embedder.num_latents"] = state["cond_embedder.contact_query"].shape[1]
        out["model.condition_embedder.fusion_method"] = "cross_attn" if cross else "adaln"
    return out


def dit_settings_mismatch(state: dict, model_cfg) -> list:
    """`key=value` overrides that `model_cfg` needs so a DiT state dict fits it (empty when it
    fits or the state dict is no DiT). A state dict of this project's DiT from before its layout
    followed the fork (`blocks.N`, `cond_pooler`) raises CheckpointError: it cannot be mapped."""
    keys = {_strip_prefixes(k) for k in state}
    if "dit_blocks.0.adaLN_modulation.1.weight" not in keys and (
            "blocks.0.adaLN_modulation.1.weight" in keys or "cond_type_embed" in keys):
        raise CheckpointError(
            "this checkpoint is a cmdm-tune DiT written before the dit layout followed the guide's fork "
            "(its keys blocks.N / cond_pooler / cond_type_embed have no counterpart in the current model); "
            "it cannot be loaded strictly: train again, or pass --partial to load the parts that still match")
    need = dit_settings(state)
    if need is None:
        return []
    ce = model_cfg.condition_embedder
    have = {"model.arch": model_cfg.arch, "model.latent_dim": model_cfg.latent_dim,
            "model.num_layers": sum(model_cfg.num_layers), "model.dim_feedforward": model_cfg.dim_feedforward,
            "model.dit_use_cross_attn_pooling": model_cfg.dit_use_cross_attn_pooling,
            "model.condition_embedder.num_latents": ce.num_latents,
            "model.condition_embedder.fusion_method": ce.fusion_method}
    if have["model.condition_embedder.fusion_method"] == "concat":
        have["model.condition_embedder.fusion_method"] = "adaln"   # same layout
    out = []
    text_dim = {_strip_prefixes(k): v for k, v in state.items()}.get("language_adapter.weight")
    if text_dim is not None and model_cfg.text_model.name.lower() == "all-minilm-l6-v2" and text_dim.shape[1] != 384:
        out.append(f"model.text_model.name=<a text model with {text_dim.shape[1]}-d features, "
                   f"e.g. a local CLIP ViT-B/32 directory>")
    for key, value in need.items():
        if have[key] != value:
            if key == "model.num_layers":
                out.append(f"model.num_layers=[{','.join(['1'] * value)}]")
            elif isinstance(value, bool):
                out.append(f"{key}={str(value).lower()}")
            else:
                out.append(f"{key}={value}")
    return out
