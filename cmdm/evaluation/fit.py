"""Fit a text-motion evaluator on any HumanML3D-layout dataset (the synthetic set, custom data).

    python -m cmdm.evaluation.fit --data data/synthetic --out data/synthetic_evaluator [--epochs 10 --seed 0]

`prepare_evaluator(cfg)` is the driver's step: for a synthetic or custom set, the evaluator fitted here on data.root
(`ensure_evaluator` fits it once, caches it, and refits when the data changes); workers only load it.

Same networks and loss as the HumanML3D evaluator of Guo et al. 2022 (plus jittered negatives, below), a
quarter of its width, two phases:

  1. Movement autoencoder, as the reference (which trains its movement encoder inside a motion
     autoencoder before the matching stage, then freezes it): the convolutional movement encoder
     and a throwaway decoder reconstruct 64-frame windows for a few epochs. Why keep it: frozen
     features trained to reconstruct the motion summarise all of it, not only what captions talk
     about; measured on the synthetic set it leaves R-precision unchanged (Top-1 0.720 vs 0.719 with
     a frozen random encoder) and doubles FID against noise motions (124 vs 54), for ~15 s.
     Because the encoder is frozen afterwards, its features for a few augmented crops per clip are
     computed once and the matching epochs only run the two GRUs (3-4x faster on a CPU).
  2. Matching: motion (bi-GRU over movements) and text (bi-GRU over words) encoders trained with
     the reference's hinge loss: d(t_i, m_i)^2 + max(0, margin - d(t_i, m_{i+s}))^2, margin 10,
     negatives from the batch shifted by s in [1, B-1]. (The reference draws s in [0, B-1], so a
     "negative" is sometimes the positive itself; we skip 0. We also drop negative pairs whose two
     captions are the same sentence: templated data repeats captions, and those are not negatives.)
     The model of the epoch with the lowest validation loss is kept, as the reference's `finest`.
     Jittered negatives (not in the reference; FitConfig.jitter_weight=0 turns them off): each caption
     is also pushed to distance >= jitter_margin * sqrt(sigma / 0.1 m) from its own clip with i.i.d.
     joint jitter (sigma log-uniform in 0.005-0.1 m, added in joint space and converted back with
     extract_features); the margin grows with sigma so that more jitter lands further away (with one
     margin for all, 3 cm and 10 cm of jitter landed in the same place: FID 170 vs 167). The
     reference's loss alone learns only what captions tell apart, so its embedding barely moved under
     1 cm of jitter (FID x1.09, see the sanity table); a metric that picks models must see it.
     The network layout is unchanged, so the official weights still load.

Text side without GloVe: a word embedding learned over the training captions' vocabulary (with
the reference's sos/eos/unk and VIP-POS rules), fed to the same bi-GRU text encoder. We do not use
a frozen sentence encoder: the generator conditions on MiniLM, and an evaluator sharing the
generator's text encoder would reward the generator for that encoder's quirks, not for the motion.

The result, `evaluator.pt` (written atomically), holds the three encoders' state dicts, the sizes,
the vocabulary and its learned vectors, the evaluator's own mean/std (per feature group, as
HumanML3D computes them), a fingerprint of the data, the measured quality table on the test split, and
the sanity table of cmdm.evaluation.sanity (FID/Top-1 of corrupted test motions), which the fit prints.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cmdm.atomic import atomic_torch_save
from cmdm.data.humanml3d import MotionDataset
from cmdm.evaluation import metrics, sanity
from cmdm.evaluation.evaluator import (EVALUATOR_FILE, FORMAT, FORMAT_VERSION, Evaluator, data_fingerprint,
                                       read_evaluator_file)
from cmdm.evaluation.networks import EvaluatorSizes, MovementConvDecoder, build_encoders
from cmdm.evaluation.word_vectorizer import WordVocabulary

# Widths of the fitted evaluator: a quarter of the official one, so it trains in minutes on a CPU.
SMALL_SIZES = EvaluatorSizes(dim_movement_enc_hidden=128, dim_movement_latent=128, dim_motion_hidden=256,
                             dim_word=128, dim_text_hidden=256, dim_coemb=128)
# HumanML3D's feature groups (root yaw vel, root xz vel, root y, ric 21x3, rot 21x6, vel 22x3, foot 4):
# one std per group keeps near-constant single dims from being blown up.
# Version of how the evaluator is fitted: ensure_evaluator refits a cached evaluator.pt of another version.
# 2: jittered negatives (FitConfig.jitter_*) and the sanity table (cmdm.evaluation.sanity).
# 3: the jitter margin grows with sigma (sqrt(sigma / max)), so more jitter lands further away.
FIT_VERSION = 3
FEATURE_GROUPS = ((0, 1), (1, 3), (3, 4), (4, 67), (67, 193), (193, 259), (259, 263))


@dataclass
class FitConfig:
    epochs: int = 10                 # matching epochs
    ae_epochs: int = 3               # movement-autoencoder epochs (0: keep the random movement encoder)
    ae_window: int = 64              # frames per autoencoder window
    batch_size: int = 32             # as the reference (and as R-precision's batches)
    lr: float = 1e-3
    ae_lr: float = 1e-3
    margin: float = 10.0             # hinge margin of the reference
    grad_clip: float = 0.5           # as the reference
    crops_per_clip: int = 3          # augmented crops per clip whose movement features are pre-computed
    negatives: str = "shift"         # 'shift' (reference: one shifted batch) or 'all' (every other clip of the batch)
    # Jittered negatives: caption i is also pushed away from its own clip with joint jitter (sigma log-uniform
    # in jitter_range metres, applied in joint space), so the co-embedding moves when a motion visibly shakes.
    jitter_weight: float = 1.0       # weight of that hinge term (0: the reference's loss only)
    jitter_margin: float = 10.0      # its margin at sigma = jitter_range[1]: d(t_i, jittered m_i) >= margin * sqrt(sigma / max)
    jitter_range: tuple = (0.005, 0.1)
    threads: int = 0                 # torch CPU threads while fitting; 0 = leave torch's setting
    seed: int = 0
    min_motion_len: int = 40
    max_motion_len: int = 200
    sizes: dict = field(default_factory=lambda: SMALL_SIZES.to_dict())


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

def group_mean_std(motions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dim mean; std averaged within each HumanML3D feature group (floored), as HumanML3D's Std.npy."""
    cat = np.concatenate(motions).astype(np.float64)
    mean, std = cat.mean(0), cat.std(0)
    if cat.shape[1] == 263:
        for a, b in FEATURE_GROUPS:
            std[a:b] = std[a:b].mean()
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


