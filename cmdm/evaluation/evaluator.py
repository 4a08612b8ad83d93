"""The evaluator as one object: raw motions and caption tokens in, co-embeddings out.

Two sources, one class:
  * the official HumanML3D evaluator (text-to-motion's `finest.tar` + GloVe folder + its own mean/std);
  * a fitted evaluator for the synthetic set or custom data (`evaluator.pt`, written by `cmdm.evaluation.fit`).
This module is the low level both read: the class, the evaluator.pt format and the fingerprint of the data it
was fitted on, and loading either kind of saved evaluator, including the one a config asks for
(`load_evaluator(cfg)`). Loading never fits: the driver fits an evaluator for a synthetic or custom set once, before
any worker starts (`cmdm.evaluation.fit.prepare_evaluator`, called by `cmdm.prepare.prepare`), so every
evaluation of a run or a sweep is made by the same evaluator.

Motions arrive as RAW HumanML3D features (de-normalise generator output first) and are normalised
here with the evaluator's own statistics, never the dataset's Mean/Std. Then, as the reference's data
loader does, frames past each length are zeroed and clips are padded to 196 frames: the last
convolution windows of a clip see that padding, so the published numbers depend on it.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from cmdm.checkpoint_file import CheckpointError, read_checkpoint
from cmdm.evaluation.networks import EvaluatorSizes, build_encoders, load_encoders
from cmdm.evaluation.word_vectorizer import WordVocabulary, load_glove

FORMAT = "cmdm-evaluator"
FORMAT_VERSION = 1
EVALUATOR_FILE = "evaluator.pt"
OFFICIAL_HINT = (
    "Get the HumanML3D evaluator from https://github.com/EricGuo5513/text-to-motion ('Download models for "
    "HumanML3D' in its README; MDM's prepare/download_t2m_evaluators.sh fetches the same t2m/ folder): "
    "copy t2m/text_mot_match/model/finest.tar and t2m/Comp_v6_KLD01/meta/{mean,std}.npy into "
    "evaluation.evaluator_dir (or point evaluation.evaluator_dir at the unzipped checkpoints folder)."
)
# Where finest.tar and meta/{mean,std}.npy may sit under evaluator_dir: flat, or the text-to-motion download layout.
CHECKPOINT_CANDIDATES = ("finest.tar", "text_mot_match/model/finest.tar", "t2m/text_mot_match/model/finest.tar")
META_CANDIDATES = ("meta", ".", "t2m_evaluator_meta", "Comp_v6_KLD01/meta", "t2m/Comp_v6_KLD01/meta")


def _tensor(x, device, dtype=torch.float32) -> torch.Tensor:
    """numpy array, list or tensor (any device) -> tensor on `device`."""
    return (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).to(device, dtype)


class Evaluator:
    """Movement + motion + text encoders, a word-vector table and the evaluator's normalisation.

    embed_motion(raw (B, T, 263), lengths) -> (B, D) and embed_text(tokens, texts) -> (B, D), numpy float32,
    in the caller's order. `motion_forward`/`text_forward` are the differentiable versions fit.py trains.
    """

    def __init__(self, sizes: EvaluatorSizes, encoders: dict, vocab: WordVocabulary, word_vectors,
                 mean, std, device="cpu", source: str = "", info: dict | None = None):
        self.sizes, self.vocab, self.source, self.info = sizes, vocab, source, dict(info or {})
        self.device = torch.device(device)
        self.movement_encoder = encoders["movement_encoder"].to(self.device).eval()
        self.motion_encoder = encoders["motion_encoder"].to(self.device).eval()
        self.text_encoder = encoders["text_encoder"].to(self.device).eval()
        self.word_vectors = _tensor(word_vectors, self.device)
        self.mean, self.std = _tensor(mean, self.device), _tensor(std, self.device)
        if self.mean.shape != (sizes.dim_pose,) or self.std.shape != (sizes.dim_pose,):
            raise ValueError(f"evaluator mean/std have shapes {tuple(self.mean.shape)}/{tuple(self.std.shape)}; "
                             f"expected ({sizes.dim_pose},)")
        if self.word_vectors.ndim != 2 or self.word_vectors.shape[1] != sizes.dim_word:
            raise ValueError(f"word vectors have shape {tuple(self.word_vectors.shape)}; the text encoder expects "
                             f"(words, {sizes.dim_word})")
        if max(vocab.word_to_row.values()) >= len(self.word_vectors):
            raise ValueError(f"the vocabulary points past the {len(self.word_vectors)} rows of its word vectors")

    @property
    def dim(self) -> int:
        return self.sizes.dim_coemb

    def fingerprint(self) -> str:
        """sha256 of everything the embeddings depend on (encoder weights, word vectors and vocabulary, mean/std),
        whichever file it came from: two runs' numbers are comparable only when their evaluators' fingerprints are
        equal. Recorded in each run's best_metrics.json; the sweep summary checks that its trials agree."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.sha256()
            for name in ("movement_encoder", "motion_encoder", "text_encoder"):
                for key, tensor in sorted(getattr(self, name).state_dict().items()):
                    h.update(f"{name}.{key}".encode())
                    h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            for tensor in (self.word_vectors, self.mean, self.std):
                h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            h.update("\n".join(sorted(f"{w}:{i}" for w, i in self.vocab.word_to_row.items())).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # ---------------------------------------------------------------- differentiable forward passes

    def normalize(self, raw, lengths) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (B, T, dim_pose) -> normalised, zero past each length, padded to max_motion_length; lengths (CPU)."""
        x = _tensor(raw, self.device)
        lengths = _tensor(lengths, "cpu", torch.long)
        if x.ndim != 3 or x.shape[2] != self.sizes.dim_pose:
            raise ValueError(f"motions must be (B, T, {self.sizes.dim_pose}) raw features, got {tuple(x.shape)}")
        if lengths.shape != (x.shape[0],):
            raise ValueError(f"{lengths.numel()} lengths for {x.shape[0]} motions")
        if (lengths < self.sizes.unit_length).any() or (lengths > x.shape[1]).any():
            raise ValueError(f"lengths must lie in [{self.sizes.unit_length}, {x.shape[1]}] frames, "
                             f"got {lengths.min().item()}..{lengths.max().item()}")
        if x.shape[1] < self.sizes.max_motion_length:
            # The reference pads every clip to 196 frames; the last convolution windows see that padding,
            # so a clip must arrive padded the same way to get the same embedding.
            x = torch.nn.functional.pad(x, (0, 0, 0, self.sizes.max_motion_length - x.shape[1]))
        valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        x = (x - self.mean) / self.std * valid[..., None].to(self.device)
        return x, lengths

    def motion_forward(self, normed: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Normalised motions -> co-embeddings (the movement encoder does not see the foot contacts)."""
        movements = self.movement_encoder(normed[..., :self.sizes.dim_pose - self.sizes.foot_contact_dims])
        return self.motion_encoder(movements, lengths // self.sizes.unit_length)

    def text_forward(self, rows: torch.Tensor, pos_onehot: torch.Tensor, lengths: torch.Tensor,
                     word_vectors: torch.Tensor | None = None) -> torch.Tensor:
        table = self.word_vectors if word_vectors is None else word_vectors
        return self.text_encoder(table[rows.to(table.device)], pos_onehot.to(self.device), lengths)

    # ---------------------------------------------------------------- the API evaluation calls

    @torch.no_grad()
    def embed_motion(self, features_raw, lengths, batch_size: int = 256) -> np.ndarray:
        """Raw features (B, T, dim_pose) (numpy or torch) with valid lengths in frames -> (B, D) float32."""
        out = []
        for i in range(0, len(features_raw), batch_size):
            x, lens = self.normalize(features_raw[i:i + batch_size], lengths[i:i + batch_size])
            out.append(self.motion_forward(x, lens).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def embed_text(self, tokens_list, texts=None, batch_size: int = 256) -> np.ndarray:
        """Token lists (`word/POS` strings) -> (B, D) float32. `texts` (raw captions) is unused by GRU evaluators."""
        out = []
        for i in range(0, len(tokens_list), batch_size):
            rows, pos, lens = self.vocab.encode(tokens_list[i:i + batch_size], self.sizes.max_text_len)
            out.append(self.text_forward(rows, pos, lens).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


# ----------------------------------------------------------------------------
# The data an evaluator was fitted on
# ----------------------------------------------------------------------------

def data_fingerprint(root: str | Path) -> str:
    """sha256 of everything a fit reads: the split files, Mean/Std, and every listed clip's caption and
    feature file, contents included (so an edited or regenerated-differently file refits the cache; a
    byte-identical copy does not). ~0.4 s on the 2,000-clip synthetic set (sha256 runs at ~1.5 GB/s)."""
    root = Path(root)
    h = hashlib.sha256()
    ids = {}
    for split in ("train", "val", "test"):
        path = root / f"{split}.txt"
        if path.is_file():
            data = path.read_bytes()
            h.update(f"{split}:{len(data)}:".encode() + data)
            ids.update(dict.fromkeys(line.strip() for line in data.decode("utf-8", "replace").splitlines()
                                     if line.strip()))
    files = [root / "Mean.npy", root / "Std.npy"]
    files += [root / sub / f"{i}{ext}" for i in sorted(ids)
              for sub, ext in (("texts", ".txt"), ("new_joint_vecs", ".npy"))]
    for path in files:
        h.update(f"{path.relative_to(root).as_posix()}:".encode())
        if not path.is_file():
            h.update(b"-")
            continue
        with open(path, "rb") as f:
            data = f.read()
        h.update(f"{len(data)}:".encode() + data)
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------

def read_evaluator_file(path: str | Path) -> dict:
    """An evaluator file (finest.tar or evaluator.pt) read weights-only, as the dict it must be.

    The official finest.tar also holds optimiser state dicts, 'epoch' and 'iter'; those are plain
    containers and numbers, which the weights-only unpickler accepts.
    """
    ckpt = read_checkpoint(path, what="evaluator checkpoint")
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"Evaluator checkpoint {path} holds a {type(ckpt).__name__}; expected a dict.")
    return ckpt


def _first_existing(root: Path, candidates) -> Path | None:
    return next((root / c for c in candidates if (root / c).exists()), None)


def find_meta(evaluator_dir: str | Path, meta_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The official evaluator's own mean/std (263,), from meta_dir or a known place under evaluator_dir."""
    roots = [Path(meta_dir)] if meta_dir else [Path(evaluator_dir) / c for c in META_CANDIDATES]
    for root in roots:
        if (root / "mean.npy").is_file() and (root / "std.npy").is_file():
            mean, std = np.load(root / "mean.npy", allow_pickle=False), np.load(root / "std.npy", allow_pickle=False)
            if mean.shape != (263,) or std.shape != (263,) or (std <= 0).any():
                raise CheckpointError(f"{root}/mean.npy, std.npy: expected (263,) arrays with std > 0, "
                                      f"got {mean.shape} and {std.shape}.")
            return mean.astype(np.float32), std.astype(np.float32)
    raise CheckpointError(
        f"No evaluator mean.npy/std.npy found in {', '.join(str(r) for r in roots)}. These are the evaluator's own "
        f"normalisation statistics (not HumanML3D's Mean/Std.npy). {OFFICIAL_HINT} This repository also keeps a "
        "copy in tests/data/t2m_evaluator_meta/."
    )


def load_official_evaluator(evaluator_dir: str | Path, glove_dir: str | Path, device="cpu",
                            meta_dir: str | Path | None = None) -> Evaluator:
    """The HumanML3D evaluator of text-to-motion: finest.tar (strict) + GloVe vocabulary + meta mean/std."""
    evaluator_dir = Path(evaluator_dir)
    path = _first_existing(evaluator_dir, CHECKPOINT_CANDIDATES)
    if path is None:
        raise CheckpointError(
            f"No evaluator checkpoint finest.tar under {evaluator_dir} (looked for "
            f"{', '.join(CHECKPOINT_CANDIDATES)}). {OFFICIAL_HINT}"
        )
    sizes = EvaluatorSizes()
    encoders = build_encoders(sizes)
    ckpt = read_evaluator_file(path)
    load_encoders(encoders, ckpt, path)
    mean, std = find_meta(evaluator_dir, meta_dir)
    vocab, vectors = load_glove(glove_dir)
    if vectors.shape[1] != sizes.dim_word:
        raise CheckpointError(f"{glove_dir}: word vectors are {vectors.shape[1]}-d; the official evaluator reads 300-d GloVe.")
    info = {"epoch": ckpt.get("epoch"), "iter": ckpt.get("iter")}
    return Evaluator(sizes, encoders, vocab, vectors, mean, std, device, source=str(path), info=info)


def load_fitted_evaluator(path: str | Path, device="cpu", data_root: str | Path | None = None) -> Evaluator:
    """An `evaluator.pt` written by fit.py; with data_root, warns if it was fitted on other data."""
    path = Path(path)
    if path.is_dir():
        path = path / EVALUATOR_FILE
    ckpt = read_evaluator_file(path)
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fitted evaluator (no format '{FORMAT}'); build one with "
                              "`python -m cmdm.evaluation.fit --data DIR --out DIR`.")
    for key in ("sizes", "vocab", "word_vectors", "mean", "std"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: entry '{key}' is missing; re-fit the evaluator.")
    sizes = EvaluatorSizes.from_dict(ckpt["sizes"])
    encoders = build_encoders(sizes)
    load_encoders(encoders, ckpt, path)
    vocab = WordVocabulary({w: i for i, w in enumerate(ckpt["vocab"])})
    vectors = ckpt["word_vectors"]
    if tuple(vectors.shape) != (len(vocab), sizes.dim_word):
        raise CheckpointError(f"{path}: 'word_vectors' has shape {tuple(vectors.shape)}; expected ({len(vocab)}, {sizes.dim_word}).")
    if data_root is not None:
        if ckpt.get("fingerprint") != data_fingerprint(data_root):
            warnings.warn(f"{path} was fitted on data other than {data_root} (fingerprint differs); "
                          "its numbers are not comparable. Re-fit it with cmdm.evaluation.fit.", stacklevel=2)
    info = {k: ckpt.get(k) for k in ("epoch", "fingerprint", "metrics", "data_root")}
    return Evaluator(sizes, encoders, vocab, vectors, ckpt["mean"], ckpt["std"], device, source=str(path), info=info)


def load_evaluator(cfg, device="cpu") -> Evaluator:
    """The evaluator a config asks for, as the driver prepared it: the official one (evaluation.evaluator_dir +
    evaluation.glove_dir) for HumanML3D, otherwise the one fitted on data.root in evaluation.evaluator_dir."""
    ev = cfg.evaluation
    if cfg.data.name == "humanml3d":
        return load_official_evaluator(ev.evaluator_dir, ev.glove_dir, device)
    path = Path(ev.evaluator_dir) / EVALUATOR_FILE
    if not path.is_file():
        raise CheckpointError(
            f"'{path}' does not exist: no evaluator was fitted for {cfg.data.root} in evaluation.evaluator_dir. "
            "The driver fits it before any worker starts (train_ray.py, tune_ray.py and python -m cmdm.evaluate do); "
            "a worker never fits its own. On a Ray cluster, put evaluation.evaluator_dir on storage every node "
            "sees (with output_root), or run the command once on each node's copy first.")
    return load_fitted_evaluator(path, device)


__all__ = ["Evaluator", "load_evaluator", "load_official_evaluator", "load_fitted_evaluator", "read_evaluator_file", "find_meta",
           "data_fingerprint", "EVALUATOR_FILE"]
