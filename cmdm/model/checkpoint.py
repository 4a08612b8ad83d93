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
                    `model_best.pt`), and to load afford-motion's weights around its
                    Point-Transformer contact encoder, which this project replaces.
Files are read with `torch.load(weights_only=True)`: tensors and plain containers only.
"""

import os
import warnings
from dataclasses import dataclass, field

import torch

IGNORED_PREFIXES = ("text_model.", "clip_model.", "bert_model.", "scene_model.", "text_encoder.")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
CONTAINER_KEYS = ("model", "state_dict", "model_state_dict", "ema")


class CheckpointError(RuntimeError):
    """A file or object that cannot be loaded as this model's weights."""


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


def read_checkpoint(path) -> object:
    """torch.load(weights_only=True) on CPU, with an error that names the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with warnings.catch_warnings():  # plain pickles draw a protocol warning before failing below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001: a file that is not weights fails in the unpickler in many ways
        # (UnpicklingError, BadZipFile, EOFError, KeyError on a memo index, ...): all mean "not weights"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(". ")[0].rstrip(".")[:160]   # torch's long advice (weights_only=False) is not ours
        raise CheckpointError(
            f"checkpoint {path!r} cannot be read as PyTorch weights ({type(exc).__name__}: {first}). "
            f"Is it a truncated download or a different kind of file? Only tensors and plain "
            f"containers are accepted (weights_only=True).") from exc


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