class Clips:
    """One split: (sub-)clips as HumanML3D's reader makes them, every caption pre-encoded."""

    def __init__(self, root, split, vocab: WordVocabulary | None, cfg: FitConfig, progress: bool):
        ds = MotionDataset(root, split, min_motion_len=cfg.min_motion_len, max_motion_len=cfg.max_motion_len,
                           use_contacts=False, train=False, progress=progress)
        self.motions = [e.motion for e in ds.entries]
        self.captions = [list(e.captions) for e in ds.entries]
        if vocab is None:
            vocab = WordVocabulary.from_captions(c.tokens for caps in self.captions for c in caps)
        self.vocab = vocab
        max_text_len = EvaluatorSizes.from_dict(cfg.sizes).max_text_len
        rows, pos, lens = vocab.encode([c.tokens for caps in self.captions for c in caps], max_text_len)
        self.cap_rows, self.cap_pos, self.cap_lens = rows, pos, lens
        self.cap_text = [c.text for caps in self.captions for c in caps]
        first = np.cumsum([0] + [len(c) for c in self.captions])
        self.cap_index = [list(range(first[i], first[i + 1])) for i in range(len(self.captions))]

    def __len__(self):
        return len(self.motions)

    def crops(self, rng: np.random.Generator | None, unit: int, max_frames: int):
        """One crop per clip: (raw motion, length). rng=None: from frame 0, the longest multiple of unit.

        With rng, the reference's augmentation: 2/3 of the time the longest multiple of unit, 1/3 one
        unit shorter, at a random offset.
        """
        out = []
        for m in self.motions:
            n = min(len(m), max_frames) // unit
            start = 0
            if rng is not None:
                n -= int(rng.random() < 1 / 3 and n > 1)
                start = int(rng.integers(0, len(m) - n * unit + 1))
            out.append((m[start:start + n * unit], n * unit))
        return out

    def captions_of(self, idx, rng: np.random.Generator | None):
        """Caption tensors and texts: a random caption per clip, or the first one (rng=None)."""
        caps = torch.tensor([self.cap_index[i][rng.integers(len(self.cap_index[i]))] if rng is not None
                             else self.cap_index[i][0] for i in idx])
        return self.cap_rows[caps], self.cap_pos[caps], self.cap_lens[caps], [self.cap_text[c] for c in caps.tolist()]


def pad_stack(crops) -> tuple[np.ndarray, np.ndarray]:
    """[(motion (T_i, C), length)] -> zero-padded (N, max T, C) float32 and lengths (N,)."""
    lengths = np.array([n for _, n in crops])
    out = np.zeros((len(crops), max(len(m) for m, _ in crops), crops[0][0].shape[1]), np.float32)
    for j, (m, _) in enumerate(crops):
        out[j, :len(m)] = m
    return out, lengths


@torch.no_grad()
def movement_bank(ev: Evaluator, crops, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen movement features of each crop, computed once (N, T/4, C), and lengths in movement steps."""
    feats, steps = [], []
    for i in range(0, len(crops), batch_size):
        raw, lengths = pad_stack(crops[i:i + batch_size])
        x, lengths = ev.normalize(raw, lengths)
        feats.append(ev.movement_encoder(x[..., :ev.sizes.dim_pose - ev.sizes.foot_contact_dims]).cpu())
        steps.append(lengths // ev.sizes.unit_length)
    width = max(f.shape[1] for f in feats)
    feats = [torch.nn.functional.pad(f, (0, 0, 0, width - f.shape[1])) for f in feats]
    return torch.cat(feats), torch.cat(steps)


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------

def matching_loss(text_emb, motion_emb, texts, margin: float, rng: np.random.Generator, negatives: str = "shift"):
    """Hinge loss of the reference; a negative sharing its anchor's caption is ignored.

    negatives='shift': caption i against motion i+s, one random s in [1, B-1] per batch (the reference);
    'all': against every other motion of the batch (B-1 negatives per caption instead of 1).
    """
    b = len(text_emb)
    pos = (text_emb - motion_emb).pow(2).sum(-1)
    if negatives == "all":
        dist = torch.cdist(text_emb, motion_emb)
        is_neg = torch.tensor([[ti != tj for tj in texts] for ti in texts], dtype=text_emb.dtype)
        neg = (margin - dist).clamp(min=0).pow(2) * is_neg
    else:
        shift = int(rng.integers(1, b)) if b > 1 else 0
        idx = (torch.arange(b) + shift) % b
        neg_d = F.pairwise_distance(text_emb, motion_emb[idx])
        is_neg = torch.tensor([texts[i] != texts[j] for i, j in enumerate(idx.tolist())], dtype=text_emb.dtype)
        neg = (margin - neg_d).clamp(min=0).pow(2) * is_neg
    return pos.mean(), neg.sum() / is_neg.sum().clamp(min=1)


def _pretrain_movement(ev: Evaluator, train: Clips, cfg: FitConfig, rng, progress: bool):
    """Movement encoder + a throwaway decoder reconstruct random windows (L1), then the encoder is frozen."""
    s = ev.sizes
    n_in = s.dim_pose - s.foot_contact_dims
    decoder = MovementConvDecoder(s.dim_movement_latent, s.dim_movement_enc_hidden, n_in)
    opt = torch.optim.Adam(list(ev.movement_encoder.parameters()) + list(decoder.parameters()), lr=cfg.ae_lr)
    win = max(s.unit_length, cfg.ae_window // s.unit_length * s.unit_length)
    mean, std = ev.mean.cpu().numpy()[:n_in], ev.std.cpu().numpy()[:n_in]
    normed = [((m[:, :n_in] - mean) / std).astype(np.float32) for m in train.motions]
    steps = max(1, len(normed) // cfg.batch_size)
    ev.movement_encoder.train()
    bar = tqdm(range(cfg.ae_epochs), desc="movement autoencoder", disable=not progress, leave=False)
    for _ in bar:
        total = 0.0
        for _ in range(steps):
            x = np.zeros((cfg.batch_size, win, n_in), np.float32)
            for j, i in enumerate(rng.integers(0, len(normed), cfg.batch_size)):
                w = min(win, len(normed[i]))
                start = rng.integers(0, len(normed[i]) - w + 1)
                x[j, :w] = normed[i][start:start + w]
            x = torch.from_numpy(x).to(ev.device)
            loss = F.l1_loss(decoder(ev.movement_encoder(x)), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        bar.set_postfix(l1=f"{total / steps:.4f}")
    ev.movement_encoder.eval()
    ev.movement_encoder.requires_grad_(False)


def _run_epoch(ev, clips, banks, word_emb, opt, cfg, rng, train: bool, jitter_banks=None):
    """One pass over a split in batches (drop_last); each clip uses one of its pre-computed crops."""
    order = rng.permutation(len(clips))
    feats, steps = banks
    n_batches = len(order) // cfg.batch_size
    totals = np.zeros(3)
    for b in range(n_batches):
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        variant = torch.from_numpy(rng.integers(0, feats.shape[1], len(idx)))
        idx_t = torch.from_numpy(idx)
        mv, m_steps = feats[idx_t, variant].to(ev.device), steps[idx_t, variant]
        rows, pos, lens, texts = clips.captions_of(idx, rng)
        with torch.set_grad_enabled(train):
            m = ev.motion_encoder(mv, m_steps)
            t = ev.text_forward(rows, pos, lens, word_vectors=word_emb.weight)
            lp, ln = matching_loss(t, m, texts, cfg.margin, rng, cfg.negatives)
            lj = torch.zeros(())
            if jitter_banks is not None:
                jv = torch.from_numpy(rng.integers(0, jitter_banks[0].shape[1], len(idx)))
                mj = ev.motion_encoder(jitter_banks[0][idx_t, jv].to(ev.device), jitter_banks[1][idx_t, jv])
                margin = jitter_banks[2][idx_t, jv].to(ev.device)          # grows with the crop's sigma
                lj = (margin - (t - mj).pow(2).sum(-1).clamp(min=1e-12).sqrt()).clamp(min=0).pow(2).mean()
            loss = lp + ln + cfg.jitter_weight * lj
        if train:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
            opt.step()
        totals += (lp.item(), ln.item(), cfg.jitter_weight * lj.item())
    return totals / max(1, n_batches)


def _banks(ev: Evaluator, clips: Clips, variants: int, rng):
    """`variants` augmented crops per clip -> movement features (N, V, T/4, C) and steps (N, V)."""
    s = ev.sizes
    per = [movement_bank(ev, clips.crops(rng, s.unit_length, s.max_motion_length)) for _ in range(variants)]
    width = max(f.shape[1] for f, _ in per)
    feats = torch.stack([torch.nn.functional.pad(f, (0, 0, 0, width - f.shape[1])) for f, _ in per], 1)
    return feats, torch.stack([s for _, s in per], 1)


def _jitter_banks(ev: Evaluator, clips: Clips, variants: int, cfg: FitConfig, rng):
    """Like _banks, each crop with joint jitter of a log-uniform sigma in cfg.jitter_range (metres); also
    returns each crop's margin (N, V), cfg.jitter_margin * sqrt(sigma / jitter_range[1])."""
    s = ev.sizes
    lo, hi = np.log(cfg.jitter_range[0]), np.log(cfg.jitter_range[1])
    per, sigmas = [], []
    for _ in range(variants):
        crops = clips.crops(rng, s.unit_length, s.max_motion_length)
        sigma = np.exp(rng.uniform(lo, hi, len(crops)))
        per.append(movement_bank(ev, [(sanity.corrupt_jitter(m, rng, float(g)), n) for (m, n), g in zip(crops, sigma)]))
        sigmas.append(sigma)
    width = max(f.shape[1] for f, _ in per)
    feats = torch.stack([torch.nn.functional.pad(f, (0, 0, 0, width - f.shape[1])) for f, _ in per], 1)
    margins = cfg.jitter_margin * np.sqrt(np.stack(sigmas, 1) / cfg.jitter_range[1])
    return feats, torch.stack([s for _, s in per], 1), torch.from_numpy(margins.astype(np.float32))


def embed_clips(ev: Evaluator, clips: Clips):
    """Deterministic embeddings (first caption; clip from frame 0, cropped to unit length) of a split."""
    raw, lengths = pad_stack(clips.crops(None, ev.sizes.unit_length, ev.sizes.max_motion_length))
    rows, pos, lens, _ = clips.captions_of(range(len(clips)), None)
    with torch.no_grad():
        t = ev.text_forward(rows, pos, lens).cpu().numpy()
    return t, ev.embed_motion(raw, lengths), raw, lengths


def quality_table(ev: Evaluator, train: Clips, test: Clips, seed: int = 0, shuffles: int = 10) -> dict:
    """The evaluator's own check on real data: R-precision of real test pairs and FID against controls.

    R-precision is averaged over `shuffles` random batchings of the test clips (which 32 clips share
    a batch changes the score). FID compares real test motions with: real train motions (should be
    small), the same test motions with jitter (+ 0.1 std of white noise per frame: a mild artefact no
    caption mentions), with their frames shuffled in time, and Gaussian noise motions
    (mean + std * N(0, 1), i.e. white noise in the evaluator's normalised space).
    """
    rng = np.random.default_rng(seed)
    t_test, m_test, raw, lengths = embed_clips(ev, test)
    m_train = embed_clips(ev, train)[1]
    rows = []
    for _ in range(shuffles):
        p = rng.permutation(len(t_test))
        rows.append(metrics.r_precision(t_test[p], m_test[p], batch_size=32))
    table = {k: float(np.mean([r[k] for r in rows])) for k in ("top1", "top2", "top3", "mm_dist")}
    mean, std = ev.mean.cpu().numpy(), ev.std.cpu().numpy()
    shuffled = raw.copy()
    for j, n in enumerate(lengths.tolist()):
        shuffled[j, :n] = raw[j, rng.permutation(n)]
    noise = (mean + std * rng.standard_normal(raw.shape)).astype(np.float32)
    table["fid_test_vs_train"] = metrics.fid(m_test, m_train)
    jitter = (raw + 0.1 * std * rng.standard_normal(raw.shape)).astype(np.float32)
    table["fid_test_vs_jitter"] = metrics.fid(m_test, ev.embed_motion(jitter, lengths))
    table["fid_test_vs_shuffled"] = metrics.fid(m_test, ev.embed_motion(shuffled, lengths))
    table["fid_test_vs_noise"] = metrics.fid(m_test, ev.embed_motion(noise, lengths))
    if len(m_test) > 300:
        table["diversity"] = metrics.diversity(m_test, 300, rng)
    table["num_test"], table["num_train"] = len(m_test), len(m_train)
    return table


def fit(data_root: str | Path, out_dir: str | Path, cfg: FitConfig = FitConfig(), progress: bool = True,
        log=print) -> Path:
    """Train an evaluator on data_root's train split (val for model selection), save out_dir/evaluator.pt."""
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _fit(data_root, out_dir, cfg, progress, log)
    finally:
        torch.set_num_threads(threads)


def _fit(data_root, out_dir, cfg: FitConfig, progress: bool, log) -> Path:
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sizes = EvaluatorSizes.from_dict(cfg.sizes)
    train = Clips(data_root, "train", None, cfg, progress)
    vocab = train.vocab
    val = Clips(data_root, "val", vocab, cfg, progress) if (Path(data_root) / "val.txt").is_file() else None
    if val is not None and len(val) < cfg.batch_size:
        val = None  # too small to form one batch: select on the training loss instead

    mean, std = group_mean_std(train.motions)
    encoders = build_encoders(sizes)
    word_emb = torch.nn.Embedding(len(vocab), sizes.dim_word)
    ev = Evaluator(sizes, encoders, vocab, word_emb.weight.detach(), mean, std)
    log(f"[fit] {data_root}: {len(train)} train clips, {len(val) if val else 0} val clips, vocabulary {len(vocab)} words")

    if cfg.ae_epochs > 0:
        _pretrain_movement(ev, train, cfg, rng, progress)
        log(f"[fit] movement autoencoder: {cfg.ae_epochs} epochs ({time.time() - t0:.0f} s)")
    ev.movement_encoder.eval().requires_grad_(False)
    # The movement encoder is frozen from here on: its features for a few augmented crops per clip are
    # computed once, and the matching epochs only run the two GRU encoders.
    train_banks = _banks(ev, train, cfg.crops_per_clip, rng)
    val_banks = _banks(ev, val, 1, np.random.default_rng(cfg.seed + 1)) if val is not None else None
    train_jitter = val_jitter = None
    if cfg.jitter_weight > 0:
        train_jitter = _jitter_banks(ev, train, 1, cfg, rng)
        if val is not None:
            val_jitter = _jitter_banks(ev, val, 1, cfg, np.random.default_rng(cfg.seed + 2))
        log(f"[fit] jittered negatives: {len(train)} train crops ({time.time() - t0:.0f} s)")

    params = list(ev.motion_encoder.parameters()) + list(ev.text_encoder.parameters()) + list(word_emb.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    best, best_loss, best_epoch = None, math.inf, 0
    bar = tqdm(range(cfg.epochs), desc="evaluator matching", disable=not progress)
    for epoch in bar:
        ev.motion_encoder.train(), ev.text_encoder.train()
        lp, ln, lj = _run_epoch(ev, train, train_banks, word_emb, opt, cfg, rng, train=True, jitter_banks=train_jitter)
        sched.step()
        ev.motion_encoder.eval(), ev.text_encoder.eval()
        score = lp + ln + lj
        if val is not None:  # selection by validation loss, as the reference keeps its 'finest' model
            score = sum(_run_epoch(ev, val, val_banks, word_emb, None, cfg, np.random.default_rng(epoch), train=False,
                                   jitter_banks=val_jitter))
        if score <= best_loss:
            best_loss, best_epoch = score, epoch + 1
            best = copy.deepcopy([ev.motion_encoder.state_dict(), ev.text_encoder.state_dict(), word_emb.state_dict()])
        bar.set_postfix(pos=f"{lp:.3f}", neg=f"{ln:.3f}", jit=f"{lj:.3f}", val=f"{score:.3f}")
    log(f"[fit] matching: {cfg.epochs} epochs, best (val loss) epoch {best_epoch} ({time.time() - t0:.0f} s)")
    if best is not None:
        ev.motion_encoder.load_state_dict(best[0])
        ev.text_encoder.load_state_dict(best[1])
        word_emb.load_state_dict(best[2])
    ev.word_vectors = word_emb.weight.detach().clone().to(ev.device)
    wall = time.time() - t0

    table, sanity_rows = {}, {}
    if (Path(data_root) / "test.txt").is_file():
        test = Clips(data_root, "test", vocab, cfg, progress)
        if len(test) >= 32:
            table = quality_table(ev, train, test, seed=cfg.seed)
            sanity_rows = sanity.sanity_table(ev, train.motions, test.motions, [c[0].tokens for c in test.captions],
                                              seed=cfg.seed)
            log("[fit] sanity table (cmdm.evaluation.sanity):\n" + sanity.format_sanity(sanity_rows))
    table["fit_seconds"] = wall
    state = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "sizes": sizes.to_dict(), "fit_config": {k: v for k, v in asdict(cfg).items() if k != "sizes"},
        "movement_encoder": ev.movement_encoder.state_dict(),
        "motion_encoder": ev.motion_encoder.state_dict(),
        "text_encoder": ev.text_encoder.state_dict(),
        "vocab": vocab.words(), "word_vectors": ev.word_vectors.cpu(),
        "mean": torch.from_numpy(mean), "std": torch.from_numpy(std),
        "fingerprint": data_fingerprint(data_root), "data_root": str(Path(data_root).resolve()),
        "epoch": best_epoch, "metrics": table, "sanity": sanity_rows, "fit_version": FIT_VERSION,
    }
    path = Path(out_dir) / EVALUATOR_FILE
    atomic_torch_save(state, path)
    log(f"[fit] saved {path} (fit {wall:.0f} s, with the quality table {time.time() - t0:.0f} s)")
    return path


# ----------------------------------------------------------------------------
# Cache, and the evaluator a config asks for
# ----------------------------------------------------------------------------

@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive file lock, so parallel trials build one evaluator instead of one each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # no fcntl (Windows): the atomic save still keeps the file whole
            pass
        yield


def ensure_evaluator(data_root: str | Path, out_dir: str | Path, progress: bool = True,
                     cfg: FitConfig | None = None, log=print) -> Path:
    """out_dir/evaluator.pt fitted on data_root: reused if its fingerprint matches the data, fitted otherwise."""
    out_dir = Path(out_dir)
    path = out_dir / EVALUATOR_FILE
    with _lock(out_dir / ".fit.lock"):
        fingerprint = data_fingerprint(data_root)
        if path.is_file():
            try:
                cached = read_evaluator_file(path)
                if cached.get("fingerprint") == fingerprint and cached.get("fit_version", 1) == FIT_VERSION:
                    return path
                if cached.get("fingerprint") == fingerprint:
                    log(f"[fit] {path} was fitted by fit version {cached.get('fit_version', 1)}, not {FIT_VERSION}; refitting")
                else:
                    log(f"[fit] {path} was fitted on other data; fitting a new evaluator for {data_root}")
            except Exception as err:  # unreadable cache: rebuild it
                log(f"[fit] {path} is unreadable ({err}); fitting a new evaluator")
        return fit(data_root, out_dir, cfg or FitConfig(), progress=progress, log=log)


def prepare_evaluator(cfg, progress: bool = True, log=print) -> Path | None:
    """The driver's step before any worker starts: for a synthetic or custom set, the evaluator fitted on
    data.root, cached in evaluation.evaluator_dir (fitted there on first use, refitted if the data changed);
    None for HumanML3D, whose official evaluator is never fitted here. Workers only load it
    (`cmdm.evaluation.evaluator.load_evaluator`).

    The evaluator belongs to the data, not to the run: it is fitted on the clips the metric protocol keeps
    (FitConfig's 40 <= T < 200, as HumanML3D's evaluator), whatever data.min/max_motion_len a run trains on, so
    runs on one data root are scored by one evaluator whichever of them fitted it (the cache is keyed by the
    data alone)."""
    ev, data = cfg.evaluation, cfg.data
    if data.name == "humanml3d":
        return None
    return ensure_evaluator(data.root, ev.evaluator_dir, progress=progress, cfg=FitConfig(), log=log)


def format_table(table: dict) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for k, v in table.items():
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(lines)


def main(argv=None):
    from cmdm.cli import number, positive
    from cmdm.data.humanml3d import DataError
    p = argparse.ArgumentParser(prog="python -m cmdm.evaluation.fit",
                                description="Fit a text-motion evaluator (Guo et al. 2022 style) on a HumanML3D-layout dataset.")
    p.add_argument("--data", required=True, help="dataset folder in the HumanML3D layout (train/val/test.txt)")
    p.add_argument("--out", required=True, help="folder for evaluator.pt")
    d = FitConfig()
    p.add_argument("--epochs", type=number(int, 1), default=d.epochs, help="matching epochs")
    p.add_argument("--ae-epochs", type=number(int, 0), default=d.ae_epochs, help="movement autoencoder epochs (0 = skip)")
    p.add_argument("--batch-size", type=number(int, 2), default=d.batch_size,
                   help="clips per batch (>= 2: the other clips of a batch are the negatives)")
    p.add_argument("--lr", type=positive(float), default=d.lr)
    p.add_argument("--negatives", choices=("shift", "all"), default=d.negatives,
                   help="shift: one shifted batch (the reference); all: every other clip of the batch")
    p.add_argument("--jitter-weight", type=number(float, 0.0), default=d.jitter_weight,
                   help="weight of the jittered negatives (0 = the reference's loss only)")
    p.add_argument("--threads", type=number(int, 0), default=d.threads,
                   help="torch CPU threads (0 = torch's default; 1 is faster on a CPU shared with other jobs)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    data, out = Path(a.data), Path(a.out)
    problem = None
    if not data.is_dir():
        problem = (f"--data {data} is not a folder; give a dataset folder in the HumanML3D layout (train.txt, "
                   "val.txt, test.txt, new_joint_vecs/, texts/, Mean.npy, Std.npy), e.g. data/synthetic.")
    elif out.exists() and not out.is_dir():
        problem = f"--out {out} is a file; give a folder for evaluator.pt."
    elif not out.parent.is_dir():
        problem = (f"--out {out}: its folder {out.parent} does not exist (only the last folder is created); "
                   "create it first, or give a folder inside an existing one.")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cfg = FitConfig(epochs=a.epochs, ae_epochs=a.ae_epochs, batch_size=a.batch_size, lr=a.lr,
                    negatives=a.negatives, jitter_weight=a.jitter_weight, threads=a.threads, seed=a.seed)
    try:
        path = fit(a.data, a.out, cfg, progress=not a.quiet)
    except DataError as err:
        print(f"error: --data {data}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except ValueError as err:   # e.g. fewer clips than one batch
        print(f"error: --data {data}: {' '.join(str(err).split())} (is the dataset smaller than one batch? give "
              f"more clips or a smaller --batch-size than {a.batch_size})", file=sys.stderr)
        return 2
    table = read_evaluator_file(path)["metrics"]
    print(format_table(table))
    print(json.dumps(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
